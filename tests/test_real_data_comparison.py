"""``inference/real_data_comparison.py`` end to end on the embedded UCI data, with tiny networks and one epoch: the
tables it prints and the JSON it writes, each seed's numbers included."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    path = ROOT / "inference" / "real_data_comparison.py"
    spec = importlib.util.spec_from_file_location("real_data_comparison", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uci_comparison_prints_every_subset_and_records_each_seed(tmp_path, capsys):
    out = tmp_path / "comparison.json"
    small = ["train.epochs=1", "train.kl_warmup=0", "model.hidden=8", "train.calibrate='none'", "model.label_samples=0"]
    argv = ["--data", "uci", "--seeds", "0,1", "--num-samples", "2", "--out", str(out)]
    _script().main(argv + [a for s in small for a in ("--set", s)])
    printed = capsys.readouterr().out
    assert printed.count("\n| ") >= 63 + 1  # a row per subset under the header
    record = json.loads(out.read_text())["uci"]
    assert len(record["subsets"]) == 63 and len(record["nested"]) == 602
    for name, values in record["per_seed"].items():
        accuracy = values["accuracy"]
        assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)
        # the summary's mean and standard deviation are those of the seeds' values
        assert record["mfm"][name]["accuracy"] == pytest.approx([np.mean(accuracy), np.std(accuracy)])
        # a paired standard error over 400 test samples of differences in [-1, 1] is at most 1 / sqrt(399)
        assert 0 <= record["paired_se"][name] <= 1 / np.sqrt(399)
        floor, p = record["calibrated_ece"][name]
        assert 0 < floor < 1 and 0 <= p <= 1
