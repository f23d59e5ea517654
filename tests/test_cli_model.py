"""The model commands: train, evaluate, impute and run, on a small native file, as a user calls them."""

import json
import subprocess
import sys

import numpy as np
import pytest

from pyro_mfm.cli import main
from pyro_mfm.data import LinearGaussianMFM, load, save

CONFIG = """
[data]
source = "{data}"

[model]
z_y_dim = 2
z_a_dim = 2
f_y_dim = 8
f_a_dim = 4
hidden = 16

[train]
epochs = 2
kl_warmup = 1
batch_size = 32
valid_samples = 3
progress = false
ensemble = 1

[evaluate]
num_samples = 5
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    gen = LinearGaussianMFM.random({"a": 3, "b": 4, "c": (4, 2)}, z_y_dim=2, label="categorical", num_classes=3, seed=0)
    save(gen.sample({"train": 120, "valid": 40, "test": 40}, missing=0.2, seed=0), root / "data.h5")
    (root / "tiny.toml").write_text(CONFIG.format(data="data.h5"))  # relative to the configuration's folder
    return root


def test_train_evaluate_impute(project, capsys):
    run_dir = project / "run"
    assert main(["train", str(project / "tiny.toml"), "--out", str(run_dir), "--set", "train.seed=3"]) == 0
    assert (run_dir / "best.pt").exists() and (run_dir / "log.jsonl").exists()
    assert json.loads((run_dir / "config.json").read_text())["train"]["seed"] == 3

    report = project / "eval.json"
    assert main(["evaluate", str(run_dir), "--out", str(report), "--quiet"]) == 0
    subsets = json.loads(report.read_text())["subsets"]
    assert len(subsets) == 2**3 - 1
    assert {tuple(s["observed"]) for s in subsets} >= {("a",), ("a", "b", "c")}
    assert all("accuracy" in s["label"] for s in subsets)
    assert "| a+b+c |" in report.with_suffix(".md").read_text()

    out = project / "imputed.h5"
    assert main(["impute", str(run_dir), "--observed", "a,c", "--out", str(out)]) == 0
    imputed = load(out)["test"]
    original = load(project / "data.h5")["test"]
    assert imputed.present["b"].all()
    keep = original.present["a"]
    np.testing.assert_array_equal(np.asarray(imputed.features["a"])[keep], np.asarray(original.features["a"])[keep])
    # never overwrite silently
    assert main(["impute", str(run_dir), "--observed", "a", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["impute", str(run_dir), "--observed", "a", "--out", str(out), "--overwrite"]) == 0


def test_run_writes_the_report_folder(project):
    out = project / "report"
    # model selection on the loss: the robustness plot still shows the label's accuracy
    assert (
        main(["run", str(project / "tiny.toml"), "--out", str(out), "--quiet", "--set", "train.select_metric='loss'"])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["subsets"]) == 7 and set(metrics["single_view_baselines"]) == {"a", "b", "c"}
    for name in ("accuracy_by_observed", "imputation_error", "z_y_projection", "training_curves"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    for m in "abc":
        assert load(out / f"imputed_{m}.h5")["test"].present[m].all()
    text = (out / "report.md").read_text()
    assert "Every subset of observed modalities" in text and "plots/accuracy_by_observed.png" in text
    # the MFM against a linear model fitted on each subset alone, on the same test samples, and the nested pairs
    linear, test = metrics["linear_baselines"], load(project / "data.h5")["test"]
    assert len(linear) == 7
    for r in linear:  # the test samples with every modality of the subset (20% of the modalities are missing)
        assert r["n"] == np.logical_and.reduce([test.present[m] for m in r["observed"]]).sum() < len(test)
    for r in linear:
        assert r["gain"] == pytest.approx(r["accuracy"]["mfm"] - r["accuracy"]["linear"], abs=1e-9)
        single = metrics["single_view_baselines"].get(r["observed"][0]) if len(r["observed"]) == 1 else None
        assert single is None or single["accuracy"] == r["accuracy"]["linear"]
    assert len(metrics["nested_pairs"]) == 12  # S inside S' among the 7 subsets of 3 modalities
    assert "The MFM against a linear model per subset" in text and "Adding modalities" in text
    for name in ("accuracy_against_linear", "nested_pairs"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000 and f"plots/{name}.png" in text


def test_bad_input_is_one_clear_line(project, tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.toml"), "--out", str(tmp_path / "r")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(data=project / "data.h5") + "\n[train2]\nx = 1\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "unknown table [train2]" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none"), "--out", str(tmp_path / "e.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "missing_data.toml"
    cfg.write_text(CONFIG.format(data=tmp_path / "absent.h5"))
    assert main(["train", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "absent.h5" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate", "impute", "run", "data"])
def test_every_subcommand_has_help(command):
    out = subprocess.run([sys.executable, "-m", "pyro_mfm", command, "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "usage: pyro-mfm" in out.stdout
