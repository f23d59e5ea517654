"""A researcher's own data: one NumPy ``.npz`` archive, or one CSV file per modality.

NPZ (:func:`load_npz`): one array per modality, ``(N, d)`` or ``(N, T, d)``, under the modality's name; ``label``
(``(N,)`` class indices or regression values, ``(N, k)`` outputs or 0/1 labels; NaN where unknown); optional
``<modality>_present`` ``(N,)`` and ``<modality>_steps`` ``(N, T)`` bool masks, ``label_present`` ``(N,)``, ``split``
``(N,)`` split names, ``ids`` ``(N,)`` sample ids and ``groups`` ``(N,)`` their groups (speaker, video). Object
arrays are refused (loading them would unpickle).

CSV (:func:`load_csv`): one file per modality with a header row; a sample id column; feature columns (their header
names become the feature names); optionally a label column, a split column, a group column (the speaker or video of
each sample) and a presence column (``0``/``1``, ``true``/``false``). Every file lists the same samples; a sample
whose features are all empty cells, or whose presence is false, is missing for that modality. Label, split and group
may be in any of the files (where several hold them, they must agree). Labels that are not numbers are class names.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..build import from_arrays
from ..dataset import MultimodalData
from ..schema import DataError, LabelSpec

LABEL_KINDS = ("auto", "regression", "categorical", "multilabel")
NPZ_RESERVED = ("label", "label_present", "split", "ids", "groups")
TRUE, FALSE = ("1", "true", "yes", "y", "t"), ("0", "false", "no", "n", "f")


def _label_kind(kind: str, y: np.ndarray) -> str:
    if kind not in LABEL_KINDS:
        raise DataError(f"label kind {kind!r}: expected one of {LABEL_KINDS}")
    if kind != "auto":
        return kind
    if y.dtype == bool:
        return "multilabel"
    return "categorical" if y.dtype.kind in "iu" and y.ndim == 1 else "regression"


def _finish(data: MultimodalData, source, label_names=None, feature_names=None) -> MultimodalData:
    schema = data.schema
    if label_names is not None:
        schema = replace(schema, label=LabelSpec("categorical", len(label_names), tuple(label_names)))
    if feature_names:
        schema = replace(
            schema, modalities=tuple(replace(m, feature_names=feature_names.get(m.name)) for m in schema.modalities)
        )
    return data.adopt(schema, source)


# ------------------------------------------------------------------------------------------------------------- NPZ
def load_npz(path, label_kind: str = "auto", name: str | None = None, nan_as_missing: bool = False) -> MultimodalData:
    """Read a ``.npz`` archive laid out as the module docstring says."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path}: does not exist; expected a .npz archive")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(
            f"file {path}: an array holds Python objects ({e}); expected numeric arrays, and string "
            "arrays for 'split', 'ids' and 'groups'"
        ) from None
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"file {path}: not a readable .npz archive: {e}") from None
    masks = {k for k in arrays if k.endswith(("_present", "_steps")) and k not in NPZ_RESERVED}
    features = {k: v for k, v in arrays.items() if k not in NPZ_RESERVED and k not in masks}
    if not features:
        raise DataError(
            f"file {path}: no modality arrays (keys {sorted(arrays)}); expected one (N, d) or (N, T, d) "
            f"array per modality besides {', '.join(NPZ_RESERVED)}"
        )
    for k, v in features.items():
        if v.dtype.kind not in "fiub":
            raise DataError(f"file {path}, modality {k!r}: dtype {v.dtype}, expected numbers")
    for k in sorted(masks):
        m = k.rsplit("_", 1)[0]
        if m not in features:
            raise DataError(
                f"file {path}, key {k!r}: a mask of modality {m!r}, which the archive does not hold "
                f"(modalities: {sorted(features)})"
            )
    present = {m: arrays[f"{m}_present"] for m in features if f"{m}_present" in arrays}
    steps = {m: arrays[f"{m}_steps"] for m in features if f"{m}_steps" in arrays}
    n = next(iter(features.values())).shape[0]
    for k in [f"{m}_present" for m in present] + ["label_present", "split", "ids", "groups"]:
        if k in arrays and arrays[k].shape != (n,):
            raise DataError(f"file {path}, key {k!r}: shape {arrays[k].shape}, expected ({n},)")
    y = arrays.get("label")
    label_names = None
    kind = "regression"
    if y is not None:
        if y.dtype.kind in "US":  # class names
            label_names = sorted(set(y.tolist()))
            y = np.array([label_names.index(v) for v in y.tolist()], np.int64)
        kind = _label_kind(label_kind, y) if label_names is None else "categorical"
    for m in steps:
        if features[m].ndim != 3:
            raise DataError(
                f"file {path}, key '{m}_steps': modality {m!r} is not a sequence (shape "
                f"{features[m].shape}); expected steps only for (N, T, d) arrays"
            )
    for m in features:
        if features[m].ndim == 3 and m not in steps:
            steps[m] = np.ones(features[m].shape[:2], bool)
    data = from_arrays(
        features,
        y,
        label_kind=kind,
        present=present or None,
        steps=steps or None,
        label_present=arrays.get("label_present"),
        split=arrays.get("split"),
        name=name if name is not None else path.stem,
        nan_as_missing=nan_as_missing,
        ids=arrays["ids"].astype(str) if "ids" in arrays else None,
        groups=arrays["groups"].astype(str) if "groups" in arrays else None,
    )
    return _finish(data, path, label_names)


# ------------------------------------------------------------------------------------------------------------- CSV
def _read_table(path: Path, id_column: str) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise DataError(f"file {path}: does not exist; expected a CSV file with a header row")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"file {path}: empty; expected a header row, then one row per sample")
    head = [h.strip() for h in rows[0]]
    if id_column not in head:
        raise DataError(f"file {path}: no id column {id_column!r} in the header {head}; expected one (--id-column)")
    body = [r for r in rows[1:] if any(c.strip() for c in r)]
    for i, r in enumerate(body):
        if len(r) != len(head):
            raise DataError(f"file {path}, row {i + 2}: {len(r)} cells, expected {len(head)} (as the header)")
    return head, body


def _number(path, row, column, text) -> float:
    try:
        return float(text)
    except ValueError:
        raise DataError(f"file {path}, row {row}, column {column!r}: {text!r} is not a number") from None


def load_csv(
    files: dict,
    id_column: str = "id",
    label_column: str = "label",
    split_column: str = "split",
    presence_column: str = "present",
    label_kind: str = "auto",
    name: str = "",
    nan_as_missing: bool = False,
    group_column: str = "group",
) -> MultimodalData:
    """Read one CSV per modality (``{modality: path}``) keyed by ``id_column``, as the module docstring says."""
    if not files:
        raise DataError("--from csv: expected at least one CSV file (NAME=PATH or PATH)")
    special = {id_column, label_column, split_column, presence_column, group_column}
    order: list[str] | None = None
    first = None
    features, present, feature_names = {}, {}, {}
    shared: dict[str, dict] = {label_column: {}, split_column: {}, group_column: {}}
    where: dict[str, Path] = {}
    for m, p in files.items():
        path = Path(p)
        head, body = _read_table(path, id_column)
        col = {h: j for j, h in enumerate(head)}
        ids = _ids(path, body, col[id_column], id_column)
        if order is None:
            order, first = ids, path
        else:
            _check_same_ids(path, m, ids, order, first, id_column, presence_column)
        index = {s: i for i, s in enumerate(ids)}
        rows = [body[index[s]] for s in order]  # in the first file's order
        fcols = [h for h in head if h not in special]
        if not fcols:
            raise DataError(f"file {path} (modality {m!r}): no feature columns besides {sorted(special & set(head))}")
        features[m], present[m] = _features(path, rows, [index[s] + 2 for s in order], col, fcols, presence_column)
        feature_names[m] = tuple(fcols)
        _merge_shared(path, shared, where, col, order, rows)
    y, kind, label_names = _csv_labels(shared[label_column], order, label_kind, where.get(label_column), label_column)
    split = None
    if shared[split_column]:
        split = np.array([shared[split_column][s] or "train" for s in order])
    groups = None
    if shared[group_column]:
        missing = [s for s in order if not shared[group_column].get(s)]
        if missing:
            raise DataError(
                f"file {where[group_column]}, column {group_column!r}: no group for ids "
                f"{', '.join(map(repr, missing[:5]))}; expected a group (speaker, video) for every sample"
            )
        groups = np.array([shared[group_column][s] for s in order])
    data = from_arrays(
        features,
        y,
        label_kind=kind,
        present=present,
        split=split,
        name=name,
        nan_as_missing=nan_as_missing,
        ids=np.array(order),
        num_classes=len(label_names) if label_names else None,
        groups=groups,
    )
    return _finish(data, first, label_names, feature_names)


def _ids(path: Path, body: list, column: int, id_column: str) -> list[str]:
    """The sample ids of a table's rows: non-empty and each once."""
    ids = [r[column].strip() for r in body]
    seen = set()
    for i, s in enumerate(ids):
        if not s:
            raise DataError(f"file {path}, row {i + 2}: empty id in column {id_column!r}")
        if s in seen:
            raise DataError(f"file {path}, row {i + 2}: id {s!r} appears twice; expected one row per sample")
        seen.add(s)
    return ids


def _check_same_ids(
    path: Path, m: str, ids: list, order: list, first: Path, id_column: str, presence_column: str
) -> None:
    """Raise unless the file lists the same samples as the first one."""
    seen = set(ids)
    extra, absent = sorted(seen - set(order)), [s for s in order if s not in seen]
    if extra or absent:
        what = []
        if absent:
            what.append(
                f"lacks {len(absent)} ids of {first} ({', '.join(map(repr, absent[:5]))}"
                f"{' ...' if len(absent) > 5 else ''})"
            )
        if extra:
            what.append(
                f"has {len(extra)} ids that {first} lacks ({', '.join(map(repr, extra[:5]))}"
                f"{' ...' if len(extra) > 5 else ''})"
            )
        raise DataError(
            f"file {path} (modality {m!r}): {' and '.join(what)}; expected every file to list "
            f"the same samples in column {id_column!r} (mark a missing sample with empty "
            f"cells or {presence_column}=0)"
        )


def _features(
    path: Path, rows: list, row_numbers: list, col: dict, fcols: list, presence_column: str
) -> tuple[np.ndarray, np.ndarray]:
    """The features and the presence of one modality's rows (``row_numbers``: their lines in the file)."""
    x = np.zeros((len(rows), len(fcols)), np.float64)
    pres = np.ones(len(rows), bool)
    for i, (r, row) in enumerate(zip(rows, row_numbers)):
        cells = [r[col[h]].strip() for h in fcols]
        if presence_column in col:
            flag = r[col[presence_column]].strip().lower()
            if flag not in TRUE + FALSE:
                raise DataError(
                    f"file {path}, row {row}, column {presence_column!r}: {flag!r}, expected 0/1 or true/false"
                )
            pres[i] = flag in TRUE
        if not any(cells):
            pres[i] = False
        elif pres[i]:
            if not all(cells):
                empty = fcols[cells.index("")]
                raise DataError(
                    f"file {path}, row {row}, column {empty!r}: empty cell in a sample with other "
                    "features; expected all features, or all cells empty for a missing sample"
                )
            x[i] = [_number(path, row, h, c) for h, c in zip(fcols, cells)]
    return x, pres


def _merge_shared(path: Path, shared: dict, where: dict, col: dict, order: list, rows: list) -> None:
    """Add a file's label, split and group cells to ``shared`` (column -> id -> text); files must agree where both
    have a value."""
    for key, values in shared.items():
        if key in col:
            got = {s: r[col[key]].strip() for s, r in zip(order, rows)}
            for s, v in got.items():
                if v and values.get(s) and values[s] != v:
                    raise DataError(
                        f"file {path}, id {s!r}, column {key!r}: {v!r}, but {where[key]} has "
                        f"{values[s]!r}; expected the files to agree"
                    )
                if v or s not in values:  # an empty cell leaves another file's value
                    values[s] = v
            where.setdefault(key, path)


def _csv_labels(labels: dict, order: list, label_kind: str, path, label_column: str):
    """``(y, kind, label_names)`` from the label cells by id: numbers (NaN where empty), or class names."""
    if not labels:
        return None, "regression", None
    text = [labels[s] for s in order]
    known = [t for t in text if t]
    try:
        values = [float(t) for t in known]
        numeric = True
    except ValueError:
        numeric = False
    if not numeric:
        if label_kind not in ("auto", "categorical"):
            raise DataError(
                f"file {path}, column {label_column!r}: values such as "
                f"{next(t for t in known if not _is_number(t))!r} are not numbers; expected a "
                f"{label_kind} label"
            )
        label_names = sorted(set(known))
        return np.array([label_names.index(t) if t else np.nan for t in text]), "categorical", label_names
    integral = all(v.is_integer() for v in values)
    y = np.array([float(t) if t else np.nan for t in text])
    auto = "categorical" if integral and values and min(values) >= 0 else "regression"
    kind = auto if label_kind == "auto" else _label_kind(label_kind, y)
    if kind == "multilabel":
        raise DataError(
            f"file {path}, column {label_column!r}: a multilabel label needs one column per label; use an .npz archive"
        )
    if kind == "categorical" and not integral:
        raise DataError(f"file {path}, column {label_column!r}: non-integer values for a categorical label")
    return y, kind, None


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
