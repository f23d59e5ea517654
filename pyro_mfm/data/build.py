"""Building a data set from numpy arrays (bring your own data): :func:`from_arrays` and the checks of its inputs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from .dataset import MultimodalData, MultimodalDataset
from .schema import DataError, LabelSpec, ModalitySpec, Schema

LABEL_KINDS = ("regression", "categorical", "multilabel")


def _infer_label_kind(y: np.ndarray) -> str:
    """The label kind that integer, bool and float label arrays stand for (see :func:`from_arrays`)."""
    if y.dtype.kind in "iub":
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            return "categorical"
        if y.ndim == 2 and np.isin(y, (0, 1)).all():
            return "multilabel"
        raise DataError(
            f"labels: integer array of shape {y.shape} is neither class indices (N,) nor 0/1 multilabel "
            "targets (N, k); declare label_kind='regression' (or 'categorical', 'multilabel')"
        )
    if y.dtype.kind == "f":
        return "regression"
    raise DataError(f"labels: dtype {y.dtype}; expected integer class indices or float values")


def _check_mask(name: str, key: str, mask, shape: tuple) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.shape != shape:
        raise DataError(f"{key} mask of {name}: shape {arr.shape}, expected {shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{key} mask of {name}: dtype {arr.dtype}, expected bool")
    return arr.astype(bool)


def _assignment(split, n: int) -> dict[str, np.ndarray]:
    """Split name -> sorted sample indices, each sample in at most one split."""
    if split is None:
        return {"train": np.arange(n)}
    if isinstance(split, Mapping):
        out, owner = {}, np.full(n, -1)
        for i, (name, idx) in enumerate(split.items()):
            idx = np.asarray(idx)
            if idx.size == 0:
                idx = idx.astype(np.int64)
            if idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise DataError(
                    f"split {name!r}: index array of dtype {idx.dtype} and shape {idx.shape}; expected a "
                    f"1-d array of integer sample indices in [0, {n - 1}]"
                )
            bad = (idx < 0) | (idx >= n)
            if bad.any():
                raise DataError(
                    f"split {name!r}: sample index {idx[bad][0]} out of range; expected indices in "
                    f"[0, {n - 1}] (N={n} samples)"
                )
            uniq, counts = np.unique(idx, return_counts=True)
            if (counts > 1).any():
                raise DataError(
                    f"split {name!r}: sample {uniq[counts > 1][0]} listed {counts.max()} times; expected "
                    "each sample once"
                )
            taken = owner[uniq] >= 0
            if taken.any():
                other = list(split)[owner[uniq[taken][0]]]
                raise DataError(
                    f"split {name!r}: {taken.sum()} sample(s) also in split {other!r}, first sample "
                    f"{uniq[taken][0]}; expected disjoint splits"
                )
            owner[uniq] = i
            out[name] = uniq.astype(np.int64)
        return out
    names = np.asarray(split)
    if names.shape != (n,):
        raise DataError(
            f"split: array of shape {names.shape}, expected ({n},): one split name per sample (or a "
            "mapping split name -> index array)"
        )
    names = names.astype(str)
    return {s: np.nonzero(names == s)[0] for s in dict.fromkeys(names.tolist())}


def from_arrays(
    features: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    label_kind: str | None = None,
    num_classes: int | None = None,
    present: Mapping[str, np.ndarray] | None = None,
    steps: Mapping[str, np.ndarray] | None = None,
    label_present: np.ndarray | None = None,
    split: np.ndarray | Mapping[str, np.ndarray] | None = None,
    name: str = "",
    attribution: str = "",
    nan_as_missing: bool = False,
    ids: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    label_range: tuple[float, float] | None = None,
    label_names=None,
) -> MultimodalData:
    """Build a data set from numpy arrays (bring your own data).

    Args:
        features: modality name -> ``(N, d)`` or ``(N, T, d)`` array.
        labels: ``(N,)``/``(N, k)`` regression values, ``(N,)`` class indices, or ``(N, k)`` 0/1 for multilabel.
        label_kind: ``"regression"``, ``"categorical"`` or ``"multilabel"``; by default it follows the labels'
            dtype: integer (or bool) ``(N,)`` labels are classes, integer ``(N, k)`` 0/1 labels multilabel targets,
            float labels regression values. Declare it for anything else (e.g. integer scores as a regression).
        num_classes: number of classes (categorical; default: ``max(labels) + 1``).
        present, steps, label_present: optional masks (see the module docstring); NaN labels count as missing.
        split: per-sample split names (array of str, one per sample), or split name -> index array (disjoint;
            samples in no split are left out); default: all in ``"train"``.
        nan_as_missing: mark samples with NaN features missing for that modality instead of raising.
        ids: optional ``(N,)`` sample ids (strings).
        groups: optional ``(N,)`` group of each sample (the speaker, or the video a segment comes from): where the
            data have no validation split, training holds one out of the training split by whole groups
            (``data.valid_fraction``), so that model selection sees new speakers as the test split does.
        label_range: optional declared ``(low, high)`` of regression labels: labels outside are rejected, and
            ``(-3, 3)`` of one output is CMU-MOSI's sentiment, which evaluation scores with the field's metrics
            (Acc-2 both ways, Acc-7, F1) as well (:func:`declare_label`).
        label_names: optional names of the label's outputs (regression, multilabel) or classes (categorical).

    Raises:
        DataError: naming the modality or key and what was expected (wrong shapes or lengths, masks of unknown
            modalities, overlapping splits, class labels that are not integers, ...).
    """
    features = {m: np.asarray(v) for m, v in features.items()}
    n, present, steps = _check_features(features, present, steps)
    if labels is None and label_present is not None:
        raise DataError("label_present: given without labels")
    label_spec = y = None
    if labels is not None:
        label_spec, y, label_present = _labels(labels, label_kind, num_classes, label_present, n)
    mods = tuple(ModalitySpec(m, v.shape[1:]) for m, v in features.items())
    schema = Schema(mods, label_spec, name=name, attribution=attribution)
    feats = {}
    for m, v in features.items():
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, which validation reports with its place
            v = v.astype(np.float32)
        if m in present:  # whatever a missing sample holds is irrelevant: it is stored as zeros
            v = np.where(present[m].reshape((-1,) + (1,) * (v.ndim - 1)), v, np.float32(0))
        feats[m] = v
    assignment = _assignment(split, n)
    if ids is not None and np.asarray(ids).shape != (n,):
        raise DataError(f"ids: shape {np.asarray(ids).shape}, expected ({n},) (one id per sample)")
    if groups is not None and np.asarray(groups).shape != (n,):
        raise DataError(f"groups: shape {np.asarray(groups).shape}, expected ({n},) (one group per sample)")
    full = MultimodalDataset(schema, feats, present, steps, y, label_present, ids=ids, groups=groups)
    data = MultimodalData(schema, {s: full.subset(idx) for s, idx in assignment.items()})
    for s, ds in data.splits.items():
        ds.split = s
    if label_range is not None or label_names is not None:
        data = declare_label(data, label_range, label_names)
    return data.validate_values(nan_as_missing)


def declare_label(data: MultimodalData, label_range=None, label_names=None) -> MultimodalData:
    """``data`` (changed in place, and returned) with its label's declared range ``(low, high)`` (regression labels
    only) and the names of its outputs or classes, in its schema and every split's; each split's labels are checked
    against the range (a :class:`DataError` naming the split, the first sample out of it and its value)."""
    lab = data.schema.label
    if lab is None:
        raise DataError(f"{data.source or 'data'}: label_range or label_names given, but the data have no label")
    low, high = lab.low, lab.high
    if label_range is not None:
        if lab.kind != "regression":
            raise DataError(f"label_range: the label is {lab.kind}; a range applies to regression labels only")
        try:
            values = tuple(float(v) for v in label_range)
        except (TypeError, ValueError):
            values = ()
        if len(values) != 2 or not np.isfinite(values).all() or values[0] >= values[1]:
            raise DataError(f"label_range = {label_range!r}: expected (low, high), two finite numbers, low < high")
        low, high = values
    names = lab.names if label_names is None else tuple(str(n) for n in label_names)
    if names is not None and len(names) != lab.dim:
        raise DataError(
            f"label_names: {len(names)} names; expected {lab.dim}, one per "
            + ("class" if lab.kind == "categorical" else "output")
        )
    data.adopt(replace(data.schema, label=LabelSpec(lab.kind, lab.dim, names, low, high)))
    for ds in data.splits.values():
        ds.validate_labels()
    return data


def _check_features(features: dict, present, steps) -> tuple[int, dict, dict]:
    """The number of samples and the checked ``present`` and ``steps`` masks of :func:`from_arrays`' features."""
    if not features:
        raise DataError("from_arrays: expected at least one modality")
    n = next(iter(features.values())).shape[0]
    for m, v in features.items():
        if v.ndim not in (2, 3) or v.shape[0] != n:
            raise DataError(f"modality {m!r}: shape {v.shape}, expected ({n}, d) or ({n}, T, d)")
    for key, masks in (("present", present), ("steps", steps)):
        unknown = sorted(set(masks or {}) - set(features))
        if unknown:
            raise DataError(f"{key}: masks for unknown modalities {unknown}; the features have {list(features)}")
    present = {m: _check_mask(f"modality {m!r}", "present", p, (n,)) for m, p in (present or {}).items()}
    for m in steps or {}:
        if features[m].ndim != 3:
            raise DataError(
                f"steps: mask for modality {m!r}, whose features {features[m].shape} are not a sequence; "
                "expected steps masks for (N, T, d) modalities only"
            )
    steps = {m: _check_mask(f"modality {m!r}", "steps", s, features[m].shape[:2]) for m, s in (steps or {}).items()}
    return n, present, steps


def _labels(labels, label_kind, num_classes, label_present, n: int) -> tuple[LabelSpec, np.ndarray, np.ndarray]:
    """The label spec, the stored labels (zero where missing) and their presence mask for :func:`from_arrays`."""
    y = np.asarray(labels)
    if y.ndim not in (1, 2) or y.shape[0] != n:
        raise DataError(f"labels: shape {y.shape}, expected ({n},) or ({n}, k) (one row per sample)")
    kind = _infer_label_kind(y) if label_kind is None else label_kind
    if kind not in LABEL_KINDS:
        raise DataError(f"label_kind = {kind!r}: expected one of {LABEL_KINDS}")
    if y.dtype.kind not in "iubf":
        raise DataError(f"labels: dtype {y.dtype}; expected integer class indices or float values")
    cols = 1 if y.ndim == 1 else y.shape[1]  # not reshape(n, -1), which fails for n = 0
    nan = np.isnan(y.astype(float)).reshape(n, cols).any(axis=1)
    lp = ~nan if label_present is None else _check_mask("labels", "label_present", label_present, (n,)) & ~nan
    if kind != "categorical":
        y = np.where(np.isnan(y.astype(float)), 0, y).astype(np.float32).reshape(n, cols)
        return LabelSpec(kind, y.shape[1]), y, lp
    if y.ndim == 2 and y.shape[1] != 1:
        raise DataError(f"labels: shape {y.shape}; categorical labels are class indices of shape ({n},)")
    y = y.reshape(n)
    v = np.where(nan, 0, y).astype(float)
    fractional = lp & ~(np.isfinite(v) & (v == np.round(v)))
    if fractional.any():
        i = np.nonzero(fractional)[0][0]
        raise DataError(
            f"labels: value {y[i]} at sample {i} is not a class index; expected integer class "
            "indices for label_kind='categorical' (or label_kind='regression')"
        )
    with np.errstate(invalid="ignore"):
        y = np.where(nan | ~lp, 0, y).astype(np.int64)
    k = int(num_classes if num_classes is not None else (y.max() + 1 if n else 1))
    return LabelSpec("categorical", k), y, lp
