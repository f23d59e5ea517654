"""Networks: encoders for q(z | x), factor networks G, decoders F_m and the label head D."""

from .encoders import ExpertEncoder, InformationExpert, product_of_experts
from .mlp import FactorNet, mlp
from .modalities import ModalityDecoder, ModalityEncoder

__all__ = ["ExpertEncoder", "InformationExpert", "FactorNet", "ModalityDecoder", "ModalityEncoder", "mlp", "product_of_experts"]
