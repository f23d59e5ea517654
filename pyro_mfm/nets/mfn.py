"""The Memory Fusion Network (Zadeh et al., AAAI 2018) as the multimodal encoder of z_y.

For modalities m with LSTM states (h_m,t, c_m,t) and c_t = [c_1,t; ...; c_M,t] (sizes sum to C)::

    c*_t  = [c_{t-1}; c_t]                                 (2C)
    a_t   = softmax(MLP1(c*_t)),   c^_t = a_t * c*_t       delta-memory attention
    u^_t  = tanh(MLP2(c^_t))                               proposed memory update
    g1_t  = sigmoid(MLP3([c^_t; u_{t-1}])),  g2_t = sigmoid(MLP4([c^_t; u_{t-1}]))
    u_t   = g1_t * u_{t-1} + g2_t * u^_t                   multi-view gated memory, u_{-1} = 0
    out   = [h_1,T; ...; h_M,T; u_T]

The LSTMs never read the memory, so ``nn.LSTM`` runs over every modality's real steps at once; the cell states are
recovered from the hidden states with the LSTM's own gates (i, f, g from x_t and h_{t-1} in one matrix product,
then c_t = f_t * c_{t-1} + i_t * g_t elementwise inside the memory loop), and only that loop steps over t.
Sequences are front-padded: a modality's states are zero before its first real step and all zero where it is
missing, and the memory is held (u_t = u_{t-1}) at a step where no modality has a real step.
"""

from __future__ import annotations

import torch
from torch import nn

from .mlp import mlp
from .sequence import run_lstm


def lstm_gates(lstm: nn.LSTM, x, h):
    """The input, forget and cell gates ``(B, T, H)`` each of a one-layer ``lstm`` at every step, given the inputs
    ``x`` and the hidden states ``h`` of the same storage positions (h_{t-1} = 0 before the first step)."""
    h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
    pre = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + h_prev @ lstm.weight_hh_l0.T + lstm.bias_hh_l0
    i, f, g, _ = pre.chunk(4, dim=-1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)


class MemoryFusion(nn.Module):
    """MFN over sequence modalities of a common length T; ``forward(x, steps) -> (B, sum H_m + memory)``.

    Args:
        dims: modality -> feature size d_m, in a fixed order.
        lstm_hidden: modality -> LSTM hidden size H_m.
        memory: size of u_t.
        hidden: hidden width of MLP1..MLP4.
    """

    def __init__(self, dims: dict, lstm_hidden: dict, memory: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.names = list(dims)
        self.lstm = nn.ModuleDict({m: nn.LSTM(dims[m], lstm_hidden[m], batch_first=True) for m in self.names})
        c = sum(lstm_hidden[m] for m in self.names)
        self.attention = mlp([2 * c, hidden, 2 * c], dropout)
        self.propose = mlp([2 * c, hidden, memory], dropout)
        self.gate1 = mlp([2 * c + memory, hidden, memory], dropout)
        self.gate2 = mlp([2 * c + memory, hidden, memory], dropout)
        self.memory = memory
        self.out_dim = c + memory

    def forward(self, x: dict, steps: dict):
        """``x[m]``: ``(B, T, d_m)`` zero at padding; ``steps[m]``: ``(B, T)`` suffix masks, all False if missing."""
        hs, gates, masks = [], [], []
        for m in self.names:
            h, _ = run_lstm(self.lstm[m], x[m], steps[m])
            hs.append(h)
            i, f, g = lstm_gates(self.lstm[m], x[m], h)
            gates.append((f, i * g))
            masks.append(steps[m].unsqueeze(-1).to(h.dtype))
        forget = torch.cat([f for f, _ in gates], -1)
        write = torch.cat([w for _, w in gates], -1)
        mask = torch.cat([mk.expand_as(f) for mk, (f, _) in zip(masks, gates)], -1)
        active = torch.stack([steps[m] for m in self.names], -1).any(-1).unsqueeze(-1).to(forget.dtype)
        B, T, C = forget.shape
        c_prev = forget.new_zeros(B, C)
        u = forget.new_zeros(B, self.memory)
        for t in range(T):
            c_t = mask[:, t] * (forget[:, t] * c_prev + write[:, t])
            c_star = torch.cat([c_prev, c_t], -1)
            c_hat = torch.softmax(self.attention(c_star), -1) * c_star
            u_hat = torch.tanh(self.propose(c_hat))
            both = torch.cat([c_hat, u], -1)
            u_new = torch.sigmoid(self.gate1(both)) * u + torch.sigmoid(self.gate2(both)) * u_hat
            u = active[:, t] * u_new + (1 - active[:, t]) * u
            c_prev = c_t
        return torch.cat([h[:, -1] for h in hs] + [u], -1)
