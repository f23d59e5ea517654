"""The project's native file format: one HDF5 file holding a :class:`MultimodalData` (all splits).

Layout (version 1; also documented in ``docs/data_format.md``)::

    /                                   attrs: format = "pyro-mfm", format_version = 1,
                                               schema = JSON of Schema.to_dict(),
                                               splits = JSON list of split names, in order
    /<split>/                           one group per split (train, valid, test, ...); attrs: n = samples
    /<split>/<modality>/features        float32, (n, d) or (n, T, d); gzip, chunked by samples; zero where missing
    /<split>/<modality>/present         bool, (n,): modality observed for the sample
    /<split>/<modality>/steps           bool, (n, T), sequence modalities only: real steps (False = padding)
    /<split>/labels                     (n, k) float32 (regression, multilabel) or (n,) int64 (categorical);
                                        absent when the schema has no label
    /<split>/label_present              bool, (n,); absent when the schema has no label
    /<split>/ids                        optional, variable-length UTF-8 strings, (n,): sample ids
    /<split>/groups                     optional, variable-length UTF-8 strings, (n,): the sample's group (speaker,
                                        video), which a validation split held out of the training split keeps whole
    /<split>/<modality>/imputed         optional (files of imputations), bool, (n,): the features are imputed
    /<split>/<modality>/imputed_std     optional, float32, as features: posterior standard deviation
    / attrs: imputation                 optional, JSON: observed subset, imputed modalities, checkpoint and its
                                        SHA-256, source file and split, posterior draws, seed

:func:`save` writes a temporary file in the target's folder, fsyncs it and renames it over the target, so a failed
write never leaves a half-written or clobbered file. :func:`load` reads it back exactly (the same float32 bytes and
the same schema), or lazily (feature arrays stay ``h5py.Dataset`` objects read batch by batch).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np

from ..outputs import atomic_path
from .dataset import MultimodalData, MultimodalDataset
from .schema import DataError, Schema

FORMAT = "pyro-mfm"
FORMAT_VERSION = 1
CHUNK_BYTES = 1 << 20  # about 1 MiB of uncompressed features per chunk
COPY_ROWS_BYTES = 64 << 20  # rows copied at a time from a lazily loaded source


# ---------------------------------------------------------------------------------------------------------- saving
def save(data: MultimodalData, path, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` in the native format (atomically). Returns the path.

    Raises:
        DataError: ``path`` exists and ``overwrite`` is False, is a folder, or its folder does not exist.
        OutputError: the write failed (a full disk, no permission); ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"file {path}: is a folder; expected a file name")
    if path.exists() and not overwrite:
        raise DataError(f"file {path}: already exists; expected a new file name (or overwrite=True / --overwrite)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise DataError(f"file {path}: folder {folder} {what}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        _write(f, data)
    _fsync_folder(folder)
    return path


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write(f: h5py.File, data: MultimodalData) -> None:
    f.attrs["format"] = FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["schema"] = json.dumps(data.schema.to_dict())
    f.attrs["splits"] = json.dumps(list(data.splits))
    if data.imputation is not None:
        f.attrs["imputation"] = json.dumps(data.imputation)
    for name, ds in data.splits.items():
        if "/" in name or not name:
            raise DataError(f"split {name!r}: expected a non-empty name without '/'")
        g = f.create_group(name)
        g.attrs["n"] = ds.n
        for spec in data.schema.modalities:
            m = spec.name
            gm = g.create_group(m)
            _write_features(gm, ds.features[m], (ds.n,) + spec.shape)
            gm.create_dataset("present", data=np.asarray(ds.present[m], dtype=bool))
            if spec.is_sequence:
                gm.create_dataset("steps", data=np.asarray(ds.steps[m], dtype=bool))
            if ds.imputed is not None:
                gm.create_dataset("imputed", data=np.asarray(ds.imputed[m], dtype=bool))
                gm.create_dataset(
                    "imputed_std",
                    data=np.asarray(ds.imputed_std[m], dtype=np.float32),
                    compression="gzip",
                    compression_opts=4,
                    shuffle=True,
                )
        if data.schema.label is not None:
            dtype = np.int64 if data.schema.label.kind == "categorical" else np.float32
            g.create_dataset("labels", data=np.asarray(ds.labels, dtype=dtype))
            g.create_dataset("label_present", data=np.asarray(ds.label_present, dtype=bool))
        if ds.ids is not None:
            g.create_dataset("ids", data=[str(i) for i in ds.ids], dtype=h5py.string_dtype("utf-8"))
        if ds.groups is not None:
            g.create_dataset("groups", data=[str(i) for i in ds.groups], dtype=h5py.string_dtype("utf-8"))


def _write_features(group: h5py.Group, x, shape: tuple[int, ...]) -> None:
    row_bytes = 4 * int(np.prod(shape[1:]))
    if shape[0] == 0:
        group.create_dataset("features", shape=shape, dtype=np.float32)
        return
    rows = max(1, min(shape[0], CHUNK_BYTES // row_bytes))
    out = group.create_dataset(
        "features",
        shape=shape,
        dtype=np.float32,
        chunks=(rows,) + shape[1:],
        compression="gzip",
        compression_opts=4,
        shuffle=True,
    )
    step = max(1, COPY_ROWS_BYTES // row_bytes)  # a lazily loaded source is copied block by block
    for start in range(0, shape[0], step):
        out[start : start + step] = np.asarray(x[start : start + step], dtype=np.float32)


# --------------------------------------------------------------------------------------------------------- loading
def load(path, lazy: bool = False, nan_as_missing: bool = False, validate: bool = True) -> MultimodalData:
    """Read a native file.

    Args:
        path: the ``.h5`` file.
        lazy: keep feature arrays as ``h5py.Dataset`` objects (the file stays open until ``data.close()``);
            masks, labels and ids are read into memory. For files larger than memory.
        nan_as_missing: mark samples with NaN features missing for that modality instead of raising (eager only).
        validate: check shapes, finite features (eager only) and label ranges.

    Raises:
        DataError: naming the file, split, key and modality, and what was expected.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"file {path}: does not exist")
    if path.is_dir():
        raise DataError(f"file {path}: is a folder; expected a pyro-mfm .h5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"file {path}: not a readable HDF5 file (corrupt or truncated?): {e}") from None
    try:
        data = _read(f, path, lazy, validate)
        if validate and not lazy:
            data.validate_values(nan_as_missing)
    except (OSError, RuntimeError, KeyError) as e:  # a damaged file often opens, then fails on reading (h5py
        f.close()  # raises OSError, RuntimeError or KeyError depending on the damaged structure)
        raise DataError(f"file {path}: read error (corrupt or truncated file?): {type(e).__name__}: {e}") from None
    except BaseException:
        f.close()
        raise
    if lazy:
        data.handle = f
    else:
        f.close()
    return data


def read_schema(f: h5py.File, path) -> Schema:
    """Check the root attributes of an open native file and return its schema."""
    fmt = _attr_str(f.attrs.get("format"))
    if fmt != FORMAT:
        hint = ""
        roots = [f[k] for k in f.keys()]
        if len(roots) == 1 and isinstance(roots[0], h5py.Group) and "data" in roots[0]:
            hint = (
                " (this looks like a CMU-MultimodalSDK .csd file: convert it with `pyro-mfm data convert --from csd`)"
            )
        raise DataError(f"file {path}: root attribute 'format' is {fmt!r}, expected {FORMAT!r}{hint}")
    version = _attr_str(f.attrs.get("format_version"))
    if version != str(FORMAT_VERSION):
        raise DataError(
            f"file {path}: root attribute 'format_version' is {version}; this version of pyro-mfm reads "
            f"format_version {FORMAT_VERSION}"
        )
    try:
        return Schema.from_dict(json.loads(_attr_str(f.attrs["schema"])))
    except KeyError:
        raise DataError(f"file {path}: missing root attribute 'schema' (expected JSON of Schema.to_dict())") from None
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise DataError(f"file {path}: root attribute 'schema' is not a valid schema: {e}") from None


def _attr_str(v) -> str | None:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return None if v is None else str(v)


def _read(f: h5py.File, path: Path, lazy: bool, validate: bool) -> MultimodalData:
    schema = read_schema(f, path)
    if "splits" in f.attrs:
        try:
            splits = [str(s) for s in json.loads(_attr_str(f.attrs["splits"]))]
        except (json.JSONDecodeError, TypeError) as e:
            raise DataError(f"file {path}: root attribute 'splits' is not a JSON list of split names: {e}") from None
    else:
        splits = [k for k in f.keys() if isinstance(f[k], h5py.Group)]
    data = MultimodalData(schema, {}, source=str(path))
    if "imputation" in f.attrs:
        try:
            data.imputation = dict(json.loads(_attr_str(f.attrs["imputation"])))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise DataError(f"file {path}: root attribute 'imputation' is not a JSON object: {e}") from None
    for split in splits:
        data.splits[split] = _read_split(f, path, split, schema, lazy, validate)
        data.splits[split].imputation = data.imputation
    return data


def _get(group: h5py.Group, key: str, path, split: str, modality: str | None, expected: str):
    where = f"file {path}, split {split!r}" + (f", modality {modality!r}" if modality else "")
    if key not in group:
        raise DataError(f"{where}: missing key {key!r} (expected {expected} at {group.name.rstrip('/')}/{key})")
    obj = group[key]
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"{where}: key {key!r} is a group, expected {expected}")
    return obj


def _read_split(f, path, split, schema: Schema, lazy: bool, validate: bool) -> MultimodalDataset:
    if split not in f:
        raise DataError(f"file {path}: missing key {split!r} (expected a group for split {split!r} listed in 'splits')")
    g = f[split]
    features, present, steps = {}, {}, {}
    for spec in schema.modalities:
        m = spec.name
        if m not in g:
            raise DataError(f"file {path}, split {split!r}, modality {m!r}: missing key {m!r} (expected a group)")
        gm = g[m]
        x = _get(gm, "features", path, split, m, f"float features of shape (N, {', '.join(map(str, spec.shape))})")
        if x.dtype.kind != "f":
            raise DataError(
                f"file {path}, split {split!r}, modality {m!r}, key 'features': dtype {x.dtype}, expected float32"
            )
        features[m] = x if lazy else np.asarray(x[()], dtype=np.float32)
        present[m] = _get(gm, "present", path, split, m, "a bool mask of shape (N,)")[()]
        if spec.is_sequence:
            steps[m] = _get(gm, "steps", path, split, m, f"a bool mask of shape (N, {spec.steps})")[()]
    labels = label_present = None
    if schema.label is not None:
        labels = _get(g, "labels", path, split, None, f"labels of shape (N, {schema.label.dim}) or (N,)")[()]
        label_present = _get(g, "label_present", path, split, None, "a bool mask of shape (N,)")[()]
    ids = g["ids"].asstr()[()] if "ids" in g else None
    groups = g["groups"].asstr()[()] if "groups" in g else None
    ds = MultimodalDataset(
        schema,
        features,
        present,
        steps,
        labels,
        label_present,
        source=str(path),
        split=split,
        validate=False,
        ids=ids,
        groups=groups,
    )
    if any("imputed" in g[spec.name] for spec in schema.modalities):
        ds.imputed, ds.imputed_std = {}, {}
        for spec in schema.modalities:
            m = spec.name
            ds.imputed[m] = np.asarray(_get(g[m], "imputed", path, split, m, "a bool mask of shape (N,)")[()], bool)
            std = _get(g[m], "imputed_std", path, split, m, "float32 posterior sd shaped as the features")
            ds.imputed_std[m] = std if lazy else np.asarray(std[()], np.float32)
            if ds.imputed[m].shape != (ds.n,) or tuple(std.shape) != tuple(features[m].shape):
                raise DataError(
                    f"file {path}, split {split!r}, modality {m!r}, key 'imputed': shapes "
                    f"{ds.imputed[m].shape} and {tuple(std.shape)}, expected ({ds.n},) and "
                    f"{tuple(features[m].shape)}"
                )
    if validate or lazy:  # shapes are cheap and a lazy reader relies on them
        ds.validate_shapes()
        if lazy:
            ds.validate_labels()
    return ds
