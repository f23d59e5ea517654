"""Evaluation on every subset of observed modalities (2^M - 1 of them): label metrics and imputation metrics.

For a subset S, the label is predicted from S alone, and each modality outside S is imputed from S and compared
with its held-out values (on the samples where it was actually recorded, over real steps only).
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
from tqdm import tqdm

from ..data.dataset import MultimodalDataset
from ..data.stats import feature_statistics
from ..model import MFM
from .metrics import imputation_metrics, label_metrics
from .predict import impute, predict
from .progress import bars_enabled


def observed_subsets(names) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first, in the schema's order."""
    return [c for k in range(1, len(names) + 1) for c in combinations(names, k)]


def _truth_weight(ds: MultimodalDataset, m: str) -> np.ndarray:
    present = ds.present[m]
    return (ds.steps[m] & present[:, None]) if m in ds.steps else present


def evaluate(mfm: MFM, ds: MultimodalDataset, subsets=None, num_samples: int = 100, impute_samples: int = 20,
             interval: float = 0.9, batch_size: int = 512, progress: bool = True, predictions: dict | None = None
             ) -> list[dict]:
    """One record per observed subset: ``{"observed": [...], "label": {...}, "imputation": {m: {...}}}``.

    ``predictions``: a dict that receives each subset's :class:`~pyro_mfm.infer.predict.Prediction` (keyed by the
    tuple of observed modalities), e.g. for plots that must show the table's numbers."""
    names = mfm.schema.names
    subsets = observed_subsets(names) if subsets is None else [tuple(mfm.schema.check_modalities(s)) for s in subsets]
    features = {m: np.asarray(ds.features[m]) for m in names}
    records = []
    for obs in tqdm(subsets, desc="evaluate subsets", disable=not bars_enabled(progress), leave=False):
        rec: dict = {"observed": list(obs)}
        if mfm.D is not None and ds.labels is not None and ds.label_present.any():
            pred = predict(mfm, ds, obs, num_samples=num_samples, interval=interval, batch_size=batch_size,
                           keep_samples=False)
            rec["label"] = label_metrics(pred, np.asarray(ds.labels), ds.label_present, ds.schema.label)
            if predictions is not None:
                predictions[tuple(obs)] = pred
        hidden = [m for m in names if m not in obs]
        if hidden:
            imp = impute(mfm, ds, obs, num_samples=impute_samples, batch_size=batch_size)
            rec["imputation"] = {m: imputation_metrics(features[m], imp.mean[m], _truth_weight(ds, m)) for m in hidden}
        records.append(rec)
    return records


def mean_imputation_baseline(train: MultimodalDataset, ds: MultimodalDataset, per_step: bool = False) -> dict:
    """Imputation metrics of the training mean of each feature (the baseline any imputation must beat).

    ``per_step``: for a sequence modality, the training mean of each (step, feature) over the samples where that
    step is real (the feature's mean at a step no training sample reaches), a stronger baseline where the features
    drift along the sequence.
    """
    mean = feature_statistics(train).mean  # over observed samples and real steps
    out = {}
    for m in ds.schema.names:
        x = np.asarray(ds.features[m], float)
        fill = np.broadcast_to(mean[m], x.shape)
        if per_step and m in ds.steps:
            w = (train.steps[m] & train.present[m][:, None])[..., None].astype(float)
            count = w.sum(0)
            fill = np.where(count > 0, (np.asarray(train.features[m], float) * w).sum(0) / np.maximum(count, 1),
                            mean[m])
            fill = np.broadcast_to(fill, x.shape)
        out[m] = imputation_metrics(x, fill, _truth_weight(ds, m))
    return out


def table(records: list[dict], metrics=None, baseline: dict | None = None) -> str:
    """A Markdown table: one row per observed subset, label metrics then the imputation MSE of each hidden modality
    (with ``baseline``, the per-modality metrics of :func:`mean_imputation_baseline`, also as a ratio to the
    training-mean imputation's MSE: below 1 beats it)."""
    label_keys = metrics or ([k for k in records[0].get("label", {}) if k != "n"] if records else [])
    head = ["observed"] + label_keys + ["imputation MSE (hidden modalities)" if baseline is None else
                                        "imputation MSE of hidden modalities (ratio to the training mean's)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lab = r.get("label", {})
        cells = ["+".join(r["observed"])] + [f"{lab.get(k, float('nan')):.4g}" for k in label_keys]
        imp = r.get("imputation", {})
        cells.append(", ".join(f"{m} {v['mse']:.3g}" + (f" ({v['mse'] / baseline[m]['mse']:.2f}×)"
                                                         if baseline and baseline.get(m, {}).get("mse") else "")
                               for m, v in imp.items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
