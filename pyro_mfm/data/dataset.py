"""The data set type: M named modalities with per-sample presence masks, labels with a presence mask, named splits.

Storage conventions (the same in memory and in the native HDF5 file):

* ``features[m]``: ``(N, d)`` or ``(N, T, d)`` float32. Entries of a missing modality are **zero**, never NaN
  (Pyro's masked likelihoods give NaN gradients through NaN values).
* ``present[m]``: ``(N,)`` bool, whether modality ``m`` was observed for the sample.
* ``steps[m]`` (sequences only): ``(N, T)`` bool, which steps are real; padding steps are zero and ``False``.
* ``labels``: ``(N, k)`` float32 (regression, multilabel) or ``(N,)`` int64 (categorical); zero where missing.
* ``label_present``: ``(N,)`` bool.
* ``ids`` (optional): ``(N,)`` sample ids (strings), e.g. ``"video[3]"`` or ``"video$_$3"`` (MMSA's form) for
  segment 3 of a video.
* ``groups`` (optional): ``(N,)`` group names (strings), e.g. the speaker or the video a segment comes from: a
  validation split held out of the training split (:meth:`MultimodalData.hold_out`) takes whole groups. Without
  them, ids of the form ``"video[3]"`` or ``"video$_$3"`` group by the video.
* ``imputed`` (optional, a file written by ``impute``): ``imputed[m]`` ``(N,)`` bool, the samples whose features of
  ``m`` are a model's imputation, not data; ``imputed_std[m]`` their posterior standard deviation (zero where
  observed); the data set's ``imputation`` says from what, by which checkpoint.

Arrays may be numpy arrays or any array-like with numpy-style indexing by a sorted index array (``h5py.Dataset``),
so a file larger than memory is read batch by batch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from .batch import Batch
from .schema import DataError, Schema

# Largest magnitude of a feature or regression label: the likelihoods work in float32 and square the distance of a
# value to its predicted mean, which overflows beyond about 1.8e19.
MAX_MAGNITUDE = 1e18


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
        groups=None,
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
            m: np.asarray(present[m], dtype=bool) if m in present else np.ones(self.n, dtype=bool) for m in schema.names
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
        self.groups = None if groups is None else np.asarray(groups, dtype=str)
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
                raise DataError(
                    f"{self._where(key='label_present')}: shape {self.label_present.shape}, expected ({self.n},)"
                )
        if self.ids is not None and self.ids.shape != (self.n,):
            raise DataError(f"{self._where(key='ids')}: shape {self.ids.shape}, expected ({self.n},)")
        if self.groups is not None and self.groups.shape != (self.n,):
            raise DataError(f"{self._where(key='groups')}: shape {self.groups.shape}, expected ({self.n},)")

    def validate_values(self, nan_as_missing: bool = False) -> MultimodalDataset:
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
                    + (
                        ""
                        if kind == "inf"
                        else " (pass nan_as_missing=True / --nan-as-missing to mark those samples missing)"
                    )
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

    def validate_labels(self) -> MultimodalDataset:
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
                expected = (
                    f"finite values in [{lab.low}, {lab.high}]"
                    if lab.low is not None or lab.high is not None
                    else f"finite values up to {MAX_MAGNITUDE:.0e} in magnitude (rescale the label)"
                )
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
        absent = {m: ~p for m, p in present.items()}  # what the data lack, as opposed to what a subset hides
        batch = Batch(x, present, steps, y, y_present, torch.as_tensor(idx), absent)
        return batch if device is None else batch.to(device)

    def loader(
        self, batch_size: int, shuffle: bool = False, seed: int | None = None, device=None, drop_last: bool = False
    ) -> Iterator[Batch]:
        """Iterate over batches (a fresh permutation per call when ``shuffle``; reproducible with ``seed``)."""
        if shuffle:
            g = np.random.default_rng(seed)
            order = g.permutation(self.n)
        else:
            order = np.arange(self.n)
        stop = self.n - (self.n % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size], device)

    def _with_imputed(self, other: MultimodalDataset, idx=None) -> MultimodalDataset:
        if self.imputed is not None:
            take = (lambda a: np.asarray(a)) if idx is None else (lambda a: _sorted_read(a, idx))  # noqa: E731
            other.imputed = {m: take(v) for m, v in self.imputed.items()}
            other.imputed_std = {m: take(v) for m, v in self.imputed_std.items()}
            other.imputation = self.imputation
        return other

    def to_memory(self) -> MultimodalDataset:
        """A copy with every array read into memory."""
        return self._with_imputed(
            MultimodalDataset(
                self.schema,
                {m: np.asarray(self.features[m]) for m in self.schema.names},
                {m: self.present[m].copy() for m in self.schema.names},
                {m: s.copy() for m, s in self.steps.items()},
                None if self.labels is None else np.asarray(self.labels),
                None if self.label_present is None else self.label_present.copy(),
                source=self.source,
                split=self.split,
                ids=None if self.ids is None else self.ids.copy(),
                groups=None if self.groups is None else self.groups.copy(),
            )
        )

    def subset(self, index) -> MultimodalDataset:
        """An in-memory data set of the samples ``index``."""
        idx = np.sort(np.asarray(index, dtype=np.int64))
        return self._with_imputed(
            MultimodalDataset(
                self.schema,
                {m: _sorted_read(self.features[m], idx) for m in self.schema.names},
                {m: self.present[m][idx] for m in self.schema.names},
                {m: s[idx] for m, s in self.steps.items()},
                None if self.labels is None else _sorted_read(self.labels, idx),
                None if self.label_present is None else self.label_present[idx],
                source=self.source,
                split=self.split,
                ids=None if self.ids is None else self.ids[idx],
                groups=None if self.groups is None else self.groups[idx],
            ),
            idx,
        )

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

    def adopt(self, schema: Schema, source=None) -> MultimodalData:
        """This data set (changed in place, and returned) with ``schema``, and ``source`` where given, in it and in
        every split."""
        self.schema = schema
        for ds in self.splits.values():
            ds.schema = schema
            if source is not None:
                ds.source = str(source)
        if source is not None:
            self.source = str(source)
        return self

    def __enter__(self) -> MultimodalData:
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

    def validate_values(self, nan_as_missing: bool = False) -> MultimodalData:
        for ds in self.splits.values():
            ds.validate_values(nan_as_missing)
        return self

    def hold_out(self, fraction: float, train: str = "train", valid: str = "valid", seed: int = 0) -> MultimodalData:
        """These data with a ``valid`` split of ``fraction`` of the ``train`` split drawn at random (``seed``), and the
        rest as ``train``: whole groups where the data name them (:func:`sample_groups`: speakers or videos; that
        fraction of the groups, scikit-learn's ``GroupShuffleSplit``), else single samples, stratified by class for
        class labels (``train_test_split``, as scikit-learn's own early stopping draws its validation samples).
        The data as they are where ``valid`` already has samples, ``fraction`` is 0, or the training split has
        fewer than two samples (or groups). The two splits are read into memory."""
        from sklearn.model_selection import GroupShuffleSplit, train_test_split

        ds = self[train]
        if fraction <= 0 or ds.n < 2 or (valid in self.splits and len(self.splits[valid]) > 0):
            return self
        index, groups = np.arange(ds.n), held_out_groups(ds)
        if groups is not None:
            if len(np.unique(groups)) < 2:
                return self
            kept, held = next(GroupShuffleSplit(1, test_size=fraction, random_state=seed).split(index, groups=groups))
        else:
            strata = None
            if self.schema.label is not None and self.schema.label.kind == "categorical":
                strata = np.where(ds.label_present, np.asarray(ds.labels), -1)  # unlabelled samples a stratum too
            try:
                kept, held = train_test_split(index, test_size=fraction, random_state=seed, stratify=strata)
            except ValueError:  # a class of one sample, or fewer samples to hold out than classes: not stratified
                kept, held = train_test_split(index, test_size=fraction, random_state=seed)
        splits = dict(self.splits)
        splits[train], splits[valid] = ds.subset(kept), ds.subset(held)
        splits[valid].split = valid
        return replace(self, splits=splits)

    def __repr__(self) -> str:
        body = "\n  ".join(repr(ds) for ds in self.splits.values())
        return f"MultimodalData({self.schema.name or self.source})\n  {body}"


# a segment's id that names its video: "video[3]" (CMU-MOSI's computational sequences) or "video$_$3" (MMSA's files)
_GROUPED_ID = re.compile(r"^(.+?)(?:\[[^\[\]]*\]|\$_\$[^$]*)$")


def sample_groups(ds: MultimodalDataset) -> np.ndarray:
    """Each sample's group: ``ds.groups`` where given; else, where every id has the form ``"video[3]"`` or
    ``"video$_$3"``, the part before the bracket or the ``$_$`` (segments of one video); else each sample a group of
    its own (its index)."""
    if ds.groups is not None:
        return ds.groups
    if ds.ids is not None and ds.n:
        found = [_GROUPED_ID.match(str(i)) for i in ds.ids]
        if all(found):
            return np.array([f.group(1) for f in found])
    return np.arange(ds.n).astype(str)


def held_out_groups(ds: MultimodalDataset) -> np.ndarray | None:
    """The groups :meth:`MultimodalData.hold_out` keeps whole (:func:`sample_groups`, where some group holds more
    than one sample); None where every sample is a group of its own and single samples are drawn."""
    groups = sample_groups(ds)
    return groups if len(np.unique(groups)) < ds.n else None


def __getattr__(name: str):
    # from_arrays lives in pyro_mfm.data.build (which imports this module); it stays importable from here
    if name == "from_arrays":
        from .build import from_arrays

        return from_arrays
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
