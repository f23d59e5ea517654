"""The Memory Fusion Network release layout: one HDF5 file per modality and split.

::

    <folder>/<modality>_<split>.h5    one dataset (key ``d1`` or ``data``): (N, T, d) sequences or (N, d) vectors
    <folder>/y_<split>.h5             one dataset (key ``d1`` or ``data``): (N, k) or (N,) labels

Sequences are front-padded with all-zero steps: the leading zero rows of a sample get step mask False, and a
sample whose steps are all zero has that modality missing. (Zero rows after the first non-zero row are kept as
real steps.) This is how the POM and CMU-MOSI files of the MFN code are stored.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from ..dataset import MultimodalData, MultimodalDataset
from ..schema import DataError, LabelSpec, ModalitySpec, Schema

KEYS = ("d1", "data")
SPLITS = ("train", "valid", "test")


def read_array(path) -> np.ndarray:
    """The one array of an MFN-style ``.h5`` file (key ``d1`` or ``data``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path}: does not exist")
    try:
        with h5py.File(path, "r") as f:
            for key in KEYS:
                if key in f and isinstance(f[key], h5py.Dataset):
                    return f[key][()]
            raise DataError(f"file {path}: no dataset under key {' or '.join(map(repr, KEYS))}; found {list(f.keys())}")
    except OSError as e:
        raise DataError(f"file {path}: not a readable HDF5 file (corrupt or truncated?): {e}") from None


def front_padding_mask(x: np.ndarray) -> np.ndarray:
    """``(N, T)`` step mask of ``(N, T, d)`` sequences: False for the all-zero steps before the first real one."""
    nonzero = np.any(x != 0, axis=-1)
    return np.cumsum(nonzero, axis=1) > 0


def load_mfn(
    folder,
    modalities: Sequence[str] | None = None,
    splits: Sequence[str] = SPLITS,
    label_kind: str = "regression",
    label_names: Sequence[str] | None = None,
    label_range: tuple[float, float] | None = None,
    name: str | None = None,
    attribution: str = "",
    nan_as_missing: bool = False,
) -> MultimodalData:
    """Read an MFN-layout folder into a data set with splits ``splits``.

    Args:
        folder: the folder of ``{modality}_{split}.h5`` and ``y_{split}.h5`` files.
        modalities: which modalities (default: every ``{modality}_{splits[0]}.h5`` found, sorted).
        label_kind: ``"regression"`` (``(N, k)`` outputs), ``"categorical"`` or ``"multilabel"``.
        label_names, label_range: optional output names and declared (low, high) range.
        name: data set name (default: the folder's name).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"folder {folder}: does not exist")
    if modalities is None:
        pattern = re.compile(rf"(.+)_{re.escape(splits[0])}\.h5$")
        modalities = sorted(m.group(1) for p in folder.iterdir() if (m := pattern.match(p.name)) and m.group(1) != "y")
        if not modalities:
            raise DataError(f"folder {folder}: no <modality>_{splits[0]}.h5 files (expected the MFN release layout)")
    raw = {s: {m: read_array(folder / f"{m}_{s}.h5") for m in modalities} for s in splits}
    ys = {s: read_array(folder / f"y_{s}.h5") for s in splits}

    first = raw[splits[0]]
    mods = []
    for m in modalities:
        x = first[m]
        if x.ndim not in (2, 3):
            raise DataError(
                f"file {folder / f'{m}_{splits[0]}.h5'}, modality {m!r}: shape {x.shape}, expected (N, T, d) or (N, d)"
            )
        mods.append(ModalitySpec(m, x.shape[1:]))
    y0 = ys[splits[0]]
    if label_kind == "categorical":
        label = LabelSpec("categorical", int(max(np.nanmax(y) for y in ys.values())) + 1, label_names)
    else:
        k = 1 if y0.ndim == 1 else int(np.prod(y0.shape[1:]))
        low, high = label_range if label_range is not None else (None, None)
        label = LabelSpec(label_kind, k, label_names, low, high)
    schema = Schema(
        tuple(mods),
        label,
        name=name if name is not None else folder.name,
        attribution=attribution,
        extra={"source": "mfn", "folder": folder.name},
    )
    data = MultimodalData(schema, {}, source=str(folder))
    for s in splits:
        data.splits[s] = _split(folder, schema, raw[s], ys[s], s)
    return data.validate_values(nan_as_missing)


def _split(folder: Path, schema: Schema, arrays: dict, y: np.ndarray, split: str) -> MultimodalDataset:
    n = len(y)
    features, present, steps = {}, {}, {}
    for spec in schema.modalities:
        m, x = spec.name, arrays[spec.name]
        where = f"file {folder / f'{m}_{split}.h5'}, modality {m!r}"
        if x.shape != (n,) + spec.shape:
            raise DataError(
                f"{where}: shape {x.shape}, expected {(n,) + spec.shape} "
                f"(N={n} as in {folder / f'y_{split}.h5'}, step and feature sizes as in the first split)"
            )
        if spec.is_sequence:
            steps[m] = front_padding_mask(x)
            present[m] = steps[m].any(axis=1)
        features[m] = x.astype(np.float32)
    if schema.label.kind == "categorical":
        y_ok = np.isfinite(y.reshape(n, -1)).all(axis=1)
        labels = np.where(y_ok, y.reshape(n), 0).astype(np.int64)
    else:
        y = y.reshape(n, -1)
        if y.shape[1] != schema.label.dim:
            raise DataError(f"file {folder / f'y_{split}.h5'}: {y.shape[1]} label columns, expected {schema.label.dim}")
        y_ok = np.isfinite(y).all(axis=1)
        labels = np.where(y_ok[:, None], y, 0).astype(np.float32)
    return MultimodalDataset(schema, features, present, steps, labels, y_ok, source=str(folder), split=split)
