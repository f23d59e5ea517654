"""The pickled dictionaries of MulT and MMSA.

::

    {"train" | "valid" | "test": {"text": (N, T, d_l), "audio": (N, T, d_a), "vision": (N, T, d_v),
                                  "labels": (N, 1) or (N, 1, 1) or (N, k), "id": optional (N,) or (N, ...)}}

MMSA files may also hold ``"regression_labels"`` / ``"classification_labels"`` (choose with ``label_key``) and
``"audio_lengths"`` / ``"vision_lengths"``; a ``{modality}_lengths`` entry marks the first ``length`` steps as real
(the rest is end padding). Without it every step counts as real.

Unpickling runs code chosen by whoever wrote the file, so :func:`load_pickle` refuses unless ``trust=True``.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..dataset import MultimodalData, MultimodalDataset
from ..schema import DataError, LabelSpec, ModalitySpec, Schema

MODALITIES = ("text", "audio", "vision")
SPLITS = ("train", "valid", "test")


def load_pickle(
    path,
    trust: bool = False,
    modalities: Sequence[str] = MODALITIES,
    label_key: str = "labels",
    label_range: tuple[float, float] | None = None,
    name: str | None = None,
    nan_as_missing: bool = False,
) -> MultimodalData:
    """Read a MulT/MMSA pickle into a data set (splits train/valid/test where present).

    Args:
        trust: the file comes from a source you trust (unpickling can run arbitrary code).
        modalities: the keys read as modalities.
        label_key: the key of the labels (``"labels"``; MMSA: ``"regression_labels"``).
        label_range: declared (low, high) of the regression labels, e.g. (-3, 3).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path}: does not exist")
    if not trust:
        raise DataError(
            f"file {path}: refusing to unpickle: loading a pickle runs code chosen by whoever wrote the file. "
            "Pass trust=True (command line: --trust-pickle) only for a file from a source you trust, "
            "or convert it once to the native format"
        )
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f)
    except Exception as e:  # noqa: BLE001 -- unpickling can raise anything
        raise DataError(f"file {path}: not a readable pickle: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise DataError(f"file {path}: holds a {type(raw).__name__}, expected a dict of splits {list(SPLITS)}")
    splits = [s for s in SPLITS if s in raw] or [s for s in raw if isinstance(raw[s], dict)]
    if not splits:
        raise DataError(f"file {path}: no split among keys {list(raw)}; expected {list(SPLITS)}")

    first = _entry(raw, path, splits[0])
    mods = []
    for m in modalities:
        x = _array(first, path, splits[0], m)
        if x.ndim not in (2, 3):
            raise DataError(
                f"file {path}, split {splits[0]!r}, modality {m!r}: shape {x.shape}, expected (N, T, d) or (N, d)"
            )
        mods.append(ModalitySpec(m, x.shape[1:]))
    y0 = _array(first, path, splits[0], label_key)
    k = int(np.prod(y0.shape[1:])) if y0.ndim > 1 else 1
    low, high = label_range if label_range is not None else (None, None)
    schema = Schema(
        tuple(mods),
        LabelSpec("regression", k, None, low, high),
        name=name if name is not None else path.stem,
        extra={"source": "pickle", "file": path.name, "label_key": label_key},
    )
    data = MultimodalData(schema, {}, source=str(path))
    for s in splits:
        data.splits[s] = _split(_entry(raw, path, s), path, s, schema, label_key)
    return data.validate_values(nan_as_missing)


def _entry(raw: dict, path, split: str) -> dict:
    e = raw[split]
    if not isinstance(e, dict):
        raise DataError(f"file {path}, split {split!r}: holds a {type(e).__name__}, expected a dict of arrays")
    return e


def _array(entry: dict, path, split: str, key: str) -> np.ndarray:
    if key not in entry:
        raise DataError(f"file {path}, split {split!r}: missing key {key!r}; found {sorted(entry)}")
    try:
        return np.asarray(entry[key])
    except Exception as e:  # noqa: BLE001 -- e.g. a tensor on a device
        raise DataError(f"file {path}, split {split!r}, key {key!r}: not an array ({e})") from None


def _split(entry: dict, path, split: str, schema: Schema, label_key: str) -> MultimodalDataset:
    y = _array(entry, path, split, label_key).astype(np.float64)
    n = len(y)
    features, steps = {}, {}
    for spec in schema.modalities:
        m = spec.name
        x = _array(entry, path, split, m)
        if x.shape != (n,) + spec.shape:
            raise DataError(
                f"file {path}, split {split!r}, modality {m!r}: shape {x.shape}, expected "
                f"{(n,) + spec.shape} (N={n} as the labels {label_key!r}; sizes as in split 'train')"
            )
        if x.dtype.kind not in "fiub":
            raise DataError(f"file {path}, split {split!r}, modality {m!r}: dtype {x.dtype}, expected numbers")
        features[m] = x.astype(np.float32)
        if spec.is_sequence and f"{m}_lengths" in entry:
            lengths = np.asarray(entry[f"{m}_lengths"]).reshape(n)
            steps[m] = np.arange(spec.steps)[None, :] < lengths[:, None]
    y = y.reshape(n, -1)
    if y.shape[1] != schema.label.dim:
        raise DataError(
            f"file {path}, split {split!r}, key {label_key!r}: {y.shape[1]} label values per sample, "
            f"expected {schema.label.dim}"
        )
    y_ok = np.isfinite(y).all(axis=1)
    ids = None
    if "id" in entry:
        raw_ids = np.asarray(entry["id"]).reshape(n, -1)
        ids = np.array(["/".join(_text(v) for v in row) for row in raw_ids], dtype=str)
    return MultimodalDataset(
        schema,
        features,
        None,
        steps,
        np.where(y_ok[:, None], y, 0).astype(np.float32),
        y_ok,
        source=str(path),
        split=split,
        ids=ids,
    )


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
