"""Data sets shipped inside the package (``pyro_mfm/data/embedded/<name>.h5``, native format)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from . import native
from .dataset import MultimodalData
from .schema import DataError

EMBEDDED = ("uci_mfeat",)


def embedded_path(name: str = "uci_mfeat") -> Path:
    """The file of an embedded data set."""
    if name not in EMBEDDED:
        raise DataError(f"embedded data set {name!r}: unknown; expected one of {list(EMBEDDED)}")
    path = Path(str(resources.files("pyro_mfm.data").joinpath("embedded", f"{name}.h5")))
    if not path.is_file():
        raise DataError(f"file {path}: embedded data set {name!r} is missing from the installed package")
    return path


def load_embedded(name: str = "uci_mfeat", lazy: bool = False) -> MultimodalData:
    """Load an embedded data set (default: UCI Multiple Features, 6 views, 10 classes, splits 1400/200/400)."""
    return native.load(embedded_path(name), lazy=lazy)
