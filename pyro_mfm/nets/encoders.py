"""Gaussian encoders and the product of experts that lets q(z_y | observed) take any subset of modalities."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import softplus

from .mlp import mlp


class ExpertEncoder(nn.Module):
    """h -> (loc, scale) of a diagonal Gaussian over a factor of size ``z_dim``."""

    def __init__(self, in_dim: int, z_dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.net = mlp([in_dim, hidden, hidden, 2 * z_dim], dropout)

    def forward(self, h):
        loc, raw = self.net(h).chunk(2, dim=-1)
        return loc, softplus(raw) + 1e-4


def product_of_experts(locs, scales, masks):
    """Precision-weighted product of the prior N(0, I) and the Gaussian experts whose mask is True.

    Args:
        locs, scales: lists of ``(..., B, k)`` tensors, one per modality.
        masks: list of ``(..., B)`` bool tensors, whether each modality's expert is present for a sample.
    Returns:
        ``(loc, scale)`` of the product, ``(..., B, k)``. A sample with no observed modality gets the prior.
    """
    precision = torch.ones_like(locs[0])
    weighted = torch.zeros_like(locs[0])
    for loc, scale, mask in zip(locs, scales, masks):
        p = scale.pow(-2) * mask.unsqueeze(-1).to(loc.dtype)
        precision = precision + p
        weighted = weighted + p * loc
    return weighted / precision, precision.rsqrt()
