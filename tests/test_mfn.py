"""The vectorized Memory Fusion Network against its step-by-step reference (``MemoryFusion.stepwise``: an LSTM-cell
loop per modality and the memory, over t, as the paper writes it)."""

import pytest
import torch
from torch import nn

from pyro_mfm.nets.mfn import MemoryFusion
from pyro_mfm.nets.sequence import align_left, align_right, run_lstm


def _inputs(B=7, T=6, dims=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    dims = dims or {"a": 3, "b": 4, "c": 2}
    lengths = {
        "a": torch.tensor([6, 1, 3, 0, 6, 2, 4]),
        "b": torch.tensor([6, 2, 3, 5, 0, 6, 1]),
        "c": torch.tensor([0, 6, 3, 4, 5, 0, 2]),
    }
    x, steps = {}, {}
    for m, d in dims.items():
        steps[m] = torch.arange(T)[None, :] >= (T - lengths[m])[:, None]
        x[m] = (torch.randn(B, T, d, generator=g, dtype=torch.float64) * steps[m].unsqueeze(-1)).requires_grad_()
    return dims, x, steps


def test_align_left_right_round_trip():
    dims, x, steps = _inputs()
    lengths = steps["a"].sum(-1)
    left = align_left(x["a"], lengths)
    for b, L in enumerate(lengths.tolist()):
        assert torch.equal(left[b, :L], x["a"][b, 6 - L :])
        assert torch.all(left[b, L:] == 0)
    assert torch.equal(align_right(left, lengths), x["a"])


def test_run_lstm_matches_lstm_on_real_steps_only():
    dims, x, steps = _inputs()
    torch.manual_seed(1)
    lstm = nn.LSTM(3, 5, batch_first=True).double()
    h, last = run_lstm(lstm, x["a"], steps["a"])
    for b in range(7):
        L = int(steps["a"][b].sum())
        if L == 0:
            assert torch.all(h[b] == 0) and torch.all(last[b] == 0)
            continue
        ref, _ = lstm(x["a"][b : b + 1, 6 - L :])
        torch.testing.assert_close(h[b, 6 - L :], ref[0])
        torch.testing.assert_close(last[b], ref[0, -1])
        assert torch.all(h[b, : 6 - L] == 0)


# one width for the four MLPs, and a width of each (the gates' differ: the loop splits their first layers' output)
WIDTHS = [8, {"attention": 3, "propose": 7, "gate1": 4, "gate2": 9}]


@pytest.mark.parametrize("hidden", WIDTHS, ids=["one width", "a width each"])
@pytest.mark.parametrize("seed", [0, 1])
def test_vectorized_mfn_equals_stepwise_reference_outputs_and_gradients(seed, hidden):
    dims, x, steps = _inputs(seed=seed)
    torch.manual_seed(seed)
    net = MemoryFusion(dims, {"a": 5, "b": 4, "c": 3}, memory=6, hidden=hidden).double()
    if isinstance(hidden, dict):
        assert [net.attention[0].out_features, net.propose[0].out_features] == [3, 7]
        assert [net.gate1[0].out_features, net.gate2[0].out_features] == [4, 9]
    out = net(x, steps)
    ref = net.stepwise(x, steps)
    assert out.shape == (7, 5 + 4 + 3 + 6)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = list(net.parameters()) + [x[m] for m in dims]
    g_out = torch.autograd.grad((out * w).sum(), params, allow_unused=True)
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # the missing modality c of sample 0 contributes nothing: its inputs' gradients are zero there
    assert torch.all(g_out[-1][0] == 0)


def test_mfn_ignores_padding_values_and_missing_modalities():
    """Values at padding steps never reach the output; a missing modality's h_T block is zero."""
    dims, x, steps = _inputs()
    torch.manual_seed(0)
    net = MemoryFusion(dims, {"a": 5, "b": 4, "c": 3}, memory=6, hidden=8).double()
    # padding (and a missing modality) holds garbage: the network reads x only where the step is real
    noisy = {m: x[m].detach() + 100.0 * (~steps[m]).unsqueeze(-1) for m in dims}
    torch.testing.assert_close(net(noisy, steps), net({m: x[m].detach() for m in dims}, steps))
    out = net(noisy, steps)
    assert torch.all(out[0, 9:12] == 0)  # modality c (hidden 3, after a: 5 and b: 4) is missing for sample 0
    # the memory changes when a modality becomes observed
    changed = dict(steps)
    changed["c"] = steps["c"].clone()
    changed["c"][0, -2:] = True
    assert not torch.allclose(net(noisy, changed)[0, -6:], out[0, -6:])
