"""The report's linear model per subset of observed modalities, the MFM against it, and the nested pairs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pyro_mfm.analysis.baselines import (
    LOGISTIC_C,
    RIDGE_ALPHA,
    _vectors,
    against_linear,
    nested_gains,
    subset_baselines,
)
from pyro_mfm.config import Config
from pyro_mfm.data import from_arrays


def _classes(n=600, seed=0, valid=True):
    """Three classes; modality a reads them (its first three features are the one-hot class plus noise), b is
    noise; a tenth of each modality missing and a tenth of the labels unknown."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    a = rng.normal(size=(n, 5))
    a[:, :3] += 2.0 * np.eye(3)[y]
    b = rng.normal(size=(n, 4))
    present = {m: rng.random(n) > 0.1 for m in "ab"}
    split = np.array(["train"] * 300 + (["valid"] if valid else ["train"]) * 100 + ["test"] * 200)
    return from_arrays(
        {"a": a, "b": b}, y, label_kind="categorical", present=present, split=split, label_present=rng.random(n) > 0.1
    )


CONFIG = Config.from_dict({"data": {"source": "x"}})


def test_a_linear_model_per_subset_on_the_samples_that_have_it():
    data = _classes()
    base = subset_baselines(data, CONFIG, [("a",), ("b",), ("a", "b")])
    test = data["test"]
    for obs, b in base.items():
        have = np.asarray(test.label_present) & np.logical_and.reduce([test.present[m] for m in obs])
        np.testing.assert_array_equal(b["rows"], np.flatnonzero(have))
        assert b["accuracy"] == np.mean(b["pred"] == np.asarray(test.labels)[have])
        assert b["chosen_on"] == "validation" and b["penalty"] in LOGISTIC_C
    # a reads the class (a Bayes accuracy of about 0.9); b is noise: chance is 1/3, and 0.5 is 4 standard errors
    # above it on about 160 test samples
    assert base[("a",)]["accuracy"] > 0.8 and base[("b",)]["accuracy"] < 0.5
    # without a validation split, scikit-learn's cross-validated fits choose the penalty
    base = subset_baselines(_classes(valid=False), CONFIG, [("a",)])
    assert base[("a",)]["chosen_on"] == "cross-validation" and base[("a",)]["penalty"] in LOGISTIC_C


def test_a_regression_label_takes_a_ridge_and_its_mae():
    rng = np.random.default_rng(1)
    n = 400
    x = rng.normal(size=(n, 3))
    y = np.stack([x[:, 0] + 0.1 * rng.normal(size=n), -x[:, 1] + 0.1 * rng.normal(size=n)], 1)
    split = np.array(["train"] * 250 + ["valid"] * 50 + ["test"] * 100)
    data = from_arrays({"x": x, "z": rng.normal(size=(n, 2))}, y, split=split)
    base = subset_baselines(data, CONFIG, [("x",), ("z",)])
    y_te = y[300:]
    for b in base.values():
        assert b["mae"] == pytest.approx(np.abs(b["pred"] - y_te).mean()) and b["penalty"] in RIDGE_ALPHA
    assert base[("x",)]["mae"] < 0.15 < 0.6 < base[("z",)]["mae"]  # x gives the label to its noise (0.08)


def test_a_sequence_is_read_as_the_mean_over_its_real_steps():
    x = np.arange(2 * 3 * 2, dtype=float).reshape(2, 3, 2)
    steps = np.array([[True, True, True], [False, True, True]])
    data = from_arrays({"s": x}, np.zeros(2), steps={"s": steps})
    ds = data[next(iter(data))]
    np.testing.assert_allclose(_vectors(ds, "s"), [x[0].mean(0), x[1, 1:].mean(0)])


def _prediction(point, kind="categorical"):
    return SimpleNamespace(point=np.asarray(point, float), kind=kind)


def test_the_mfm_against_the_linear_model_is_paired_on_the_same_samples():
    data = _classes()
    base = subset_baselines(data, CONFIG, [("a",), ("b",)])
    test = data["test"]
    y = np.asarray(test.labels)
    perfect = _prediction(np.eye(3)[y])
    rows = {tuple(r["observed"]): r for r in against_linear(base, {("a",): perfect, ("b",): perfect}, test)}
    for obs, r in rows.items():
        linear_right = (base[obs]["pred"] == y[base[obs]["rows"]]).astype(float)
        d = 1.0 - linear_right
        assert r["accuracy"] == {"mfm": 1.0, "linear": base[obs]["accuracy"]} and r["n"] == len(d)
        assert r["gain"] == pytest.approx(d.mean()) and r["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))


def test_nested_pairs_find_the_subset_that_adding_a_modality_made_worse():
    data = _classes()
    test = data["test"]
    y = np.asarray(test.labels)
    keep = np.asarray(test.label_present)
    wrong = np.eye(3)[y].copy()
    flip = np.flatnonzero(keep)[:20]  # 20 labelled samples wrong with a and b where a alone is right
    wrong[flip] = np.eye(3)[(y[flip] + 1) % 3]
    predictions = {
        ("a",): _prediction(np.eye(3)[y]),
        ("b",): _prediction(np.full((len(y), 3), 1 / 3) + np.eye(3)[(y + 1) % 3] * 0.1),  # always wrong
        ("a", "b"): _prediction(wrong),
    }
    pairs = {(tuple(p["smaller"]), tuple(p["larger"])): p for p in nested_gains(predictions, test)}
    assert set(pairs) == {(("a",), ("a", "b")), (("b",), ("a", "b"))}
    worse = pairs[("a",), ("a", "b")]
    n = keep.sum()
    d = np.zeros(n)
    d[:20] = -1
    assert worse["gain"] == pytest.approx(-20 / n) and worse["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(n))
    assert worse["worse"] and not pairs[("b",), ("a", "b")]["worse"]
    # a regression label: the score is minus the absolute error; a multilabel target's, the share of right labels
    reg = {
        ("a",): _prediction(np.zeros((len(y), 1)), "normal"),
        ("a", "b"): _prediction(np.ones((len(y), 1)), "normal"),
    }
    labels = SimpleNamespace(labels=np.zeros(len(y)), label_present=keep)
    assert nested_gains(reg, labels)[0]["gain"] == -1.0
    multi = SimpleNamespace(labels=np.zeros((len(y), 2)), label_present=keep)
    half = np.tile([0.8, 0.2], (len(y), 1))  # the first label wrong (above 0.5), the second right
    ml = {("a",): _prediction(np.full((len(y), 2), 0.2), "bernoulli"), ("a", "b"): _prediction(half, "bernoulli")}
    (pair,) = nested_gains(ml, multi)
    assert pair["gain"] == pytest.approx(-0.5) and pair["worse"]
