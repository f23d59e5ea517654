"""Each output of a label of several (POM's traits, IEMOCAP's emotions): ``metrics.output_metrics`` and the report's
section on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_reliability import TINY  # the same tiny networks

from pyro_mfm.config import Config
from pyro_mfm.data import LabelSpec, from_arrays, save
from pyro_mfm.infer.job import run
from pyro_mfm.infer.metrics import expected_calibration_error, output_metrics
from pyro_mfm.infer.predict import Prediction


def _prediction(point, kind, lower=None, upper=None):
    n = len(point)
    return Prediction(point, lower, upper, None, np.zeros(n), None, ("a",), interval=0.9, kind=kind)


def test_each_label_and_each_value_by_hand():
    y = np.array([[1, 0], [1, 1], [0, 1], [0, 0], [1, 1]])
    probs = np.array([[0.9, 0.2], [0.6, 0.4], [0.7, 0.8], [0.2, 0.3], [0.4, 0.9]])
    keep = np.array([True, True, True, True, False])  # the last sample has no label
    rows = output_metrics(_prediction(probs, "bernoulli"), y, keep, LabelSpec("multilabel", 2, ("happy", "sad")))
    assert [r["output"] for r in rows] == ["happy", "sad"] and all(r["n"] == 4 for r in rows)
    # happy: predicted 1, 1, 1, 0 against 1, 1, 0, 0: 3 right, precision 2/3, recall 1
    assert rows[0]["accuracy"] == pytest.approx(0.75) and rows[0]["f1"] == pytest.approx(0.8)
    assert rows[0]["positive"] == pytest.approx(0.5)
    assert rows[1]["ece"] == pytest.approx(expected_calibration_error(probs[:4, 1], y[:4, 1]))
    values = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0]])
    point = values + np.array([[0.5, 0.0], [-0.5, 1.0], [0.5, -1.0]])
    low, high = point - 0.6, point + 0.6
    spec = LabelSpec("regression", 2)
    rows = output_metrics(_prediction(point, "normal", low, high), values, np.ones(3, bool), spec)
    assert [r["output"] for r in rows] == ["0", "1"]
    assert rows[0]["mae"] == pytest.approx(0.5) and rows[1]["mae"] == pytest.approx(2 / 3)
    assert rows[0]["coverage"] == pytest.approx(1.0) and rows[1]["coverage"] == pytest.approx(1 / 3)
    assert rows[0]["corr"] == pytest.approx(np.corrcoef(point[:, 0], values[:, 0])[0, 1])
    # a class label, or a label of one output, has no outputs of its own to report
    assert (
        output_metrics(
            _prediction(point[:, :1], "normal", low[:, :1], high[:, :1]),
            values[:, :1],
            np.ones(3, bool),
            LabelSpec("regression", 1),
        )
        == []
    )


@pytest.mark.parametrize("kind", ["multilabel", "regression"])
def test_the_report_gives_each_output_from_every_modality(tmp_path, kind):
    """The section's rows average to the all-observed subset's own figure (accuracy over every entry, or the MAE
    over every value), with the outputs' names."""
    rng = np.random.default_rng(0)
    n = 120
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    y = np.stack([a[:, 0] + rng.normal(size=n), b[:, 0] + rng.normal(size=n), a[:, 1] + b[:, 1]], 1)
    labels = (y > 0).astype(np.int64) if kind == "multilabel" else y
    split = np.array(["train"] * 80 + ["valid"] * 20 + ["test"] * 20)
    names = ["first", "second", "third"]
    data = from_arrays({"a": a, "b": b}, labels, split=split, label_names=names)
    save(data, tmp_path / "d.h5")
    cfg = Config.from_dict({"data": {"source": str(tmp_path / "d.h5")}}).override(TINY + ["train.epochs=2"])
    metrics = run(cfg, tmp_path / "out")
    entry = metrics["label_outputs"]
    assert entry["observed"] == ["a", "b"] and [r["output"] for r in entry["outputs"]] == names
    everything = next(r for r in metrics["subsets"] if r["observed"] == ["a", "b"])["label"]
    key = "accuracy" if kind == "multilabel" else "mae"
    assert np.mean([r[key] for r in entry["outputs"]]) == pytest.approx(everything[key])
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## Each output of the label (test split, a + b observed)" in report
    assert all(f"| {name} | " in report for name in names)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["label_outputs"] == entry


def test_a_multilabel_target_has_a_logistic_regression_per_label_for_each_subset():
    """One logistic regression per label with one C, chosen on the validation split's share of right labels: its
    test accuracy is that of the same fits by hand; a subset whose training samples lack a value of some label has
    none."""
    from sklearn.linear_model import LogisticRegression

    from pyro_mfm.analysis.baselines import LOGISTIC_C, against_linear, subset_baselines

    rng = np.random.default_rng(1)
    n = 150
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    y = np.stack([a[:, 0] + rng.normal(size=n) > 0, b[:, 0] + rng.normal(size=n) > 0], 1).astype(np.int64)
    split = np.array(["train"] * 90 + ["valid"] * 30 + ["test"] * 30)
    data = from_arrays({"a": a, "b": b}, y, split=split)
    cfg = Config.from_dict({"data": {"source": "mem"}})
    base = subset_baselines(data, cfg, [("a",), ("a", "b")])
    mu, sd = a[:90].mean(0), a[:90].std(0) + 1e-8
    z = lambda rows: (a[rows] - mu) / sd  # noqa: E731
    tr, va, te = np.arange(90), np.arange(90, 120), np.arange(120, 150)

    def fits(c):
        return [LogisticRegression(C=c, max_iter=3000).fit(z(tr), y[tr, k]) for k in range(2)]

    share = {c: np.mean([f.predict(z(va)) == y[va, k] for k, f in enumerate(fits(c))]) for c in LOGISTIC_C}
    c = max(share, key=share.get)
    right = np.stack([f.predict(z(te)) == y[te, k] for k, f in enumerate(fits(c))], 1)
    assert base[("a",)]["penalty"] == c and base[("a",)]["chosen_on"] == "validation"
    assert base[("a",)]["accuracy"] == pytest.approx(right.mean())
    # against the MFM: per test sample the share of its labels right, paired
    perfect = {("a",): _prediction(y[te].astype(float), "bernoulli")}
    row = against_linear({("a",): base[("a",)]}, perfect, data["test"])[0]
    assert row["accuracy"]["mfm"] == 1.0 and row["gain"] == pytest.approx(1.0 - right.mean())
    one_valued = from_arrays({"a": a, "b": b}, np.stack([y[:, 0], np.ones(n, np.int64)], 1), split=split)
    assert subset_baselines(one_valued, cfg, [("a",)]) == {}


def test_over_seeds_each_output_is_the_seeds_mean_and_spread(tmp_path):
    from pyro_mfm.infer.seeds import run_seeds

    rng = np.random.default_rng(2)
    n = 100
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    y = np.stack([a[:, 0] + rng.normal(size=n), b[:, 0] + rng.normal(size=n)], 1)
    split = np.array(["train"] * 60 + ["valid"] * 20 + ["test"] * 20)
    save(from_arrays({"a": a, "b": b}, y, split=split, label_names=["x", "z"]), tmp_path / "d.h5")
    cfg = Config.from_dict({"data": {"source": str(tmp_path / "d.h5")}}).override(TINY + ["train.epochs=1"])
    summary = run_seeds(cfg, tmp_path / "seeds", [0, 1])
    per_seed = [json.loads((tmp_path / "seeds" / f"seed-{s}" / "metrics.json").read_text()) for s in (0, 1)]
    rows = summary["label_outputs"]["outputs"]
    assert [r["output"] for r in rows] == ["x", "z"]
    for k, row in enumerate(rows):
        values = [p["label_outputs"]["outputs"][k]["mae"] for p in per_seed]
        assert row["mae"]["values"] == pytest.approx(values) and row["mae"]["mean"] == pytest.approx(np.mean(values))
    report = (tmp_path / "seeds" / "report.md").read_text()
    assert "## Each output of the label (test split, a + b observed)" in report and "| x | " in report
