"""Per-modality encoder trunks and decoders.

Vector modalities use MLPs. Sequence modalities are read and written by the LSTMs of :mod:`pyro_mfm.nets.sequence`
(``model.sequence_net = "lstm"``, the default) or, with ``"mlp"``, flattened over their ``T`` steps (padding steps
are zero and masked in the likelihood).
"""

from __future__ import annotations

from torch import nn

from ..data.schema import ModalitySpec
from .mlp import mlp
from .sequence import SequenceDecoder, SequenceEncoder


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


def make_encoder(
    spec: ModalitySpec, kind: str, hidden: int, lstm_hidden: int, dropout: float = 0.0, mean: bool = False
) -> nn.Module:
    """The encoder trunk of one modality: an MLP, or (``kind == "lstm"``, sequences only) an LSTM over the steps
    (``mean``: reading the mean over the real steps beside the LSTM's last state)."""
    if kind == "lstm" and spec.is_sequence:
        return SequenceEncoder(spec, hidden, lstm_hidden, dropout, mean)
    return ModalityEncoder(spec, hidden, dropout)


def make_decoder(spec: ModalitySpec, kind: str, in_dim: int, hidden: int, dropout: float = 0.0) -> nn.Module:
    """The decoder F_m of one modality: an MLP, or (``kind == "lstm"``, sequences only) the paper's LSTM decoder."""
    if kind == "lstm" and spec.is_sequence:
        return SequenceDecoder(spec, in_dim, dropout)
    return ModalityDecoder(spec, in_dim, hidden, dropout)
