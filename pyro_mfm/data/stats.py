"""Per-feature statistics of a training split, used to standardise inputs and scale likelihoods."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import MultimodalDataset
from .schema import DataError


@dataclass
class FeatureStats:
    """Mean and standard deviation of every feature (over observed samples and real steps) and of labels.

    ``label_mean``/``label_std`` are set for regression labels only (zero / one otherwise).
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    label_mean: np.ndarray
    label_std: np.ndarray


def feature_statistics(ds: MultimodalDataset, chunk: int = 4096, min_std: float = 1e-3) -> FeatureStats:
    """Statistics of ``ds`` (read in chunks, so a lazily loaded file is never held in memory whole)."""
    sums = {s.name: np.zeros(s.dim) for s in ds.schema.modalities}
    sq = {s.name: np.zeros(s.dim) for s in ds.schema.modalities}
    counts = {s.name: 0.0 for s in ds.schema.modalities}
    y_sum = y_sq = 0.0
    y_n = 0
    lab = ds.schema.label
    for batch in ds.loader(chunk):
        for s in ds.schema.modalities:
            x = batch.x[s.name].double().numpy()
            w = (batch.steps[s.name] if s.is_sequence else batch.present[s.name]).numpy().astype(float)
            x = x.reshape(-1, s.dim)
            w = w.reshape(-1)
            sums[s.name] += w @ x
            sq[s.name] += w @ (x * x)
            counts[s.name] += w.sum()
        if lab is not None and lab.kind == "regression":
            yp = batch.y_present.numpy()
            y = batch.y.double().numpy()[yp]
            y_sum = y_sum + y.sum(0)
            y_sq = y_sq + (y * y).sum(0)
            y_n += int(yp.sum())
    mean, std = {}, {}
    for name in sums:
        if counts[name] == 0:
            raise DataError(f"split {ds.split!r}, modality {name!r}: never observed; cannot standardise it")
        mean[name] = sums[name] / counts[name]
        std[name] = np.sqrt(np.maximum(sq[name] / counts[name] - mean[name] ** 2, 0.0)).clip(min_std)
    k = lab.dim if lab is not None and lab.kind == "regression" else 1
    if lab is not None and lab.kind == "regression" and y_n > 1:
        label_mean = y_sum / y_n
        label_std = np.sqrt(np.maximum(y_sq / y_n - label_mean**2, 0.0)).clip(min_std)
    else:
        label_mean, label_std = np.zeros(k), np.ones(k)
    f32 = lambda d: {m: v.astype(np.float32) for m, v in d.items()}  # noqa: E731
    return FeatureStats(f32(mean), f32(std), label_mean.astype(np.float32), label_std.astype(np.float32))
