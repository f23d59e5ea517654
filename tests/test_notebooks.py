"""The notebooks run top to bottom on small settings (so they never rot), and are committed without outputs."""

from __future__ import annotations

import time
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Values replacing each notebook's parameter cell (the cell tagged "parameters"): small, so that the four run in
# about a minute and a half on two CPU cores. Without calibration: it took 13 of the 18 s of each of the six fits
# of two epochs (its own tests are tests/test_calibrate.py).
SMALL = {
    "01_quickstart": {"EPOCHS": 2, "CALIBRATE": "none", "NUM_SAMPLES": 20},
    "02_posterior_analysis": {"EPOCHS": 2, "CALIBRATE": "none", "CHAINS": 2, "DRAWS": 30, "N_ARVIZ": 50},
    "03_factors": {"EPOCHS": 2, "CALIBRATE": "none", "N_CODES": 16, "SEQ_EPOCHS": 6},
    "04_missing_modalities": {
        "EPOCHS": 2,
        "CALIBRATE": "none",
        "RATES": (0.0, 0.5),
        "NUM_SAMPLES": 5,
        "IMPUTE_SAMPLES": 2,
    },
}
KERNEL = "pyro-mfm-test"


def test_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == sorted(SMALL)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: outputs not stripped"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1


def _with_parameters(nb, values: dict):
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
    unknown = set(values) - names
    assert not unknown, f"parameters {unknown} are not in the notebook's parameter cell {sorted(names)}"
    cell.source += "\n# small settings for the test suite\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())
    return nb


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, monkeypatch_module):
    """A kernel spec that runs this interpreter (the virtual environment's python), found first."""
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("kernel")
    install(kernel_name=KERNEL, prefix=str(prefix), display_name="pyro-mfm test")
    monkeypatch_module.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    monkeypatch_module.setenv("MPLBACKEND", "Agg")
    return KERNEL


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, kernel):
    from nbclient import NotebookClient

    nb = _with_parameters(nbformat.read(path, as_version=4), SMALL[path.stem])
    client = NotebookClient(nb, kernel_name=kernel, timeout=300, resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.time()
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    print(f"{path.name}: {time.time() - start:.0f} s")


def test_render_notebooks_to_html(tmp_path, kernel):
    """``make notebooks`` (inference/render_notebooks.py): executed, figures and all, to HTML."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "render_notebooks", NOTEBOOK_DIR.parent / "inference" / "render_notebooks.py"
    )
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("# A title"), nbformat.v4.new_code_cell("print(6 * 7)")]
    )
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    assert render.main([str(tmp_path / "tiny.ipynb"), "--out", str(tmp_path / "html"), "--kernel", kernel]) == 0
    html = (tmp_path / "html" / "tiny.html").read_text()
    assert "A title" in html and "42" in html
    assert nbformat.read(tmp_path / "tiny.ipynb", as_version=4).cells[1].outputs == []  # the source stays clean
