"""Importers: other projects' file formats -> :class:`~pyro_mfm.data.MultimodalData`.

* :mod:`.arrays`: a researcher's own data, one ``.npz`` archive or one CSV file per modality.
* :mod:`.csd`: CMU-MultimodalSDK computational sequences, aligned to labelled segments (standard CMU-MOSI folds).
* :mod:`.mfn`: the Memory Fusion Network release layout (``{modality}_{split}.h5``, ``y_{split}.h5``), e.g. POM.
* :mod:`.pickled`: the pickled dictionaries of MulT / MMSA (only with ``trust=True``).
* :mod:`.uci_mfeat`: the UCI "Multiple Features" CSV views (the embedded default data set).
"""

from .arrays import load_csv, load_npz
from .cmu_mosi_folds import CMU_MOSI_FOLDS
from .csd import ComputationalSequence, align_csd, read_csd, write_csd
from .mfn import front_padding_mask, load_mfn
from .pickled import load_pickle
from .uci_mfeat import convert_uci_mfeat, read_uci_mfeat, stratified_split

__all__ = [
    "CMU_MOSI_FOLDS",
    "ComputationalSequence",
    "align_csd",
    "convert_uci_mfeat",
    "front_padding_mask",
    "load_csv",
    "load_mfn",
    "load_npz",
    "load_pickle",
    "read_csd",
    "read_uci_mfeat",
    "stratified_split",
    "write_csd",
]
