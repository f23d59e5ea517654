"""Networks: encoders for q(z | x), factor networks G, decoders F_m, the label head D, LSTMs and the MFN."""

from .encoders import (
    AbsenceExpert,
    ExpertEncoder,
    InformationExpert,
    LinearExpert,
    SubsetPosteriors,
    product_of_experts,
)
from .mfn import MemoryFusion
from .mlp import FactorNet, mlp
from .modalities import ModalityDecoder, ModalityEncoder, make_decoder, make_encoder
from .sequence import SequenceDecoder, SequenceEncoder, step_mean

__all__ = [
    "AbsenceExpert",
    "ExpertEncoder",
    "InformationExpert",
    "LinearExpert",
    "FactorNet",
    "MemoryFusion",
    "ModalityDecoder",
    "ModalityEncoder",
    "SequenceDecoder",
    "SequenceEncoder",
    "SubsetPosteriors",
    "make_decoder",
    "make_encoder",
    "mlp",
    "product_of_experts",
    "step_mean",
]
