"""The fast paths of the sequence networks against step-by-step references: the same outputs and gradients.

The MFN's own reference is in ``test_mfn.py``; here the LSTM decoder (one ``torch.lstm`` call after the first step)
against the ``LSTMCell`` loop it replaces, and the LSTM encoder against a masked cell loop.
"""

import pytest
import torch
from torch import nn

from pyro_mfm.data.schema import ModalitySpec
from pyro_mfm.nets.sequence import SequenceDecoder, SequenceEncoder


def stepwise_decoder(net: SequenceDecoder, f):
    h = c = torch.zeros_like(f)
    inp, states = f, []
    for _ in range(net.spec.steps):
        h, c = net.cell(inp, (h, c))
        states.append(h)
        inp = h
    return net.out(torch.stack(states, -2))


def stepwise_encoder(net: SequenceEncoder, x, steps):
    cell = nn.LSTMCell(net.lstm.input_size, net.lstm.hidden_size).to(x.dtype)
    cell.weight_ih, cell.weight_hh = net.lstm.weight_ih_l0, net.lstm.weight_hh_l0
    cell.bias_ih, cell.bias_hh = net.lstm.bias_ih_l0, net.lstm.bias_hh_l0
    h = c = x.new_zeros(x.shape[0], net.lstm.hidden_size)
    for t in range(x.shape[1]):
        real = steps[:, t].unsqueeze(-1).to(x.dtype)
        h_new, c_new = cell(x[:, t], (h, c))
        h, c = real * h_new + (1 - real) * h, real * c_new + (1 - real) * c
    return net.net(h)


def _grads(out, params, seed=3):
    w = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))
    return torch.autograd.grad((out * w).sum(), params)


@pytest.mark.parametrize("T, lead", [(1, (5,)), (7, (5,)), (6, (2, 3))])
def test_fused_decoder_equals_cell_loop(T, lead):
    torch.manual_seed(0)
    net = SequenceDecoder(ModalitySpec("x", (T, 4)), in_dim=6).double()
    f = torch.randn(lead + (6,), dtype=torch.float64, requires_grad=True)
    out = net(f)
    ref = stepwise_decoder(net, f.reshape(-1, 6)).reshape(lead + (T, 4))
    assert out.shape == lead + (T, 4)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    params = [f] + list(net.parameters())
    for a, b in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fused_decoder_in_float32_is_within_float_tolerance():
    torch.manual_seed(1)
    net = SequenceDecoder(ModalitySpec("x", (20, 300)), in_dim=104)
    f = torch.randn(16, 104)
    torch.testing.assert_close(net(f), stepwise_decoder(net, f), rtol=1e-4, atol=1e-5)


def test_encoder_equals_masked_cell_loop_with_padding_and_missing_samples():
    torch.manual_seed(2)
    T = 6
    net = SequenceEncoder(ModalitySpec("x", (T, 3)), hidden=5, lstm_hidden=4).double()
    lengths = torch.tensor([6, 0, 3, 1, 5])
    steps = torch.arange(T)[None] >= (T - lengths)[:, None]
    x = (torch.randn(5, T, 3, dtype=torch.float64) * steps.unsqueeze(-1)).requires_grad_()
    out, ref = net(x, steps), stepwise_encoder(net, x, steps)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    params = [x] + list(net.parameters())
    for a, b in zip(_grads(out, params), _grads(ref, params)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
