"""The data set type: M named modalities with per-sample presence masks, labels with a presence mask, named splits.

Storage conventions (the same in memory and in the native HDF5 file):

* ``features[m]``: ``(N, d)`` or ``(N, T, d)`` float32. Entries of a missing modality are **zero**, never NaN
  (Pyro's masked likelihoods give NaN gradients through NaN values).
* ``present[m]``: ``(N,)`` bool, whether modality ``m`` was observed for the sample.
* ``steps[m]`` (sequences only): ``(N, T)`` bool, which steps are real; padding steps are zero and ``False``.
* ``labels``: ``(N, k)`` float32 (regression, multilabel) or ``(N,)`` int64 (categorical); zero where missing.
* ``label_present``: ``(N,)`` bool.
* ``ids`` (optional): ``(N,)`` sample ids (strings), e.g. ``"video[3]"`` for segment 3 of a video.
* ``imputed`` (optional, a file written by ``impute``): ``imputed[m]`` ``(N,)`` bool, the samples whose features of
  ``m`` are a model's imputation, not data; ``imputed_std[m]`` their posterior standard deviation (zero where
  observed); the data set's ``imputation`` says from what, by which checkpoint.

Arrays may be numpy arrays or any array-like with numpy-style indexing by a sorted index array (``h5py.Dataset``),
so a file larger than memory is read batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Mapping

import numpy as np
import torch

from .schema import DataError, LabelSpec, ModalitySpec, Schema

# Largest magnitude of a feature or regression label: the likelihoods work in float32 and square the distance of a
# value to its predicted mean, which overflows beyond about 1.8e19.
MAX_MAGNITUDE = 1e18


@dataclass
class Batch:
    """A minibatch as tensors. ``x[m]`` is zero where ``present[m]`` is False."""

    x: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    steps: dict[str, torch.Tensor]
    y: torch.Tensor | None
    y_present: torch.Tensor | None
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def map(self, fn) -> "Batch":
        """The batch with ``fn`` applied to every tensor (``None`` labels stay ``None``), e.g. a device move or a
        slice of rows."""
        each = lambda d: {k: fn(v) for k, v in d.items()}  # noqa: E731
        return replace(self, x=each(self.x), present=each(self.present), steps=each(self.steps),
                       y=None if self.y is None else fn(self.y),
                       y_present=None if self.y_present is None else fn(self.y_present), index=fn(self.index))

    def to(self, device) -> "Batch":
        return self.map(lambda t: t.to(device))

    def observe_only(self, observed) -> "Batch":
        """The same batch with every modality outside ``observed`` marked missing (and zeroed)."""
        present = {}
        x = {}
        for m, p in self.present.items():
            if m in observed:
                present[m], x[m] = p, self.x[m]
            else:
                present[m], x[m] = torch.zeros_like(p), torch.zeros_like(self.x[m])
        return replace(self, x=x, present=present)

    def with_present(self, present: dict) -> "Batch":
        """The same batch observing modality m only where ``present[m]`` (a subset of ``self.present[m]``) is True;
        the hidden entries are zeroed."""
        x = {m: v * present[m].reshape((-1,) + (1,) * (v.dim() - 1)).to(v.dtype) for m, v in self.x.items()}
        return replace(self, x=x, present=dict(present))

    def without_labels(self) -> "Batch":
        return replace(self, y=None, y_present=None)


def _sorted_read(arr, idx: np.ndarray) -> np.ndarray:
    """``arr[idx]`` for any array-like that only supports increasing index arrays (h5py)."""
    if isinstance(arr, np.ndarray):
        return arr[idx]
    order = np.argsort(idx, kind="stable")
    uniq, inverse = np.unique(idx[order], return_inverse=True)
    out = np.asarray(arr[uniq])[inverse]
    result = np.empty_like(out)
    result[order] = out
    return result


class MultimodalDataset(torch.utils.data.Dataset):
    """One split of a multimodal data set.

    Indexing with an array of sample indices returns a :class:`Batch`, so that
    ``DataLoader(ds, sampler=BatchSampler(...), batch_size=None)`` reads whole batches at once; :meth:`loader`
    does that for you.
    """

    def __init__(
        self,
        schema: Schema,
        features: Mapping[str, object],
        present: Mapping[str, object] | None = None,
        steps: Mapping[str, object] | None = None,
        labels=None,
        label_present=None,
        *,
        source: str = "<memory>",
        split: str = "",
        validate: bool = True,
        ids=None,
    ):
        self.schema = schema
        self.source = source
        self.split = split
        missing = [m for m in schema.names if m not in features]
        if missing:
            raise DataError(f"{self._where()}: no features for modalities {missing}")
        self.features = {m: features[m] for m in schema.names}
        self.n = int(self.features[schema.names[0]].shape[0])
        present = dict(present or {})
        self.present = {
            m: np.asarray(present[m], dtype=bool) if m in present else np.ones(self.n, dtype=bool)
            for m in schema.names
        }
        steps = dict(steps or {})
        self.steps = {}
        for spec in schema.modalities:
            if spec.is_sequence:
                s = steps.get(spec.name)
                self.steps[spec.name] = (
                    np.ones((self.n, spec.steps), dtype=bool) if s is None else np.asarray(s, dtype=bool)
                )
        if schema.label is None:
            self.labels, self.label_present = None, None
        else:
            if labels is None:
                shape = (self.n,) + schema.label.shape
                dtype = np.int64 if schema.label.kind == "categorical" else np.float32
                labels, label_present = np.zeros(shape, dtype), np.zeros(self.n, dtype=bool)
            self.labels = labels
            self.label_present = (
                np.ones(self.n, dtype=bool) if label_present is None else np.asarray(label_present, dtype=bool)
            )
        self.ids = None if ids is None else np.asarray(ids, dtype=str)
        self.imputed: dict[str, np.ndarray] | None = None
        self.imputed_std: dict[str, np.ndarray] | None = None
        self.imputation: dict | None = None  # the file's record of the imputation (see MultimodalData.imputation)
        if validate:
            self.validate_shapes()

    # ------------------------------------------------------------------ checks
    def _where(self, modality: str | None = None, key: str | None = None) -> str:
        parts = [f"file {self.source}"]
        if self.split:
            parts.append(f"split {self.split!r}")
        if modality:
            parts.append(f"modality {modality!r}")
        if key:
            parts.append(f"key {key!r}")
        return ", ".join(parts)

    def validate_shapes(self) -> None:
        for spec in self.schema.modalities:
            m = spec.name
            shape = tuple(self.features[m].shape)
            if shape != (self.n,) + spec.shape:
                raise DataError(
                    f"{self._where(m, 'features')}: shape {shape}, expected {(self.n,) + spec.shape} "
                    f"(N={self.n} samples, as in modality {self.schema.names[0]!r})"
                )
            if self.present[m].shape != (self.n,):
                raise DataError(f"{self._where(m, 'present')}: shape {self.present[m].shape}, expected ({self.n},)")
            if spec.is_sequence and self.steps[m].shape != (self.n, spec.steps):
                raise DataError(
                    f"{self._where(m, 'steps')}: shape {self.steps[m].shape}, expected ({self.n}, {spec.steps})"
                )
        if self.schema.label is not None:
            expected = (self.n,) + self.schema.label.shape
            if tuple(self.labels.shape) != expected:
                raise DataError(f"{self._where(key='labels')}: shape {tuple(self.labels.shape)}, expected {expected}")
            if self.label_present.shape != (self.n,):
                raise DataError(f"{self._where(key='label_present')}: shape {self.label_present.shape}, expected ({self.n},)")
        if self.ids is not None and self.ids.shape != (self.n,):
            raise DataError(f"{self._where(key='ids')}: shape {self.ids.shape}, expected ({self.n},)")

    def validate_values(self, nan_as_missing: bool = False) -> "MultimodalDataset":
        """Check features are finite and labels are in range (reads everything once).

        With ``nan_as_missing``, a sample whose modality holds any NaN is marked missing for that modality
        (its features zeroed) instead of raising; infinities always raise.
        """
        self._validate_features(nan_as_missing)
        return self.validate_labels()

    def _validate_features(self, nan_as_missing: bool) -> None:
        for spec in self.schema.modalities:
            m = spec.name
            x = np.asarray(self.features[m])
            bad = ~np.isfinite(x)
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0])
                if nan_as_missing and not np.isinf(x).any():
                    x = np.where(bad, 0, x).astype(np.float32)
                    self.features[m] = x
                    self.present[m] = self.present[m].copy()
                    self.present[m][rows] = False
                    continue
                kind = "inf" if np.isinf(x).any() else "NaN"
                raise DataError(
                    f"{self._where(m, 'features')}: {bad.sum()} {kind} value(s) in {len(rows)} sample(s), first at "
                    f"sample {rows[0]}; expected finite features"
                    + ("" if kind == "inf" else " (pass nan_as_missing=True / --nan-as-missing to mark those samples missing)")
                )
            peak = np.abs(np.where(self._observed_mask(m, x.shape), x, 0)) if x.size else x
            if x.size and peak.max() > MAX_MAGNITUDE:
                where = np.unravel_index(int(peak.argmax()), peak.shape)
                raise DataError(
                    f"{self._where(m, 'features')}: sample {where[0]}, feature {where[-1]} reaches {x[where]:.3g} in "
                    f"magnitude; expected magnitudes up to {MAX_MAGNITUDE:.0e}, which the likelihood can square in "
                    "float32 (rescale the features)"
                )

    def _observed_mask(self, m: str, shape) -> np.ndarray:
        """Where the features of modality ``m`` (an array of ``shape``) hold recorded values."""
        mask = self.steps[m] if m in self.steps else self.present[m]
        return np.asarray(mask, bool).reshape(mask.shape + (1,) * (len(shape) - mask.ndim))

    def validate_labels(self) -> "MultimodalDataset":
        """Check observed labels are in the declared range (labels only; cheap for a lazily loaded file)."""
        lab = self.schema.label
        if lab is not None:
            y = np.asarray(self.labels)
            obs = self.label_present
            if lab.kind == "categorical":
                bad = obs & ((y < 0) | (y >= lab.dim))
                expected = f"class indices in [0, {lab.dim - 1}]"
            elif lab.kind == "multilabel":
                bad = obs & ~np.all((y == 0) | (y == 1), axis=-1)
                expected = "0/1 values"
            else:
                ok = np.isfinite(y) & (np.abs(np.where(np.isfinite(y), y, 0)) <= MAX_MAGNITUDE)
                if lab.low is not None:
                    ok &= y >= lab.low
                if lab.high is not None:
                    ok &= y <= lab.high
                bad = obs & ~ok.all(axis=-1)
                expected = (f"finite values in [{lab.low}, {lab.high}]" if lab.low is not None or lab.high is not None
                            else f"finite values up to {MAX_MAGNITUDE:.0e} in magnitude (rescale the label)")
            if bad.any():
                rows = np.nonzero(bad)[0]
                raise DataError(
                    f"{self._where(key='labels')}: {len(rows)} label(s) out of range, first at sample {rows[0]} "
                    f"(value {y[rows[0]]}); expected {expected}"
                )
        return self

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> Batch:
        return self.batch(index)

    def batch(self, index, device=None) -> Batch:
        """Samples ``index`` (int, slice or index array) as a :class:`Batch` of tensors on ``device``."""
        idx = np.arange(self.n)[index] if isinstance(index, slice) else np.atleast_1d(np.asarray(index, dtype=np.int64))
        x, present, steps = {}, {}, {}
        for m in self.schema.names:
            present[m] = torch.as_tensor(self.present[m][idx])
            xm = torch.as_tensor(_sorted_read(self.features[m], idx), dtype=torch.float32)
            # Missing modalities are zero by convention; enforce it so arrays from users never leak values.
            shape = (-1,) + (1,) * (xm.dim() - 1)
            x[m] = xm * present[m].reshape(shape)
            if m in self.steps:
                steps[m] = torch.as_tensor(self.steps[m][idx]) & present[m][:, None]
        y = y_present = None
        if self.labels is not None:
            y_present = torch.as_tensor(self.label_present[idx])
            y = torch.as_tensor(_sorted_read(self.labels, idx))
            y = y.long() if self.schema.label.kind == "categorical" else y.float()
            y = torch.where(y_present.reshape((-1,) + (1,) * (y.dim() - 1)), y, torch.zeros_like(y))
        batch = Batch(x, present, steps, y, y_present, torch.as_tensor(idx))
        return batch if device is None else batch.to(device)

    def loader(self, batch_size: int, shuffle: bool = False, seed: int | None = None, device=None,
               drop_last: bool = False) -> Iterator[Batch]:
        """Iterate over batches (a fresh permutation per call when ``shuffle``; reproducible with ``seed``)."""
        if shuffle:
            g = np.random.default_rng(seed)
            order = g.permutation(self.n)
        else:
            order = np.arange(self.n)
        stop = self.n - (self.n % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start:start + batch_size], device)

    def _with_imputed(self, other: "MultimodalDataset", idx=None) -> "MultimodalDataset":
        if self.imputed is not None:
            take = (lambda a: np.asarray(a)) if idx is None else (lambda a: _sorted_read(a, idx))  # noqa: E731
            other.imputed = {m: take(v) for m, v in self.imputed.items()}
            other.imputed_std = {m: take(v) for m, v in self.imputed_std.items()}
            other.imputation = self.imputation
        return other

    def to_memory(self) -> "MultimodalDataset":
        """A copy with every array read into memory."""
        return self._with_imputed(MultimodalDataset(
            self.schema, {m: np.asarray(self.features[m]) for m in self.schema.names},
            {m: self.present[m].copy() for m in self.schema.names},
            {m: s.copy() for m, s in self.steps.items()},
            None if self.labels is None else np.asarray(self.labels),
            None if self.label_present is None else self.label_present.copy(),
            source=self.source, split=self.split, ids=None if self.ids is None else self.ids.copy(),
        ))

    def subset(self, index) -> "MultimodalDataset":
        """An in-memory data set of the samples ``index``."""
        idx = np.sort(np.asarray(index, dtype=np.int64))
        return self._with_imputed(MultimodalDataset(
            self.schema, {m: _sorted_read(self.features[m], idx) for m in self.schema.names},
            {m: self.present[m][idx] for m in self.schema.names},
            {m: s[idx] for m, s in self.steps.items()},
            None if self.labels is None else _sorted_read(self.labels, idx),
            None if self.label_present is None else self.label_present[idx],
            source=self.source, split=self.split, ids=None if self.ids is None else self.ids[idx],
        ), idx)

    def __repr__(self) -> str:
        mods = ", ".join(f"{s.name}{list(s.shape)}:{self.present[s.name].mean():.0%}" for s in self.schema.modalities)
        return f"MultimodalDataset({self.split or 'unnamed'}: N={self.n}; {mods}; label={self.schema.label})"


@dataclass
class MultimodalData:
    """A data set with named splits (``train``, ``valid``, ``test`` by convention) sharing one schema."""

    schema: Schema
    splits: dict[str, MultimodalDataset] = field(default_factory=dict)
    source: str = "<memory>"
    handle: object = field(default=None, repr=False, compare=False)
    """An open file the splits read from (a lazily loaded native file), closed by :meth:`close`."""
    imputation: dict | None = None
    """For a file of imputations (``pyro-mfm impute``): ``{"observed": [...], "imputed": [...], "checkpoint": ...,
    "checkpoint_sha256": ..., "source": ..., "split": ..., "num_samples": ..., "seed": ...}``; each split's
    ``imputed`` masks say which samples hold imputed values."""

    def close(self) -> None:
        """Close the file behind a lazily loaded data set (no-op for data in memory)."""
        if self.handle is not None:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> "MultimodalData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, split: str) -> MultimodalDataset:
        try:
            return self.splits[split]
        except KeyError:
            raise DataError(f"file {self.source}: no split {split!r}; the data set has {list(self.splits)}") from None

    def __contains__(self, split: str) -> bool:
        return split in self.splits

    def __iter__(self):
        return iter(self.splits)

    def validate_values(self, nan_as_missing: bool = False) -> "MultimodalData":
        for ds in self.splits.values():
            ds.validate_values(nan_as_missing)
        return self

    def __repr__(self) -> str:
        body = "\n  ".join(repr(ds) for ds in self.splits.values())
        return f"MultimodalData({self.schema.name or self.source})\n  {body}"


LABEL_KINDS = ("regression", "categorical", "multilabel")


def _infer_label_kind(y: np.ndarray) -> str:
    """The label kind that integer, bool and float label arrays stand for (see :func:`from_arrays`)."""
    if y.dtype.kind in "iub":
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
            return "categorical"
        if y.ndim == 2 and np.isin(y, (0, 1)).all():
            return "multilabel"
        raise DataError(f"labels: integer array of shape {y.shape} is neither class indices (N,) nor 0/1 multilabel "
                        "targets (N, k); declare label_kind='regression' (or 'categorical', 'multilabel')")
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
                raise DataError(f"split {name!r}: index array of dtype {idx.dtype} and shape {idx.shape}; expected a "
                                f"1-d array of integer sample indices in [0, {n - 1}]")
            bad = (idx < 0) | (idx >= n)
            if bad.any():
                raise DataError(f"split {name!r}: sample index {idx[bad][0]} out of range; expected indices in "
                                f"[0, {n - 1}] (N={n} samples)")
            uniq, counts = np.unique(idx, return_counts=True)
            if (counts > 1).any():
                raise DataError(f"split {name!r}: sample {uniq[counts > 1][0]} listed {counts.max()} times; expected "
                                "each sample once")
            taken = owner[uniq] >= 0
            if taken.any():
                other = list(split)[owner[uniq[taken][0]]]
                raise DataError(f"split {name!r}: {taken.sum()} sample(s) also in split {other!r}, first sample "
                                f"{uniq[taken][0]}; expected disjoint splits")
            owner[uniq] = i
            out[name] = uniq.astype(np.int64)
        return out
    names = np.asarray(split)
    if names.shape != (n,):
        raise DataError(f"split: array of shape {names.shape}, expected ({n},): one split name per sample (or a "
                        "mapping split name -> index array)")
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

    Raises:
        DataError: naming the modality or key and what was expected (wrong shapes or lengths, masks of unknown
            modalities, overlapping splits, class labels that are not integers, ...).
    """
    features = {m: np.asarray(v) for m, v in features.items()}
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
            raise DataError(f"steps: mask for modality {m!r}, whose features {features[m].shape} are not a sequence; "
                            "expected steps masks for (N, T, d) modalities only")
    steps = {m: _check_mask(f"modality {m!r}", "steps", s, features[m].shape[:2]) for m, s in (steps or {}).items()}
    mods = tuple(ModalitySpec(m, v.shape[1:]) for m, v in features.items())
    label_spec = None
    y = None
    if labels is None and label_present is not None:
        raise DataError("label_present: given without labels")
    if labels is not None:
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
        if kind == "categorical":
            if y.ndim == 2 and y.shape[1] != 1:
                raise DataError(f"labels: shape {y.shape}; categorical labels are class indices of shape ({n},)")
            y = y.reshape(n)
            v = np.where(nan, 0, y).astype(float)
            fractional = lp & ~(np.isfinite(v) & (v == np.round(v)))
            if fractional.any():
                i = np.nonzero(fractional)[0][0]
                raise DataError(f"labels: value {y[i]} at sample {i} is not a class index; expected integer class "
                                "indices for label_kind='categorical' (or label_kind='regression')")
            with np.errstate(invalid="ignore"):
                y = np.where(nan | ~lp, 0, y).astype(np.int64)
            k = int(num_classes if num_classes is not None else (y.max() + 1 if n else 1))
            label_spec = LabelSpec("categorical", k)
        else:
            y = np.where(np.isnan(y.astype(float)), 0, y).astype(np.float32).reshape(n, cols)
            label_spec = LabelSpec(kind, y.shape[1])
        label_present = lp
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
    full = MultimodalDataset(schema, feats, present, steps, y, label_present, ids=ids)
    data = MultimodalData(schema, {s: full.subset(idx) for s, idx in assignment.items()})
    for s, ds in data.splits.items():
        ds.split = s
    return data.validate_values(nan_as_missing)
