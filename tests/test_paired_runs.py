"""``inference/paired_runs.py``: two comparison records paired seed by seed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("paired_runs", ROOT / "inference" / "paired_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write(path, record):
    path.write_text(json.dumps(record))
    return str(path)


def test_differences_are_paired_over_the_common_seeds_with_their_direction(tmp_path, capsys):
    script = _script()
    before = {
        "seeds": [0, 1, 2],
        "pom-vectors": {
            "per_seed": {
                "audio": {
                    "mae": [0.90, 0.92, 0.94],
                    "corr": [0.30, 0.31, 0.29],
                    "coverage": [0.80, 0.82, 0.84],
                    "ece": [0.05, 0.04, 0.03],
                }
            }
        },
    }
    after = {
        "seeds": [1, 2, 3],  # seed 0 and 3 are in one run only
        "pom-vectors": {
            "per_seed": {
                "audio": {
                    "mae": [0.93, 0.95, 0.10],
                    "corr": [0.20, 0.21, 0.0],
                    "coverage": [0.85, 0.86, 0.0],
                    "ece": [0.02, 0.05, 0.0],
                }
            }
        },
    }
    a, b = _write(tmp_path / "a.json", before), _write(tmp_path / "b.json", after)
    assert script.main([a, b, "--all"]) == 0
    rows = {r["metric"]: r for r in script.paired(*[script.records(p)[0] for p in (a, b)], [0, 1, 2], [1, 2, 3], None)}
    d = np.array([0.93 - 0.92, 0.95 - 0.94])
    assert rows["mae"]["difference"] == pytest.approx(d.mean())
    assert rows["mae"]["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(2))
    assert rows["mae"]["verdict"] == "worse"  # 0.01 higher MAE on both seeds, no spread
    assert rows["corr"]["difference"] == pytest.approx(-0.095) and rows["corr"]["verdict"] == "worse"  # se 0.015
    assert rows["ece"]["difference"] == pytest.approx(0.0) and rows["ece"]["verdict"] == ""  # -0.02 and +0.02
    # coverage nearer 0.9 is better: 0.83 -> 0.855
    assert script.better("coverage", 0.025, 0.83) == pytest.approx(0.025)
    assert script.better("coverage", 0.05, 0.89) == pytest.approx(-0.03)
    out = capsys.readouterr().out
    assert "paired over seeds [1, 2]" in out and "| pom-vectors | audio | mae | 0.9300 | 0.9400 | +0.0100" in out


def test_a_testbed_record_and_bad_files(tmp_path, capsys):
    script = _script()
    testbed = {"seeds": [0, 1], "per_seed": {"audio": {"mae": [1.0, 1.1]}}}
    a = _write(tmp_path / "a.json", testbed)
    b = _write(tmp_path / "b.json", {**testbed, "per_seed": {"audio": {"mae": [0.9, 1.0]}}})
    assert script.main([a, b]) == 0
    assert "| testbed | audio | mae | 1.0500 | 0.9500 | -0.1000 (0.0000) | better |" in capsys.readouterr().out
    assert script.main([a, str(tmp_path / "missing.json")]) == 2
    assert "missing.json: FileNotFoundError" in capsys.readouterr().err
    c = _write(tmp_path / "c.json", {**testbed, "seeds": [5, 6]})
    assert script.main([a, c]) == 2 and "no seed in common" in capsys.readouterr().err
    d = _write(tmp_path / "d.json", [1, 2])
    assert script.main([a, d]) == 2 and "a JSON list" in capsys.readouterr().err
