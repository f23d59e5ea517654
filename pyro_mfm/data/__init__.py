"""Data layer: the data set type, the native HDF5 format, importers, the embedded default data set, synthetic data."""

from . import native
from .build import declare_label, from_arrays
from .builtin import EMBEDDED, embedded_path, load_embedded
from .dataset import Batch, MultimodalData, MultimodalDataset
from .native import load, save
from .schema import DataError, LabelSpec, ModalitySpec, Schema
from .sources import load_data
from .synthetic import LinearGaussianMFM, LinearGaussianModality, SyntheticLatents

__all__ = [
    "Batch",
    "DataError",
    "LabelSpec",
    "ModalitySpec",
    "MultimodalData",
    "MultimodalDataset",
    "Schema",
    "declare_label",
    "from_arrays",
    "LinearGaussianMFM",
    "LinearGaussianModality",
    "SyntheticLatents",
    "EMBEDDED",
    "embedded_path",
    "load",
    "load_data",
    "load_embedded",
    "native",
    "save",
]
