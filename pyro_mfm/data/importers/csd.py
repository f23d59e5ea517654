"""CMU-MultimodalSDK computational sequences (``.csd``) and their alignment to labelled segments.

A ``.csd`` file is HDF5::

    /<root name>/data/<video id>/features    (n_steps, d) numbers (or strings, for word sequences)
    /<root name>/data/<video id>/intervals   (n_steps, 2) start and end time in seconds
    /<root name>/metadata/<key>              one string each (JSON-encoded by the SDK)

Alignment (:func:`align_csd`): a labels ``.csd`` defines the samples, one per labelled segment, with id
``"{video}[{i}]"`` (``i`` = row of the segment in the labels file). Each feature ``.csd`` is cut to the segment's
interval, keeping the steps whose intervals overlap it (in time order). A sequence modality keeps the last ``T`` of
them, front-padded with zero steps marked False in the step mask; a vector modality is their mean. A segment with
no overlapping step (or a video absent from the feature file) has that modality missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..dataset import MultimodalData, MultimodalDataset
from ..schema import DataError, LabelSpec, ModalitySpec, Schema
from .cmu_mosi_folds import CMU_MOSI_FOLDS

FOLDS = {"cmu_mosi": CMU_MOSI_FOLDS}


@dataclass
class ComputationalSequence:
    """The content of one ``.csd`` file: ``data[video] = (features (n, d), intervals (n, 2))``."""

    path: Path
    root: str
    data: dict[str, tuple[np.ndarray, np.ndarray]]
    metadata: dict[str, object]

    @property
    def dim(self) -> int:
        return next(iter(self.data.values()))[0].shape[1]


def _decode(value):
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size == 1 else value.tolist()
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_csd(path) -> ComputationalSequence:
    """Read a computational sequence (all videos into memory).

    Raises:
        DataError: missing/corrupt file, or a layout other than the SDK's (naming the file, video and key).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path}: does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"file {path}: not a readable HDF5 file (corrupt or truncated?): {e}") from None
    with f:
        roots = [k for k in f.keys() if isinstance(f[k], h5py.Group) and "data" in f[k]]
        if len(roots) != 1:
            raise DataError(
                f"file {path}: expected one root group holding 'data' and 'metadata' (a CMU-MultimodalSDK .csd), "
                f"found keys {list(f.keys())}"
            )
        root = roots[0]
        meta = {}
        if "metadata" in f[root]:
            gmeta = f[root]["metadata"]
            meta = {k: _decode(gmeta[k][()]) for k in gmeta if isinstance(gmeta[k], h5py.Dataset)}
            meta.update({k: _decode(v) for k, v in gmeta.attrs.items()})
        data, dim = {}, None
        try:
            for video, g in f[root]["data"].items():
                where = f"file {path}, video {video!r}"
                for key in ("features", "intervals"):
                    if key not in g:
                        raise DataError(f"{where}: missing key {key!r} (expected {root}/data/{video}/{key})")
                x, iv = g["features"][()], g["intervals"][()]
                if iv.ndim != 2 or iv.shape[1] != 2 or iv.dtype.kind not in "fiu":
                    raise DataError(f"{where}, key 'intervals': shape {iv.shape} {iv.dtype}, expected (n, 2) numbers")
                if x.ndim == 1:
                    x = x[:, None]
                if x.ndim != 2 or x.shape[0] != iv.shape[0]:
                    raise DataError(
                        f"{where}, key 'features': shape {x.shape}, expected ({iv.shape[0]}, d) as the intervals"
                    )
                if dim is not None and x.shape[1] != dim:
                    raise DataError(f"{where}, key 'features': {x.shape[1]} features per step, expected {dim}")
                dim = x.shape[1]
                data[video] = (x, iv.astype(np.float64))
        except OSError as e:
            raise DataError(f"file {path}: read error (corrupt or truncated file?): {e}") from None
    if not data:
        raise DataError(f"file {path}: no videos under {root}/data")
    return ComputationalSequence(path, root, data, meta)


def write_csd(path, root: str, data: Mapping[str, tuple[np.ndarray, np.ndarray]], metadata: Mapping | None = None):
    """Write a computational sequence in the SDK's layout (metadata values JSON-encoded)."""
    with h5py.File(path, "w") as f:
        g = f.create_group(root)
        gd = g.create_group("data")
        for video, (x, iv) in data.items():
            gv = gd.create_group(video)
            gv.create_dataset("features", data=np.asarray(x))
            gv.create_dataset("intervals", data=np.asarray(iv))
        gm = g.create_group("metadata")
        for k, v in {"root name": root, **dict(metadata or {})}.items():
            gm.create_dataset(k, data=[json.dumps(v)], dtype=h5py.string_dtype("utf-8"))


def _overlapping(iv: np.ndarray, start: float, end: float) -> np.ndarray:
    """Steps whose interval overlaps [start, end) (a zero-length step counts when it falls inside)."""
    s, e = iv[:, 0], iv[:, 1]
    return (s < end) & ((e > start) | ((e == s) & (s >= start)))


def _cut(
    seq: ComputationalSequence, name: str, video: str, start: float, end: float, steps: int | None, nan_as_missing: bool
):
    """One segment of one feature sequence: (features, step mask or None, present)."""
    d = seq.dim
    empty = (np.zeros((steps, d), np.float32), np.zeros(steps, bool)) if steps else (np.zeros(d, np.float32), None)
    if video not in seq.data:
        return empty + (False,)
    x, iv = seq.data[video]
    idx = np.nonzero(_overlapping(iv, start, end))[0]
    idx = idx[np.argsort(iv[idx, 0], kind="stable")]
    rows = x[idx].astype(np.float64)
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        if not nan_as_missing:
            raise DataError(
                f"file {seq.path}, modality {name!r}, video {video!r}, key 'features': non-finite values at step "
                f"{idx[~finite][0]}; expected finite features (pass nan_as_missing=True / --nan-as-missing to drop "
                "such steps)"
            )
        rows = rows[finite]
    if len(rows) == 0:
        return empty + (False,)
    if not steps:
        return rows.mean(axis=0).astype(np.float32), None, True
    rows = rows[-steps:]
    out, mask = empty
    out[steps - len(rows) :] = rows
    mask[steps - len(rows) :] = True
    return out, mask, True


def align_csd(
    labels,
    features: Mapping[str, object] | Sequence[object],
    steps: int | None | Mapping[str, int | None] = 20,
    folds: str | Mapping[str, Sequence[str]] | None = "cmu_mosi",
    label_range: tuple[float, float] | None = None,
    nan_as_missing: bool = False,
    name: str | None = None,
) -> MultimodalData:
    """Align feature ``.csd`` files to the segments of a labels ``.csd`` (see the module docstring).

    Args:
        labels: path of the labels ``.csd`` (one row per segment, ``k`` label values per row).
        features: modality name -> path of a feature ``.csd`` (a list of paths names modalities by file stem).
        steps: ``T`` for sequence modalities, or ``None``/0 for vector modalities (mean over the segment);
            one value for all or a mapping per modality.
        folds: ``"cmu_mosi"`` (standard folds), a mapping split -> video ids, or None (all in ``"train"``).
            Videos in no fold are left out (listed in ``schema.extra["videos_without_fold"]``).
        label_range: declared (low, high) of the labels, e.g. (-3, 3) for CMU-MOSI sentiment.
        nan_as_missing: drop steps with non-finite features instead of raising.
        name: data set name (default: the labels file's ``dataset name`` metadata).
    """
    lab = read_csd(labels)
    if not isinstance(features, Mapping):
        features = {Path(p).stem: p for p in features}
    if not features:
        raise DataError(f"file {lab.path}: expected at least one feature .csd to align to its segments")
    seqs = {m: read_csd(p) for m, p in features.items()}
    for m, s in [("labels", lab), *seqs.items()]:
        x = next(iter(s.data.values()))[0]
        if x.dtype.kind not in "fiub":
            raise DataError(
                f"file {s.path}, modality {m!r}, key 'features': dtype {x.dtype}, expected numbers (a word .csd must "
                "be turned into word vectors first)"
            )
    steps_of = {m: (steps.get(m) if isinstance(steps, Mapping) else steps) or None for m in seqs}
    assignment = _assign_folds(lab, folds)

    mods = tuple(ModalitySpec(m, (steps_of[m], s.dim) if steps_of[m] else (s.dim,)) for m, s in seqs.items())
    k = lab.dim
    names = lab.metadata.get("dimension names")
    names = tuple(names) if isinstance(names, list) and len(names) == k else None
    low, high = label_range if label_range is not None else (None, None)
    schema = Schema(
        mods,
        LabelSpec("regression", k, names, low, high),
        name=name if name is not None else str(lab.metadata.get("dataset name", lab.root)),
        attribution=_attribution(lab, seqs),
        extra={
            "source": "csd",
            "labels_file": lab.path.name,
            "feature_files": {m: s.path.name for m, s in seqs.items()},
            "folds": folds if isinstance(folds, str) or folds is None else "custom",
            "videos_without_fold": sorted(set(lab.data) - {v for vs in assignment.values() for v in vs}),
        },
    )
    data = MultimodalData(schema, {}, source=str(lab.path))
    for split, videos in assignment.items():
        data.splits[split] = _split(schema, lab, seqs, steps_of, videos, split, nan_as_missing)
    return data.validate_values()


def _assign_folds(lab: ComputationalSequence, folds) -> dict[str, list[str]]:
    if folds is None:
        return {"train": list(lab.data)}
    if isinstance(folds, str):
        if folds not in FOLDS:
            raise DataError(f"folds {folds!r}: unknown; expected one of {list(FOLDS)} or a mapping split -> videos")
        folds = FOLDS[folds]
    seen = {}
    for split, videos in folds.items():
        for v in videos:
            if v in seen:
                raise DataError(f"folds: video {v!r} is in both {seen[v]!r} and {split!r}; expected disjoint folds")
            seen[v] = split
    return {split: [v for v in lab.data if seen.get(v) == split] for split in folds}


def _split(schema, lab, seqs, steps_of, videos, split, nan_as_missing) -> MultimodalDataset:
    ids, ys = [], []
    feats = {m: [] for m in seqs}
    masks = {m: [] for m in seqs}
    present = {m: [] for m in seqs}
    for video in videos:
        y, iv = lab.data[video]
        for i, (start, end) in enumerate(iv):
            ids.append(f"{video}[{i}]")
            ys.append(y[i])
            for m, seq in seqs.items():
                x, mask, ok = _cut(seq, m, video, start, end, steps_of[m], nan_as_missing)
                feats[m].append(x)
                masks[m].append(mask)
                present[m].append(ok)
    n = len(ids)
    y = np.asarray(ys, dtype=np.float32).reshape(n, schema.label.dim)
    y_ok = np.isfinite(y).all(axis=1)
    stack = lambda xs, shape, dt: np.stack(xs) if xs else np.zeros((0,) + shape, dt)  # noqa: E731
    return MultimodalDataset(
        schema,
        {s.name: stack(feats[s.name], s.shape, np.float32) for s in schema.modalities},
        {m: np.asarray(p, dtype=bool) for m, p in present.items()},
        {s.name: stack(masks[s.name], s.shape[:1], bool) for s in schema.modalities if s.is_sequence},
        np.where(y_ok[:, None], y, 0).astype(np.float32),
        y_ok,
        source=str(lab.path),
        split=split,
        ids=np.asarray(ids, dtype=str),
    )


def _attribution(lab: ComputationalSequence, seqs: Mapping[str, ComputationalSequence]) -> str:
    md = lab.metadata
    parts = [f"{md.get('dataset name', lab.root)} {md.get('dataset version', '')}".strip()]
    for key in ("creator", "dataset bib citation"):
        if md.get(key):
            parts.append(f"{key}: {md[key]}")
    for m, s in seqs.items():
        if s.metadata.get("featureset bib citation"):
            parts.append(f"{m} features: {s.metadata['featureset bib citation']}")
    parts.append("Converted from CMU-MultimodalSDK computational sequences.")
    return "\n".join(parts)
