"""The package's layers point one way: data -> networks -> model/guide -> inference -> command line, with plots,
analysis and the report reading from inference, never the reverse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyro_mfm.config import SELECT_METRICS
from pyro_mfm.metric_directions import HIGHER_IS_BETTER, lower_is_better

ROOT = Path(__file__).resolve().parents[1]


def _loads_matplotlib(statement: str) -> bool:
    code = f"import sys; {statement}; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return out.stdout.strip() == "True"


@pytest.mark.parametrize(
    "statement",
    [
        "import pyro_mfm",
        "import pyro_mfm.infer",
        "import pyro_mfm.infer.metrics, pyro_mfm.infer.evaluate, pyro_mfm.infer.job, pyro_mfm.infer.seeds",
        "import pyro_mfm.data, pyro_mfm.config, pyro_mfm.cli",
    ],
)
def test_inference_loads_no_plotting(statement):
    assert not _loads_matplotlib(statement)


def test_the_report_loads_plotting():
    assert _loads_matplotlib("import pyro_mfm.report")


def test_one_table_of_metric_directions():
    assert SELECT_METRICS == ("auto", *HIGHER_IS_BETTER)
    for name, higher in HIGHER_IS_BETTER.items():  # the plots' reading of a name agrees with model selection's
        assert lower_is_better(name) is not higher and lower_is_better(f"valid_{name}") is not higher
    assert lower_is_better("elbo_loss") and lower_is_better("test_rmse") and not lower_is_better("coverage")
