"""The data set a configuration names (``data.source``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from . import native
from .builtin import load_embedded
from .dataset import MultimodalData

if TYPE_CHECKING:
    from ..config import Config


def load_data(config: Config) -> MultimodalData:
    """The data set named by ``config.data.source``: ``embedded:NAME``, a native HDF5 path, or a folder in the
    Memory Fusion Network release layout (``<modality>_<split>.h5`` and ``y_<split>.h5``, e.g. POM)."""
    src = config.data.source
    if src.startswith("embedded:"):
        return load_embedded(src.split(":", 1)[1])
    if Path(src).is_dir():
        from .importers.mfn import load_mfn

        return load_mfn(src, nan_as_missing=config.data.nan_as_missing)
    return native.load(Path(src), nan_as_missing=config.data.nan_as_missing)
