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
from .predict import check_schema, impute, predict, refuse_imputed, split_features
from .progress import bars_enabled


def observed_subsets(names) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names``, smallest first, in the schema's order."""
    return [c for k in range(1, len(names) + 1) for c in combinations(names, k)]


def _truth_weight(ds: MultimodalDataset, m: str) -> np.ndarray:
    present = ds.present[m]
    return (ds.steps[m] & present[:, None]) if m in ds.steps else present


def evaluate(
    mfm: MFM,
    ds: MultimodalDataset,
    subsets=None,
    num_samples: int = 100,
    impute_samples: int = 20,
    interval: float = 0.9,
    batch_size: int = 512,
    progress: bool = True,
    seed: int | None = 0,
    predictions: dict | None = None,
) -> list[dict]:
    """One record per observed subset: ``{"observed": [...], "label": {...}, "imputation": {m: {...}}}``.

    Every prediction and imputation is seeded with ``seed`` (``None``: drawn from the global random state), so two
    evaluations of one model give the same numbers (on CPU), whatever subsets they cover. ``predictions``: a dict
    that receives each subset's :class:`~pyro_mfm.infer.predict.Prediction` (keyed by the tuple of observed
    modalities), e.g. for plots that must show the table's numbers."""
    check_schema(mfm, ds)
    refuse_imputed(ds)
    names = mfm.schema.names
    subsets = observed_subsets(names) if subsets is None else [tuple(mfm.schema.check_modalities(s)) for s in subsets]
    features = {m: np.asarray(ds.features[m]) for m in names}
    # with a product of experts, every modality is encoded once for all the subsets (split_features)
    encoded = split_features(mfm, ds, batch_size) if len(subsets) > 1 else None
    records = []
    for obs in tqdm(subsets, desc="evaluate subsets", disable=not bars_enabled(progress), leave=False):
        rec: dict = {"observed": list(obs)}
        hidden = [m for m in names if m not in obs]
        if len(ds) and not np.any([ds.present[m] for m in obs]):
            # no sample of the split has any of these modalities: a prediction would be the prior's, not theirs
            rec["note"] = f"no sample of split {ds.split!r} has {' or '.join(obs)}: nothing to predict from"
            if mfm.D is not None and ds.labels is not None and ds.label_present.any():
                rec["label"] = {"n": 0}
            if hidden:
                rec["imputation"] = {m: {"n": 0} for m in hidden}
            records.append(rec)
            continue
        if mfm.D is not None and ds.labels is not None and ds.label_present.any():
            pred = predict(
                mfm,
                ds,
                obs,
                num_samples=num_samples,
                interval=interval,
                batch_size=batch_size,
                keep_samples=False,
                seed=seed,
                encoded=encoded,
            )
            rec["label"] = label_metrics(pred, np.asarray(ds.labels), ds.label_present, ds.schema.label)
            if predictions is not None:
                predictions[tuple(obs)] = pred
        if hidden:
            imp = impute(mfm, ds, obs, num_samples=impute_samples, batch_size=batch_size, seed=seed, encoded=encoded)
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
            fill = np.where(
                count > 0, (np.asarray(train.features[m], float) * w).sum(0) / np.maximum(count, 1), mean[m]
            )
            fill = np.broadcast_to(fill, x.shape)
        out[m] = imputation_metrics(x, fill, _truth_weight(ds, m))
    return out


def table(records: list[dict], metrics=None, baseline: dict | None = None) -> str:
    """A Markdown table: one row per observed subset, label metrics then the imputation MSE of each hidden modality
    (with ``baseline``, the per-modality metrics of :func:`mean_imputation_baseline`, also as a ratio to the
    training-mean imputation's MSE: below 1 beats it)."""
    scored = [r["label"] for r in records if r.get("label", {}).get("n")]
    label_keys = metrics or ([k for k in scored[0] if k != "n"] if scored else [])
    head = (
        ["observed"]
        + label_keys
        + [
            "imputation MSE (hidden modalities)"
            if baseline is None
            else "imputation MSE of hidden modalities (ratio to the training mean's)"
        ]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        lab = r.get("label", {})
        cells = ["+".join(r["observed"])] + [format_cell(lab.get(k), ".4g") for k in label_keys]
        imp = r.get("imputation", {})
        cells.append(
            ", ".join(
                f"{m} {format_cell(v.get('mse'), '.3g')}{_ratio(v.get('mse'), baseline, m)}" for m, v in imp.items()
            )
            or "-"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def output_table(entry: dict, cell=None) -> list[str]:
    """The Markdown section on each output of a label of several (``label_outputs``: ``{"observed": [...],
    "outputs": [{"output": name, metric: value, ...}]}``), each value written by ``cell`` (default: 4 significant
    digits)."""
    cell = cell or (lambda v: format_cell(v, ".4g"))
    keys = [k for k in entry["outputs"][0] if k != "output"]
    what = {"positive": "positive (share of the true labels)", "f1": "f1 (positive class)"}
    lines = [
        f"\n## Each output of the label (test split, {' + '.join(entry['observed'])} observed)\n",
        "| output | " + " | ".join(what.get(k, k) for k in keys) + " |",
        "|" + "---|" * (len(keys) + 1),
    ]
    lines += [f"| {row['output']} | " + " | ".join(cell(row[k]) for k in keys) + " |" for row in entry["outputs"]]
    return lines


def format_cell(v, spec: str) -> str:
    """A table cell: the number, or ``-`` where there is none (nothing to score, or not finite)."""
    return f"{v:{spec}}" if isinstance(v, (int, float)) and np.isfinite(v) else "-"


def _ratio(mse, baseline: dict | None, m: str) -> str:
    """`` (0.52×)``: ``mse`` over the baseline's MSE of modality ``m``, where both are finite numbers and the
    baseline's is positive; else nothing."""
    b = (baseline or {}).get(m, {}).get("mse")
    ok = all(isinstance(v, (int, float)) and np.isfinite(v) for v in (mse, b)) and b > 0
    return f" ({mse / b:.2f}×)" if ok else ""
