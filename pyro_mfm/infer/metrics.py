"""Metrics of the field (see MFM_SPEC.md): sentiment regression, classification, imputation, probabilistic quality."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from ..metric_directions import HIGHER_IS_BETTER  # noqa: F401  (model selection reads it here)


def pearson(a, b) -> float:
    """The Pearson correlation of ``a`` and ``b`` (flattened); NaN if either is constant or has fewer than 2 values."""
    return float(columnwise_pearson(np.ravel(a)[:, None], np.ravel(b)[:, None])[0])


def columnwise_pearson(a, b) -> np.ndarray:
    """The Pearson correlation of each column of ``a`` with the same column of ``b`` (both ``(N, d)``): NaN for a
    column that is constant in either, or with fewer than 2 rows."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return np.full(a.shape[1], np.nan)
    da, db = a - a.mean(0), b - b.mean(0)
    sa, sb = np.sqrt((da**2).sum(0)), np.sqrt((db**2).sum(0))  # zero exactly where a column is constant
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (da * db).sum(0) / (sa * sb)
    return np.where((sa == 0) | (sb == 0), np.nan, np.clip(r, -1.0, 1.0))


def regression_metrics(y_true, y_pred) -> dict:
    """MAE, MSE and Pearson correlation (averaged over outputs for multi-output labels)."""
    y_true = np.asarray(y_true, float).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, float).reshape(len(y_pred), -1)
    corr = columnwise_pearson(y_true, y_pred)
    return {
        "mae": float(np.abs(y_true - y_pred).mean()),
        "mse": float(((y_true - y_pred) ** 2).mean()),
        "corr": float(np.nanmean(corr)) if not np.all(np.isnan(corr)) else float("nan"),
    }


def sentiment_metrics(y_true, y_pred) -> dict:
    """CMU-MOSI/MOSEI conventions for a score in [-3, 3].

    Acc-2 and weighted F1 in both conventions: ``has0`` (negative < 0 vs non-negative >= 0, all samples) and
    ``non0`` (samples whose true score is 0 are excluded; positive > 0 vs negative < 0). Acc-5 and Acc-7 round the
    scores after clipping to [-2, 2] and [-3, 3] (the public code's Acc-7 forgets to clip; we do not).
    """
    t = np.asarray(y_true, float).ravel()
    p = np.asarray(y_pred, float).ravel()
    out = regression_metrics(t, p)
    out["acc2_has0"] = float(accuracy_score(t >= 0, p >= 0))
    out["f1_has0"] = float(f1_score(t >= 0, p >= 0, average="weighted"))
    nz = t != 0
    out["acc2_non0"] = float(accuracy_score(t[nz] > 0, p[nz] > 0)) if nz.any() else float("nan")
    out["f1_non0"] = float(f1_score(t[nz] > 0, p[nz] > 0, average="weighted")) if nz.any() else float("nan")
    out["acc5"] = float(np.mean(np.round(np.clip(t, -2, 2)) == np.round(np.clip(p, -2, 2))))
    out["acc7"] = float(np.mean(np.round(np.clip(t, -3, 3)) == np.round(np.clip(p, -3, 3))))
    return out


def classification_metrics(y_true, probs) -> dict:
    """Accuracy, macro and weighted F1, and expected calibration error from class probabilities ``(N, K)``, with
    what the ECE of a calibrated model would be on these samples (:func:`calibrated_ece_draws`): ``ece_floor``, its
    mean, and ``calibration_p``, the fraction of calibrated label sets whose ECE reaches the observed one (small:
    the gap is more than N samples give by chance)."""
    y_true = np.asarray(y_true)
    pred = np.asarray(probs).argmax(-1)
    ece = expected_calibration_error(probs, y_true)
    floor = calibrated_ece_draws(probs)
    macro, weighted = class_f1(y_true, pred)
    return {
        "accuracy": float(accuracy_score(y_true, pred)),
        "macro_f1": macro,
        "weighted_f1": weighted,
        "ece": ece,
        "ece_floor": float(floor.mean()) if len(y_true) else math.nan,
        "calibration_p": float(np.mean(floor >= ece - 1e-12)) if len(y_true) else math.nan,
    }


def class_f1(y_true, pred) -> tuple[float, float]:
    """Macro and weighted F1 (as scikit-learn's ``f1_score`` with ``average="macro"`` and ``"weighted"``), from one
    call of its per-class scores (its input checks cost more than the scores; evaluation scores 63 subsets)."""
    if not len(y_true):
        return math.nan, math.nan
    _, _, f1, support = precision_recall_fscore_support(y_true, pred, average=None, warn_for=("f-score",))
    return float(f1.mean()), float((f1 * support).sum() / support.sum())


def multilabel_metrics(y_true, probs) -> dict:
    """Independent 0/1 labels ``(N, k)`` from their probabilities ``(N, k)``: accuracy over every entry, macro and
    weighted F1 over the k labels, and each label's own expected calibration error (a binary problem), averaged
    over the labels, with a calibrated model's (``ece_floor``, the mean over the labels of
    :func:`calibrated_ece_draws`' mean) and ``calibration_p``, the fraction of calibrated draws of all k labels
    whose mean ECE reaches the observed one."""
    y_true = np.asarray(y_true).astype(int)
    probs = np.asarray(probs, dtype=float)
    pred = (probs > 0.5).astype(int)
    if not len(y_true):
        return {k: math.nan for k in ("accuracy", "macro_f1", "weighted_f1", "ece", "ece_floor", "calibration_p")}
    ece = float(np.mean([expected_calibration_error(probs[:, k], y_true[:, k]) for k in range(probs.shape[1])]))
    floor = np.mean([calibrated_ece_draws(probs[:, k], seed=k) for k in range(probs.shape[1])], 0)
    return {
        "accuracy": float((y_true == pred).mean()),
        "macro_f1": float(f1_score(y_true, pred, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, pred, average="weighted", zero_division=0)),
        "ece": ece,
        "ece_floor": float(floor.mean()),
        "calibration_p": float(np.mean(floor >= ece - 1e-12)),
    }


def imputation_metrics(x_true, x_imputed, weight) -> dict:
    """Imputation error over the entries with ``weight`` True (held-out samples, real steps).

    ``mse``: mean squared error in the data's units; ``corr``: Pearson correlation of imputed with true values,
    per feature (over samples and steps), averaged over features (pooling features would mostly measure how
    their means differ); ``n``: samples scored.
    """
    x_true = np.asarray(x_true, float)
    x_imputed = np.asarray(x_imputed, float)
    w = np.asarray(weight, bool)
    if not w.any():
        return {"mse": float("nan"), "corr": float("nan"), "n": 0}
    d = x_true.shape[-1]
    rows = np.broadcast_to(w.reshape(w.shape + (1,) * (x_true.ndim - 1 - w.ndim)), x_true.shape[:-1]).reshape(-1)
    a, b = x_true.reshape(-1, d)[rows], x_imputed.reshape(-1, d)[rows]
    corr = columnwise_pearson(a, b)
    return {
        "mse": float(np.mean((a - b) ** 2)),
        "corr": float(np.nanmean(corr)) if not np.all(np.isnan(corr)) else float("nan"),
        "n": int(w.reshape(len(x_true), -1).any(1).sum()),
    }


def label_metrics(prediction, y_true, y_present, label_spec) -> dict:
    """Every label metric that applies to the label's kind, on the labelled samples."""
    keep = np.asarray(y_present, bool)
    yt = np.asarray(y_true)[keep]
    point = prediction.point[keep]
    if prediction.kind == "categorical":
        out = classification_metrics(yt, point)
    elif prediction.kind == "bernoulli":
        out = multilabel_metrics(yt, point)
    else:
        sentiment = label_spec.dim == 1 and label_spec.low == -3 and label_spec.high == 3
        out = sentiment_metrics(yt, point) if sentiment else regression_metrics(yt, point)
        out["coverage"] = interval_coverage(yt, prediction.lower[keep], prediction.upper[keep])
    out["nlpd"] = float(-np.mean(prediction.log_density[keep]))
    out["n"] = int(keep.sum())
    return out


def output_metrics(prediction, y_true, y_present, label_spec) -> list[dict]:
    """Each output of a label of several (a multilabel target's labels, a multi-output regression's values: POM's
    traits, IEMOCAP's emotions, as the field reports them one by one), on the labelled samples: ``{"output": name,
    ...}`` with a multilabel label's accuracy, F1 of its positive class, ECE and positive share among the true
    labels, or a regression output's MAE, correlation and interval coverage. Empty for a class label or one
    output."""
    if label_spec.kind == "categorical" or label_spec.dim < 2:
        return []
    keep = np.asarray(y_present, bool)
    yt = np.asarray(y_true, dtype=float)[keep].reshape(int(keep.sum()), -1)
    point = np.asarray(prediction.point, dtype=float)[keep].reshape(yt.shape)
    names = label_spec.names or tuple(str(i) for i in range(label_spec.dim))
    out = []
    for k, name in enumerate(names):
        t, p = yt[:, k], point[:, k]
        if prediction.kind == "bernoulli":
            row = {
                "accuracy": float(np.mean((p > 0.5) == t)) if len(t) else math.nan,
                "f1": float(f1_score(t.astype(int), (p > 0.5).astype(int), zero_division=0)) if len(t) else math.nan,
                "ece": expected_calibration_error(p, t.astype(int)),
                "positive": float(t.mean()) if len(t) else math.nan,
            }
        else:
            lo = np.asarray(prediction.lower, dtype=float)[keep].reshape(yt.shape)[:, k]
            hi = np.asarray(prediction.upper, dtype=float)[keep].reshape(yt.shape)[:, k]
            row = {
                "mae": float(np.abs(p - t).mean()) if len(t) else math.nan,
                "corr": pearson(t, p),
                "coverage": interval_coverage(t, lo, hi),
            }
        out.append({"output": str(name), **row, "n": int(len(t))})
    return out


def _confidence_and_correct(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and whether the top label is right.

    ``probs`` is ``(N, C)`` class probabilities, or ``(N,)`` probabilities of class 1 of a binary problem.
    """
    p = np.asarray(probs, dtype=float)
    y = np.asarray(labels).astype(int).reshape(-1)
    if p.ndim == 1:
        p = np.stack([1.0 - p, p], axis=1)
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs shape {np.shape(probs)} does not match {y.shape[0]} labels")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(float)
    return conf, correct


def _bin_index(conf, n_bins: int) -> np.ndarray:
    """The bin of each confidence: ``(b/n_bins, (b+1)/n_bins]`` is bin b, and 0 falls in the first."""
    return np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)


def _weighted_gap(bins: dict, accuracy) -> np.ndarray:
    """sum_b (n_b / N) |accuracy_b - confidence_b| over the non-empty bins of ``bins`` (:func:`calibration_bins`),
    for bin accuracies ``accuracy`` of shape (..., n_bins)."""
    nz = bins["count"] > 0
    weight = bins["count"][nz] / bins["count"].sum()
    return (weight * np.abs(accuracy[..., nz] - bins["confidence"][nz])).sum(-1)


def calibration_bins(probs, labels, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin statistics of top-label confidence on ``n_bins`` equal-width bins of [0, 1].

    Bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]`` (the first bin also holds 0).
    Returns ``edges`` (n_bins+1), ``count``, ``accuracy`` and ``confidence`` (mean per bin; NaN where empty).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf, correct = _confidence_and_correct(probs, labels)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count, "accuracy": acc, "confidence": mean_conf}


def expected_calibration_error(probs, labels, n_bins: int = 10) -> float:
    """Expected calibration error: ``sum_b (n_b / N) |accuracy_b - confidence_b|`` over equal-width bins.

    ``probs``: ``(N, C)`` class probabilities or ``(N,)`` probabilities of class 1; ``labels``: ``(N,)`` ints.
    Returns NaN for no examples.
    """
    bins = calibration_bins(probs, labels, n_bins)
    if bins["count"].sum() == 0:
        return math.nan
    return float(_weighted_gap(bins, bins["accuracy"]))


def calibrated_bin_accuracy(probs, n_bins: int = 10, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """The accuracy per confidence bin, ``(draws, n_bins)``, of a perfectly calibrated classifier with these
    confidences on these samples: each sample's top label drawn right with probability equal to its confidence
    (consistency resampling, Broecker and Smith, *Weather and Forecasting* 22, 2007). NaN in an empty bin.
    Deterministic for a given ``seed``; ``probs`` as for :func:`expected_calibration_error`."""
    conf, _ = _confidence_and_correct(probs, np.zeros(len(np.asarray(probs)), int))
    onehot = np.eye(n_bins)[_bin_index(conf, n_bins)]  # (N, B)
    right = np.random.default_rng(seed).random((draws, len(conf))) < conf  # (draws, N)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (right @ onehot) / onehot.sum(0)


def calibrated_ece_draws(probs, n_bins: int = 10, draws: int = 1000, seed: int = 0) -> np.ndarray:
    """The ECE of a perfectly calibrated classifier with these confidences on these N samples, ``draws`` times
    (:func:`calibrated_bin_accuracy`).

    On a finite test set the ECE of a calibrated model is not 0: in bin b the gap is a mean of n_b centred Bernoulli
    terms, about sqrt(c (1 - c) / n_b), so with 400 samples at accuracy 0.9 a calibrated model shows an ECE near
    0.025. An observed ECE means miscalibration only where it is above these draws.
    """
    bins = calibration_bins(probs, np.zeros(len(np.asarray(probs)), int), n_bins)  # counts, mean confidences
    if bins["count"].sum() == 0:
        return np.full(draws, math.nan)
    return _weighted_gap(bins, calibrated_bin_accuracy(probs, n_bins, draws, seed))


def interval_coverage(y_true, lower, upper) -> float:
    """Fraction of labels inside ``[lower, upper]`` (pairs with any NaN are ignored)."""
    y, lo, hi = (np.asarray(a, dtype=float).reshape(-1) for a in (y_true, lower, upper))
    ok = np.isfinite(y) & np.isfinite(lo) & np.isfinite(hi)
    if not ok.any():
        return math.nan
    return float(np.mean((y[ok] >= lo[ok]) & (y[ok] <= hi[ok])))
