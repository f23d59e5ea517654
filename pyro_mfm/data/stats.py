"""Per-feature statistics of a training split, used to standardise inputs and scale likelihoods."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats as tests

from .dataset import MAX_MAGNITUDE, MultimodalDataset
from .schema import DataError


@dataclass
class FeatureStats:
    """Mean and standard deviation of every feature (over observed samples and real steps) and of labels, and the
    fraction of samples that lack each modality.

    ``label_mean``/``label_std`` are set for regression labels only (zero / one otherwise). ``missing``: modality ->
    the fraction of the split's samples without it (empty in statistics stored before it was recorded: none).
    ``absence_p``: modality -> the p-value of the hypothesis that whether a labelled sample has the modality is
    independent of its label (:func:`absence_p_value`; 1 where it cannot be tested; empty in older statistics).
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    label_mean: np.ndarray
    label_std: np.ndarray
    missing: dict[str, float] = field(default_factory=dict)
    absence_p: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The statistics as a checkpoint stores them (:meth:`from_dict` reads them back)."""
        return {
            "mean": self.mean,
            "std": self.std,
            "label_mean": self.label_mean,
            "label_std": self.label_std,
            "missing": dict(self.missing),
            "absence_p": dict(self.absence_p),
        }

    @classmethod
    def from_dict(cls, s: dict) -> FeatureStats:
        """Statistics from :meth:`to_dict` (of this version or an older one, without ``missing`` or ``absence_p``)."""
        missing, absence_p = dict(s.get("missing", {})), dict(s.get("absence_p", {}))
        return cls(s["mean"], s["std"], s["label_mean"], s["label_std"], missing, absence_p)


def absence_p_value(y: np.ndarray, present: np.ndarray, kind: str) -> float:
    """The p-value of the hypothesis that whether a sample has a modality (``present``, over labelled samples) is
    independent of its label ``y``: for a class label, the chi-squared test of the classes' counts with and without
    the modality; otherwise Welch's t-test of each output's mean with and without it, Bonferroni-corrected over the
    outputs. 1 where it cannot be tested (fewer than two samples with or without the modality)."""
    present = np.asarray(present, bool)
    if min(int(present.sum()), int((~present).sum())) < 2:
        return 1.0
    if kind == "categorical":
        y = np.asarray(y).reshape(-1)
        table = np.array([[np.sum((y == c) & present), np.sum((y == c) & ~present)] for c in np.unique(y)])
        if len(table) < 2:
            return 1.0
        return float(tests.chi2_contingency(table)[1])
    y = np.asarray(y, float).reshape(len(present), -1)
    with np.errstate(all="ignore"):
        p = tests.ttest_ind(y[~present], y[present], equal_var=False, axis=0).pvalue
    p = np.where(np.isfinite(p), p, 1.0)
    return float(min(1.0, p.min() * y.shape[1]))


def feature_statistics(ds: MultimodalDataset, chunk: int = 4096, min_std: float = 1e-3) -> FeatureStats:
    """Statistics of ``ds`` (read in chunks, so a lazily loaded file is never held in memory whole).

    Raises:
        DataError: a modality never observed, or an observed feature or regression label beyond
            :data:`MAX_MAGNITUDE` in magnitude (naming the split, the modality or label, and the feature).
    """
    sums = {s.name: np.zeros(s.dim) for s in ds.schema.modalities}
    peak = {s.name: np.zeros(s.dim) for s in ds.schema.modalities}
    sq = {s.name: np.zeros(s.dim) for s in ds.schema.modalities}
    counts = {s.name: 0.0 for s in ds.schema.modalities}
    lacking = {s.name: 0 for s in ds.schema.modalities}
    y_sum = y_sq = 0.0
    y_n = 0
    lab = ds.schema.label
    labels, labelled_present = [], {s.name: [] for s in ds.schema.modalities}  # for absence_p
    for batch in ds.loader(chunk):
        for s in ds.schema.modalities:
            x = batch.x[s.name].double().numpy()
            w = (batch.steps[s.name] if s.is_sequence else batch.present[s.name]).numpy().astype(float)
            x = x.reshape(-1, s.dim)
            w = w.reshape(-1)
            if w.any():
                peak[s.name] = np.maximum(peak[s.name], np.abs(x[w > 0]).max(0))
            sums[s.name] += w @ x
            sq[s.name] += w @ (x * x)
            counts[s.name] += w.sum()
            lacking[s.name] += int((~batch.present[s.name]).sum())
        if lab is None:
            continue
        yp = batch.y_present.numpy()
        labels.append(batch.y.numpy()[yp])
        for s in ds.schema.modalities:
            labelled_present[s.name].append(batch.present[s.name].numpy()[yp])
        if lab.kind == "regression":
            y = labels[-1].astype(np.float64)
            if y.size and np.abs(y).max() > MAX_MAGNITUDE:
                raise DataError(
                    f"split {ds.split!r}: a regression label reaches {np.abs(y).max():.3g}; expected "
                    f"magnitudes up to {MAX_MAGNITUDE:.0e} (rescale the label)"
                )
            y_sum = y_sum + y.sum(0)
            y_sq = y_sq + (y * y).sum(0)
            y_n += int(yp.sum())
    mean, std = {}, {}
    for name in sums:
        if counts[name] == 0:
            raise DataError(f"split {ds.split!r}, modality {name!r}: never observed; cannot standardise it")
        if peak[name].max() > MAX_MAGNITUDE:
            j = int(peak[name].argmax())
            raise DataError(
                f"split {ds.split!r}, modality {name!r}: feature {j} reaches {peak[name][j]:.3g} in "
                f"magnitude; expected magnitudes up to {MAX_MAGNITUDE:.0e}, which the likelihood can "
                "square in float32 (rescale the features)"
            )
        mean[name] = sums[name] / counts[name]
        std[name] = np.sqrt(np.maximum(sq[name] / counts[name] - mean[name] ** 2, 0.0)).clip(min_std)
    k = lab.dim if lab is not None and lab.kind == "regression" else 1
    if lab is not None and lab.kind == "regression" and y_n > 1:
        label_mean = y_sum / y_n
        label_std = np.sqrt(np.maximum(y_sq / y_n - label_mean**2, 0.0)).clip(min_std)
    else:
        label_mean, label_std = np.zeros(k), np.ones(k)
    f32 = lambda d: {m: v.astype(np.float32) for m, v in d.items()}  # noqa: E731
    missing = {m: lacking[m] / max(len(ds), 1) for m in lacking}
    absence_p = {m: 1.0 for m in lacking}
    if labels and any(lacking.values()):
        y = np.concatenate(labels)
        for m in lacking:
            if lacking[m]:
                absence_p[m] = absence_p_value(y, np.concatenate(labelled_present[m]), lab.kind)
    return FeatureStats(
        f32(mean), f32(std), label_mean.astype(np.float32), label_std.astype(np.float32), missing, absence_p
    )
