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
then c_t = f_t * c_{t-1} + i_t * g_t, an elementwise loop). Nor do the attention and the proposal read the memory:
c^_t and u^_t are computed for every t at once, as is the c^_t part of the gates' first layers, so the only work
left in the loop over t is the memory's own: u_{t-1} through the gates' first layers (one matrix product for both
gates), their second layers, and the update.
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
    k = 3 * lstm.hidden_size  # the gates are stacked i, f, g, o: the output gate is not needed
    h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
    pre = torch.addmm(lstm.bias_ih_l0[:k] + lstm.bias_hh_l0[:k], x.flatten(0, 1), lstm.weight_ih_l0[:k].T)
    pre = pre.unflatten(0, x.shape[:2]) + h_prev @ lstm.weight_hh_l0[:k].T
    i, f, g = pre.chunk(3, dim=-1)
    return torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)


class MemoryFusion(nn.Module):
    """MFN over sequence modalities of a common length T; ``forward(x, steps) -> (B, sum H_m + memory)``.

    Args:
        dims: modality -> feature size d_m, in a fixed order.
        lstm_hidden: modality -> LSTM hidden size H_m.
        memory: size of u_t.
        hidden: hidden width of MLP1..MLP4: an int, or a dict with keys ``attention``, ``propose``, ``gate1``,
            ``gate2`` (MLP1, MLP2, MLP3, MLP4).
    """

    PARTS = ("attention", "propose", "gate1", "gate2")

    def __init__(self, dims: dict, lstm_hidden: dict, memory: int, hidden: int | dict, dropout: float = 0.0):
        super().__init__()
        self.names = list(dims)
        self.lstm = nn.ModuleDict({m: nn.LSTM(dims[m], lstm_hidden[m], batch_first=True) for m in self.names})
        c = sum(lstm_hidden[m] for m in self.names)
        w = hidden if isinstance(hidden, dict) else dict.fromkeys(self.PARTS, hidden)
        self.attention = mlp([2 * c, w["attention"], 2 * c], dropout)
        self.propose = mlp([2 * c, w["propose"], memory], dropout)
        self.gate1 = mlp([2 * c + memory, w["gate1"], memory], dropout)
        self.gate2 = mlp([2 * c + memory, w["gate2"], memory], dropout)
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
        B, T, C = forget.shape
        c, cs = forget.new_zeros(B, C), []
        for t in range(T):
            c = mask[:, t] * (forget[:, t] * c + write[:, t])
            cs.append(c)
        c_t = torch.stack(cs, 1)
        c_star = torch.cat([torch.cat([c_t.new_zeros(B, 1, C), c_t[:, :-1]], 1), c_t], -1)  # [c_{t-1}; c_t]
        c_hat = torch.softmax(self.attention(c_star), -1) * c_star
        u_hat = torch.tanh(self.propose(c_hat))
        first1, first2 = self.gate1[0], self.gate2[0]
        pre = torch.cat(
            [c_hat @ first1.weight[:, : 2 * C].T + first1.bias, c_hat @ first2.weight[:, : 2 * C].T + first2.bias], -1
        )
        w_u = torch.cat([first1.weight[:, 2 * C :], first2.weight[:, 2 * C :]], 0).T
        widths = (first1.out_features, first2.out_features)
        # after the first layers' ReLU, which runs on both gates' pre-activations at once
        mid1, mid2, last1, last2 = self.gate1[2:-1], self.gate2[2:-1], self.gate1[-1], self.gate2[-1]
        active = torch.stack([steps[m] for m in self.names], -1).any(-1).unsqueeze(-1)
        u = forget.new_zeros(B, self.memory)
        for t in range(T):
            a1, a2 = torch.relu(torch.addmm(pre[:, t], u, w_u)).split(widths, -1)
            u_new = torch.sigmoid(last1(mid1(a1))) * u + torch.sigmoid(last2(mid2(a2))) * u_hat[:, t]
            u = torch.where(active[:, t], u_new, u)
        return torch.cat([h[:, -1] for h in hs] + [u], -1)

    def stepwise(self, x: dict, steps: dict):
        """The same output with every recurrence stepped over t in Python: each modality's LSTM cell, then the
        attention, the proposal and the gated memory, as the paper writes the MFN (and as its public code runs).

        Slow; it is the reference the vectorized :meth:`forward` is tested and benchmarked against. A modality's
        state stays at zero until its first real step (front padding) and all along when it is missing; the
        memory is held at steps where no modality is real.
        """
        weights = {
            m: (self.lstm[m].weight_ih_l0, self.lstm[m].weight_hh_l0, self.lstm[m].bias_ih_l0, self.lstm[m].bias_hh_l0)
            for m in self.names
        }
        B, T = steps[self.names[0]].shape
        h = {m: x[m].new_zeros(B, self.lstm[m].hidden_size) for m in self.names}
        c = {m: x[m].new_zeros(B, self.lstm[m].hidden_size) for m in self.names}
        u = x[self.names[0]].new_zeros(B, self.memory)
        for t in range(T):
            c_prev = torch.cat([c[m] for m in self.names], -1)
            for m in self.names:
                real = steps[m][:, t].unsqueeze(-1).to(x[m].dtype)
                h_new, c_new = torch.lstm_cell(x[m][:, t], (h[m], c[m]), *weights[m])
                h[m], c[m] = real * h_new + (1 - real) * h[m], real * c_new + (1 - real) * c[m]
            c_star = torch.cat([c_prev] + [c[m] for m in self.names], -1)
            c_hat = torch.softmax(self.attention(c_star), -1) * c_star
            u_hat = torch.tanh(self.propose(c_hat))
            both = torch.cat([c_hat, u], -1)
            u_new = torch.sigmoid(self.gate1(both)) * u + torch.sigmoid(self.gate2(both)) * u_hat
            active = torch.stack([steps[m][:, t] for m in self.names], -1).any(-1, keepdim=True).to(u.dtype)
            u = active * u_new + (1 - active) * u
        return torch.cat([h[m] for m in self.names] + [u], -1)
