"""The reference implementation's way of running the MFM's networks: a Python loop over time steps for every LSTM
(one ``LSTMCell`` step per modality per t, the encoders', the MFN's and the decoders') and for the MFN's memory.

It uses the parameters of an ``MFM`` (the cells read the weights of its ``nn.LSTM``s), so it is the same networks
and gives the same loss as :func:`benchmarks.plain.wae_loss` and the library's ``wae`` objective; the benchmark
asserts that before timing it.
"""

from __future__ import annotations

import torch

from . import plain


def _cell(lstm):
    """One step of a one-layer ``nn.LSTM`` (or ``nn.LSTMCell``) with its own weights."""
    if isinstance(lstm, torch.nn.LSTMCell):
        w = (lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh)
    else:
        w = (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)
    return lambda x, state: torch.lstm_cell(x, state, *w)


def encoder(net, x, steps):
    """``SequenceEncoder``: the state after the last real step, stepped over t (front padding holds the zeros)."""
    cell = _cell(net.lstm)
    B, T, _ = x.shape
    h = c = x.new_zeros(B, net.lstm.hidden_size)
    for t in range(T):
        real = steps[:, t].unsqueeze(-1).to(x.dtype)
        h_new, c_new = cell(x[:, t], (h, c))
        h, c = real * h_new + (1 - real) * h, real * c_new + (1 - real) * c
    return net.net(h)


def fusion(net, x, steps):
    """The MFN: at every t, each modality's LSTM cell, then the attention, the proposal and the gated memory."""
    return net.stepwise(x, steps)


def decoder(net, f):
    """``SequenceDecoder``: an LSTM cell fed [f_y; f_a,m] at step 0 and its own hidden state after."""
    cell = _cell(net.cell)
    h = c = torch.zeros_like(f)
    inp, states = f, []
    for _ in range(net.spec.steps):
        h, c = cell(inp, (h, c))
        states.append(h)
        inp = h
    return net.out(net.dropout(torch.stack(states, -2)))


def wae_loss(mfm, batch) -> torch.Tensor:
    """The paper's objective / B with every recurrence stepped in Python."""
    x, steps = plain.inputs(mfm, batch)
    h = {m: encoder(mfm.guide.trunk[m], x[m], steps[m]) for m in mfm.names}
    z_y = mfm.guide.q_y_fused(fusion(mfm.guide.fusion, x, steps))
    z_a = plain.private_codes(mfm, batch, h, z_y)
    loss = plain.reconstruction(mfm, batch, mfm.model.G_y(z_y), z_a, decode=lambda m, f: decoder(mfm.model.F[m], f))
    return (loss + plain.mmd_terms(mfm, batch, z_y, z_a)) / len(batch)
