"""Simple baselines on the same split as the MFM: missingness for training, a filled-in classifier, and a linear
model on each modality alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..data.dataset import MultimodalData, MultimodalDataset
from ..data.missing import hide_at_random, with_present

if TYPE_CHECKING:
    from ..config import Config


def with_missing(ds: MultimodalDataset, rate: float, seed: int = 0, min_observed: int = 1) -> MultimodalDataset:
    """A copy of ``ds`` where each present modality of each sample is also missing with probability ``rate``
    (missing completely at random), keeping at least ``min_observed`` modalities of every sample. Zero-filled.
    (:func:`pyro_mfm.data.missing.hide_at_random` with a generator seeded by ``seed``.)"""
    names = ds.schema.names
    present = np.stack([np.asarray(ds.present[m], bool) for m in names], 1)
    kept = hide_at_random(present, rate, np.random.default_rng(seed), min_observed)
    return with_present(ds, {m: kept[:, j] for j, m in enumerate(names)})


def _design(ds: MultimodalDataset, observed, fill: dict) -> np.ndarray:
    cols = []
    for m in ds.schema.names:
        x = np.asarray(ds.features[m], float).reshape(len(ds), -1)
        use = np.asarray(ds.present[m], bool) & (m in observed)
        cols.append(np.where(use[:, None], x, fill[m][None, :]))
    return np.concatenate(cols, 1)


def filled_classifier(
    train: MultimodalDataset, test: MultimodalDataset, subsets: Sequence[Sequence[str]], fill: str = "mean"
) -> list[dict]:
    """One linear model on all modalities concatenated; at test time, modalities outside the observed subset are
    replaced by ``fill``: ``"zero"`` (the stored zeros) or ``"mean"`` (the training mean of each feature).

    Logistic regression for classes (reports ``accuracy``), ridge regression otherwise (``mae``), on standardised
    features. Returns ``{"observed": [...], metric: value}`` per subset, the layout of ``plots.metric_by_observed``.
    """
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if fill not in ("zero", "mean"):
        raise ValueError(f"fill = {fill!r}: expected 'zero' or 'mean'")
    names = train.schema.names
    fills = {}
    for m in names:
        x = np.asarray(train.features[m], float).reshape(len(train), -1)
        p = np.asarray(train.present[m], bool)
        fills[m] = x[p].mean(0) if fill == "mean" and p.any() else np.zeros(x.shape[1])
    tr, te = np.asarray(train.label_present, bool), np.asarray(test.label_present, bool)
    classes = train.schema.label.kind == "categorical"
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000) if classes else Ridge(alpha=1.0))
    model.fit(_design(train, names, fills)[tr], np.asarray(train.labels)[tr])
    y = np.asarray(test.labels)[te]
    out = []
    for obs in subsets:
        pred = model.predict(_design(test, list(obs), fills)[te])
        value = float(np.mean(pred == y)) if classes else float(np.mean(np.abs(pred - y)))
        out.append({"observed": list(obs), "accuracy" if classes else "mae": value})
    return out


def single_view_baselines(data: MultimodalData, config: Config) -> dict:
    """Per modality: a logistic (classes) or ridge (regression) model trained on that modality alone."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = data[config.data.train_split], data[config.data.test_split]
    lab = data.schema.label
    out = {}
    for s in data.schema.modalities:
        m = s.name
        tr = train.present[m] & train.label_present
        te = test.present[m] & test.label_present
        flat = lambda ds, idx: np.asarray(ds.features[m])[idx].reshape(idx.sum(), -1)  # noqa: E731
        if not baseline_possible(lab, np.asarray(train.labels)[tr] if tr.any() else [], te.sum()):
            continue  # too few labelled samples with this modality (see the report's note)
        if lab.kind == "categorical":
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(flat(train, tr), np.asarray(train.labels)[tr])
            out[m] = {"accuracy": float(clf.score(flat(test, te), np.asarray(test.labels)[te]))}
        elif lab.kind == "regression":
            reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
            reg.fit(flat(train, tr), np.asarray(train.labels)[tr])
            out[m] = {"mae": float(np.abs(reg.predict(flat(test, te)) - np.asarray(test.labels)[te]).mean())}
    return out


def baseline_possible(label, train_labels, n_test: int) -> bool:
    """Whether a one-view baseline can be fitted and scored: a labelled test sample with the view, and training
    samples with it of at least two classes (classes) or at least one (regression)."""
    if n_test == 0 or len(train_labels) == 0:
        return False
    return label.kind != "categorical" or len(np.unique(train_labels)) >= 2
