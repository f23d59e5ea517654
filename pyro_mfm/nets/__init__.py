"""Networks: encoders for q(z | x), factor networks G, decoders F_m and the label head D."""

from .encoders import ExpertEncoder, product_of_experts
from .mlp import FactorNet, mlp
from .modalities import ModalityDecoder, ModalityEncoder

__all__ = ["ExpertEncoder", "FactorNet", "ModalityDecoder", "ModalityEncoder", "mlp", "product_of_experts"]
