"""Per-modality encoder trunks and decoders.

Vector modalities use MLPs. Sequence modalities here are flattened over their ``T`` steps (padding steps are zero
and masked in the likelihood), which is exact for fixed-length, word-aligned sequences.
"""

from __future__ import annotations

from torch import nn

from ..data.schema import ModalitySpec
from .mlp import mlp


class ModalityEncoder(nn.Module):
    """x_m (standardised, zero where missing or padded) -> a feature vector h_m of size ``hidden``."""

    def __init__(self, spec: ModalitySpec, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        in_dim = spec.dim * (spec.steps or 1)
        self.net = mlp([in_dim, hidden], dropout, final_activation=True)
        self.out_dim = hidden

    def forward(self, x, steps=None):
        if self.spec.is_sequence:
            x = x.flatten(-2)
        return self.net(x)


class ModalityDecoder(nn.Module):
    """F_m: [f_y; f_a,m] -> the mean of x_m in standardised units, shaped ``(..., d)`` or ``(..., T, d)``."""

    def __init__(self, spec: ModalitySpec, in_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.spec = spec
        self.net = mlp([in_dim, hidden, hidden, spec.dim * (spec.steps or 1)], dropout)

    def forward(self, f):
        out = self.net(f)
        if self.spec.is_sequence:
            out = out.unflatten(-1, self.spec.shape)
        return out
