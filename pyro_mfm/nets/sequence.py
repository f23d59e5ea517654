"""LSTM networks for sequence modalities: an encoder trunk over the real steps and the paper's LSTM decoder.

Sequences are stored FRONT-padded: a sample with L real steps holds them at the last L of the T positions, and its
step mask is a suffix (``steps[b, t]`` is True for ``t >= T - L``). A missing modality has L = 0. The encoder runs
``nn.LSTM`` over the whole sequence at once with the real steps moved to the front, so padding never enters a
kept state.
"""

from __future__ import annotations

import torch
from torch import nn

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

    The real steps are moved to the front (:func:`align_left`) and the LSTM runs over all T positions in one call
    (no packing: the CPU kernel then computes the input projection of every step in one matrix product, and cuDNN
    runs it whole); what it computes after a sample's last real step is dropped, so padding never enters a kept
    state.

    Args:
        x: ``(B, T, d)``, zero at padding.
        steps: ``(B, T)`` bool suffix masks (all False for a missing modality).
    Returns:
        ``(h, h_last)``: the hidden states ``(B, T, H)`` at the storage positions (zero at padding) and the state
        after the last real step ``(B, H)`` (zero for a sample without real steps).
    """
    lengths = steps.sum(-1)
    out, _ = lstm(align_left(x, lengths))
    h = align_right(out, lengths) * steps.unsqueeze(-1).to(out.dtype)
    return h, h[:, -1]


class SequenceEncoder(nn.Module):
    """x_m ``(B, T, d)`` (standardised, zero where padded or missing) -> h_m ``(B, hidden)``.

    ``h_m = ReLU(W h_L)`` with h_L the LSTM's state after the last real step (zero for a missing modality); with
    ``mean``, ``h_m = ReLU(W [h_L; mean_t x_t])``, the mean over the real steps beside it (:func:`step_mean`).
    """

    def __init__(self, spec: ModalitySpec, hidden: int, lstm_hidden: int, dropout: float = 0.0, mean: bool = False):
        super().__init__()
        if not spec.is_sequence:
            raise ValueError(f"modality {spec.name!r}: shape {spec.shape}, expected a sequence (T, d) for an LSTM")
        self.spec, self.mean = spec, mean
        self.lstm = nn.LSTM(spec.dim, lstm_hidden, batch_first=True)
        self.net = mlp([lstm_hidden + spec.dim * mean, hidden], dropout, final_activation=True)
        self.out_dim = hidden

    def forward(self, x, steps=None):
        if steps is None:
            steps = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        _, last = run_lstm(self.lstm, x, steps)
        if self.mean:
            last = torch.cat([last, step_mean(x, steps)], -1)
        return self.net(last)


def step_mean(x, steps):
    """The mean of ``x`` ``(B, T, d)`` over each sample's real ``steps`` ``(B, T)`` (zero for a sample without
    any): the time-averaged features that a linear model of a sequence reads."""
    w = steps.to(x.dtype)
    return (x * w.unsqueeze(-1)).sum(-2) / w.sum(-1, keepdim=True).clamp(min=1)


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
        """Step 0 is one cell step from the zero state; from step 1 on the cell's input is its own hidden state, so
        the pre-activations are (W_ih + W_hh) h_{t-1} + b: an LSTM with no input and recurrent weights W_ih + W_hh,
        which ``torch.lstm`` runs over the remaining T - 1 steps in one call (cuDNN on a GPU)."""
        lead = f.shape[:-1]
        inp = f.reshape(-1, f.shape[-1])
        cell = self.cell
        h, c = cell(inp)
        if self.spec.steps > 1:
            none = inp.new_zeros(inp.shape[0], self.spec.steps - 1, 1)  # an input of zeros, read by zero weights
            weights = [
                inp.new_zeros(cell.weight_ih.shape[0], 1),
                cell.weight_ih + cell.weight_hh,
                cell.bias_ih,
                cell.bias_hh,
            ]
            rest = torch.lstm(none, (h[None], c[None]), weights, True, 1, 0.0, self.training, False, True)[0]
            states = torch.cat([h.unsqueeze(-2), rest], -2)
        else:
            states = h.unsqueeze(-2)
        out = self.out(self.dropout(states))
        return out.reshape(lead + out.shape[-2:])
