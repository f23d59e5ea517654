"""LSTM networks for sequence modalities: an encoder trunk over the real steps and the paper's LSTM decoder.

Sequences are stored FRONT-padded: a sample with L real steps holds them at the last L of the T positions, and its
step mask is a suffix (``steps[b, t]`` is True for ``t >= T - L``). A missing modality has L = 0. The encoder runs
``nn.LSTM`` over the whole sequence at once on the real steps only (``pack_padded_sequence`` after moving the real
steps to the front), so padding never enters a state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..data.schema import ModalitySpec
from .mlp import mlp


def align_left(x, lengths):
    """Front-padded ``(B, T, d)`` -> the real steps first: ``out[b, t] = x[b, T - L_b + t]`` for ``t < L_b``."""
    T = x.shape[-2]
    idx = (torch.arange(T, device=x.device) + (T - lengths)[:, None]) % T
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def align_right(x, lengths):
    """The inverse of :func:`align_left`: real steps back to the last ``L_b`` positions (padding, zero, first)."""
    T = x.shape[-2]
    idx = (torch.arange(T, device=x.device) + lengths[:, None]) % T
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def run_lstm(lstm: nn.LSTM, x, steps):
    """Run a one-layer, batch-first ``lstm`` over the real steps of front-padded ``x``.

    Args:
        x: ``(B, T, d)``, zero at padding.
        steps: ``(B, T)`` bool suffix masks (all False for a missing modality).
    Returns:
        ``(h, h_last)``: the hidden states ``(B, T, H)`` at the storage positions (zero at padding) and the state
        after the last real step ``(B, H)`` (zero for a sample without real steps).
    """
    lengths = steps.sum(-1)
    T = x.shape[-2]
    packed = pack_padded_sequence(align_left(x, lengths), lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, (h_n, _) = lstm(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
    seen = (lengths > 0).to(x.dtype)
    out = out * seen[:, None, None]  # a sample with no real step was run on one zero step: discard it
    return align_right(out, lengths), h_n[-1] * seen[:, None]


class SequenceEncoder(nn.Module):
    """x_m ``(B, T, d)`` (standardised, zero where padded or missing) -> h_m ``(B, hidden)``.

    ``h_m = ReLU(W h_L)`` with h_L the LSTM's state after the last real step (zero for a missing modality).
    """

    def __init__(self, spec: ModalitySpec, hidden: int, lstm_hidden: int, dropout: float = 0.0):
        super().__init__()
        if not spec.is_sequence:
            raise ValueError(f"modality {spec.name!r}: shape {spec.shape}, expected a sequence (T, d) for an LSTM")
        self.spec = spec
        self.lstm = nn.LSTM(spec.dim, lstm_hidden, batch_first=True)
        self.net = mlp([lstm_hidden, hidden], dropout, final_activation=True)
        self.out_dim = hidden

    def forward(self, x, steps=None):
        if steps is None:
            steps = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        _, last = run_lstm(self.lstm, x, steps)
        return self.net(last)


class SequenceDecoder(nn.Module):
    """F_m: ``[f_y; f_a,m]`` -> the mean of x_m ``(..., T, d)`` in standardised units.

    An LSTM cell whose input is ``[f_y; f_a,m]`` at step 0 and its own previous hidden state after (so its hidden
    size is the input's size), with a Linear to d_m at every step; step t is storage position t, so the likelihood's
    step mask drops the padded positions.
    """

    def __init__(self, spec: ModalitySpec, in_dim: int, dropout: float = 0.0):
        super().__init__()
        if not spec.is_sequence:
            raise ValueError(f"modality {spec.name!r}: shape {spec.shape}, expected a sequence (T, d) for an LSTM")
        self.spec = spec
        self.cell = nn.LSTMCell(in_dim, in_dim)
        self.out = nn.Linear(in_dim, spec.dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, f):
        lead = f.shape[:-1]
        inp = f.reshape(-1, f.shape[-1])
        h = c = torch.zeros_like(inp)
        states = []
        for _ in range(self.spec.steps):
            h, c = self.cell(inp, (h, c))
            states.append(h)
            inp = h
        out = self.out(self.dropout(torch.stack(states, -2)))
        return out.reshape(lead + out.shape[-2:])
