"""Simple baselines on the same split as the MFM: missingness for training, a filled-in classifier, and a linear
model on each subset of observed modalities alone."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.dataset import MultimodalData, MultimodalDataset
from ..data.missing import hide_at_random, with_present
from ..nets import step_mean

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


# The penalties among which a linear baseline takes the one its validation samples score best: the inverse penalty C
# of a logistic regression, the penalty alpha of a ridge regression (on standardised features).
LOGISTIC_C = (0.01, 0.1, 1.0, 10.0)
RIDGE_ALPHA = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)


def _vectors(ds: MultimodalDataset, m: str) -> np.ndarray:
    """Modality ``m`` of every sample as a vector: a sequence as the mean over its real steps (:func:`step_mean`)."""
    x = np.asarray(ds.features[m], float)
    if x.ndim == 3:
        x = step_mean(torch.as_tensor(x), torch.as_tensor(np.asarray(ds.steps[m], bool))).numpy()
    return x.reshape(len(ds), -1)


def _complete(ds: MultimodalDataset, observed) -> np.ndarray:
    """The labelled samples of ``ds`` that have every modality of ``observed``."""
    rows = np.asarray(ds.label_present, bool).copy()
    for m in observed:
        rows &= np.asarray(ds.present[m], bool)
    return rows


def subset_baselines(data: MultimodalData, config: Config, subsets: Sequence[Sequence[str]]) -> dict:
    """Per subset S of observed modalities, a linear model fitted on S's modalities alone, concatenated: a logistic
    regression for a class label (one per label of a multilabel target, with one C for all of them), a ridge
    regression for a regression label, on features standardised with the
    training moments (a sequence averaged over its real steps), trained on the labelled training samples that have
    every modality of S. Its penalty is the one of :data:`LOGISTIC_C` or :data:`RIDGE_ALPHA` that scores best
    (accuracy, MAE) on the validation split's such samples; without any, cross-validation on the training samples
    chooses it (a grid search over 5 folds, fewer where a class has fewer samples, for the logistic regression;
    leave-one-out for the ridge; scikit-learn's default C = 1 where a class has a single sample). A subset without
    training samples of two classes (or of the label) or without a test sample is left out
    (:func:`baseline_possible`).

    Returns ``{S: {"rows": test rows scored, "pred": their predicted classes or values, metric: value, "penalty":
    value, "chosen_on": "validation", "cross-validation" or "default"}}`` with ``metric`` ``"accuracy"`` or
    ``"mae"`` (the mean over a label's outputs; a multilabel target's accuracy over every label); a multilabel
    subset whose training samples lack either value of some label is left out."""
    from threadpoolctl import threadpool_limits

    lab = data.schema.label
    if lab is None:
        return {}
    # one BLAS thread: these fits are many small products, which a pool of threads slows several times over (UCI's
    # 63 subsets on 2 cores: 89 s against 13 s)
    with threadpool_limits(1):
        return _subset_baselines(data, config, subsets)


def _subset_baselines(data: MultimodalData, config: Config, subsets) -> dict:
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import GridSearchCV

    lab = data.schema.label
    classes, multilabel = lab.kind == "categorical", lab.kind == "multilabel"
    train, test = data[config.data.train_split], data[config.data.test_split]
    valid = data[config.data.valid_split] if config.data.valid_split in data else None
    names = {m for obs in subsets for m in obs}
    # each split's modalities as vectors, read once (a native file's splits are read from disk)
    vectors = {id(ds): {m: _vectors(ds, m) for m in names} for ds in (train, valid, test) if ds is not None}
    out = {}
    for obs in subsets:
        obs = tuple(obs)
        tr, te = _complete(train, obs), _complete(test, obs)
        y_tr = np.asarray(train.labels)[tr]
        if not baseline_possible(lab, y_tr, int(te.sum())):
            continue
        x_tr = np.concatenate([vectors[id(train)][m] for m in obs], 1)[tr]
        mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
        z = lambda ds, rows: (np.concatenate([vectors[id(ds)][m] for m in obs], 1)[rows] - mu) / sd  # noqa: E731
        z_tr = (x_tr - mu) / sd
        va = _complete(valid, obs) if valid is not None else None
        if va is not None and va.any():
            y_va, x_va = np.asarray(valid.labels)[va], z(valid, va)
            if classes or multilabel:
                fits = {c: _logistic(c, multilabel).fit(z_tr, y_tr) for c in LOGISTIC_C}
                penalty = max(fits, key=lambda c: np.mean(fits[c].predict(x_va) == y_va))
            else:
                fits = {a: Ridge(alpha=a).fit(z_tr, y_tr) for a in RIDGE_ALPHA}
                penalty = min(fits, key=lambda a: np.mean(np.abs(fits[a].predict(x_va) - y_va)))
            model, chosen = fits[penalty], "validation"
        elif classes or multilabel:
            # folds as many as the rarest value (a class, or a label's 0 or 1) allows, at most 5
            counts = [np.unique(c, return_counts=True)[1].min() for c in np.reshape(y_tr, (len(y_tr), -1)).T]
            folds = int(min(5, *counts))
            key = "estimator__C" if multilabel else "C"
            if folds >= 2:
                search = GridSearchCV(_logistic(1.0, multilabel), {key: list(LOGISTIC_C)}, cv=folds, scoring=_accuracy)
                model = search.fit(z_tr, y_tr).best_estimator_
                penalty, chosen = float(search.best_params_[key]), "cross-validation"
            else:  # a value with a single training sample: no folds to choose on
                penalty, chosen = 1.0, "default"
                model = _logistic(penalty, multilabel).fit(z_tr, y_tr)
        else:
            model = RidgeCV(alphas=RIDGE_ALPHA).fit(z_tr, y_tr)
            penalty, chosen = float(model.alpha_), "cross-validation"
        pred = model.predict(z(test, te))
        y_te = np.asarray(test.labels)[te]
        if classes or multilabel:
            value = {"accuracy": float(np.mean(pred == y_te))}
        else:
            value = {"mae": float(np.mean(np.abs(pred.reshape(y_te.shape) - y_te)))}
        out[obs] = {"rows": np.flatnonzero(te), "pred": pred, **value, "penalty": float(penalty), "chosen_on": chosen}
    return out


def _logistic(c: float, multilabel: bool):
    """A logistic regression of penalty ``c``; for a multilabel target, one per label (scikit-learn's
    ``MultiOutputClassifier``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multioutput import MultiOutputClassifier

    model = LogisticRegression(C=c, max_iter=3000)
    return MultiOutputClassifier(model) if multilabel else model


def _accuracy(model, x, y) -> float:
    """The share of right labels (of every label, for a multilabel target), what the baselines are scored on."""
    return float(np.mean(model.predict(x) == y))


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
    if label.kind == "multilabel":  # both values of every label
        return all(len(np.unique(c)) == 2 for c in np.reshape(train_labels, (len(train_labels), -1)).T)
    return label.kind != "categorical" or len(np.unique(train_labels)) >= 2


def sample_scores(pred, y: np.ndarray) -> np.ndarray:
    """Per sample, what a prediction scores on labels ``y`` (higher is better): 1 where the most probable class is
    right (else 0), the share of a multilabel target's labels that are right, or minus the absolute error, averaged
    over a regression label's outputs."""
    point = np.asarray(pred.point)
    if pred.kind == "categorical":
        return (point.argmax(-1) == y).astype(float)
    if pred.kind == "bernoulli":
        return ((point > 0.5) == np.asarray(y)).reshape(len(y), -1).mean(-1)
    err = np.abs(point.reshape(len(y), -1) - np.asarray(y, float).reshape(len(y), -1))
    return -err.mean(-1)


def _paired(d: np.ndarray) -> tuple[float, float]:
    """The mean of paired differences ``d`` and its standard error (0 for a single difference)."""
    se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0
    return float(d.mean()), se


def against_linear(baselines: dict, predictions: dict, test: MultimodalDataset) -> list[dict]:
    """The MFM's predictions from each observed subset (``predictions``: ``{subset: Prediction}`` of the test split)
    against :func:`subset_baselines`, on the test samples the baseline scored: per subset ``{"observed", "n",
    metric: {"mfm": ..., "linear": ...}, "gain": ..., "se": ..., "penalty", "chosen_on"}``, where ``gain`` is the
    MFM's accuracy minus the linear model's (or the linear model's MAE minus the MFM's), positive where the MFM is
    better, and ``se`` its paired standard error over those samples."""
    y_all = np.asarray(test.labels)
    rows = []
    for obs, base in baselines.items():
        if obs not in predictions:
            continue
        idx, y = base["rows"], y_all[base["rows"]]
        metric = "accuracy" if "accuracy" in base else "mae"
        mfm = sample_scores(predictions[obs], y_all)[idx]
        if metric == "accuracy":  # the share of a sample's labels that are right (one, for a class label)
            linear = (np.asarray(base["pred"]) == y).reshape(len(y), -1).mean(-1)
        else:
            linear = -np.abs(np.asarray(base["pred"], float).reshape(len(y), -1) - np.reshape(y, (len(y), -1)))
            linear = linear.mean(-1)
        gain, se = _paired(mfm - linear)
        sign = 1.0 if metric == "accuracy" else -1.0  # MAE from the scores (minus the errors)
        rows.append(
            {
                "observed": list(obs),
                "n": len(idx),
                metric: {"mfm": sign * float(mfm.mean()), "linear": base[metric]},
                "gain": gain,
                "se": se,
                "penalty": base["penalty"],
                "chosen_on": base["chosen_on"],
            }
        )
    return rows


def nested_gains(predictions: dict, test: MultimodalDataset) -> list[dict]:
    """Every nested pair of the predicted subsets, S inside S': the gain of the MFM's prediction from S' over its
    prediction from S on the labelled test samples (accuracy, or minus the MAE), with its paired standard error,
    and whether S' is worse by more than that standard error. ``predictions``: ``{subset: Prediction}``."""
    keep = np.asarray(test.label_present, bool)
    kinds = {p.kind for p in predictions.values()}
    if not keep.any() or not kinds <= {"categorical", "bernoulli", "normal", "laplace"}:
        return []
    y = np.asarray(test.labels)
    return nested_differences({tuple(obs): sample_scores(p, y)[keep] for obs, p in predictions.items()})


def nested_differences(scores: dict) -> list[dict]:
    """Every nested pair S inside S' of ``scores`` (``{subset: per-sample scores}``, the same samples in each,
    higher is better): ``{"smaller", "larger", "gain", "se", "worse"}``, the mean of the paired differences of S'
    against S, its standard error, and whether S' is worse by more than it."""
    pairs = []
    for a, b in combinations(scores, 2):
        for small, big in ((a, b), (b, a)):
            if set(small) < set(big):
                gain, se = _paired(scores[big] - scores[small])
                pairs.append({"smaller": list(small), "larger": list(big), "gain": gain, "se": se, "worse": gain < -se})
    return pairs
