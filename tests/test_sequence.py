"""Sequence modalities: LSTM encoder and decoder, padding and missing modalities, ablations, surrogate inference."""

import dataclasses

import numpy as np
import pyro
import pytest
import torch

from pyro_mfm.config import Config, ConfigError
from pyro_mfm.data.dataset import Batch
from pyro_mfm.data.schema import ModalitySpec
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.data.synthetic import LinearGaussianMFM
from pyro_mfm.infer.objective import Objective
from pyro_mfm.model import MFM
from pyro_mfm.nets.sequence import SequenceDecoder, SequenceEncoder


@pytest.fixture(scope="module")
def data():
    gen = LinearGaussianMFM.random({"a": (6, 3), "b": (6, 2)}, z_y_dim=2, seed=1)
    return gen.sample({"train": 48}, missing={"b": 0.4}, seed=0)


def _mfm(data, *overrides):
    cfg = Config().override(
        [
            "model.hidden=16",
            "model.sequence_net='lstm'",
            "model.lstm_hidden=8",
            "model.z_y_dim=3",
            "model.z_a_dim=2",
            "model.f_y_dim=6",
            "model.f_a_dim=4",
        ]
        + list(overrides)
    )
    pyro.set_rng_seed(0)
    return MFM(data.schema, cfg.model, feature_statistics(data["train"]))


CONFIGS = {
    "lstm-poe-elbo": [],
    "lstm-mfn-elbo": ["model.fusion='mfn'"],
    "lstm-mfn-wae": ["model.fusion='mfn'", "model.objective='wae'"],
    "lstm-poe-wae-surrogate": ["model.objective='wae'", "model.missing='surrogate'"],
    "mlp-poe-elbo": ["model.sequence_net='mlp'"],
    "no_shared": ["model.ablation='no_shared'"],
    "shared_only": ["model.ablation='shared_only'", "model.objective='wae'"],
    "discriminative": ["model.ablation='discriminative'", "model.fusion='mfn'"],
}


def test_decoder_reads_f_at_step_zero_then_its_own_hidden_state():
    spec = ModalitySpec("s", (5, 3))
    torch.manual_seed(0)
    dec = SequenceDecoder(spec, in_dim=4).eval()
    f = torch.randn(2, 7, 4)  # (particles, batch, features)
    out = dec(f)
    assert out.shape == (2, 7, 5, 3)
    inp, h, c = f.reshape(14, 4), torch.zeros(14, 4), torch.zeros(14, 4)
    for t in range(5):
        h, c = dec.cell(inp, (h, c))
        torch.testing.assert_close(out.reshape(14, 5, 3)[:, t], dec.out(h))
        inp = h


def test_encoder_reads_real_steps_only():
    spec = ModalitySpec("s", (6, 3))
    torch.manual_seed(0)
    enc = SequenceEncoder(spec, hidden=5, lstm_hidden=4)
    x = torch.randn(3, 6, 3)
    steps = torch.arange(6)[None] >= torch.tensor([[2], [5], [6]])  # lengths 4, 1, 0
    garbage = x + 50.0 * (~steps).unsqueeze(-1)
    out = enc(garbage, steps)
    torch.testing.assert_close(out, enc(x * steps.unsqueeze(-1), steps))
    _, (h, _) = enc.lstm(x[:1, 2:])
    torch.testing.assert_close(out[0], enc.net(h[-1, 0]))
    torch.testing.assert_close(out[2], enc.net(torch.zeros(4)))  # no real step: the zero state


def test_encoder_with_step_mean_reads_the_mean_of_the_real_steps_beside_the_last_state():
    spec = ModalitySpec("s", (6, 3))
    torch.manual_seed(0)
    enc = SequenceEncoder(spec, hidden=5, lstm_hidden=4, mean=True)
    x = torch.randn(3, 6, 3)
    steps = torch.arange(6)[None] >= torch.tensor([[2], [5], [6]])  # lengths 4, 1, 0
    out = enc(x + 50.0 * (~steps).unsqueeze(-1), steps)
    _, (h, _) = enc.lstm(x[:1, 2:])
    torch.testing.assert_close(out[0], enc.net(torch.cat([h[-1, 0], x[0, 2:].mean(0)])))
    torch.testing.assert_close(out[1], enc.net(torch.cat([enc.lstm(x[1:2, 5:])[1][0][-1, 0], x[1, 5]])))
    torch.testing.assert_close(out[2], enc.net(torch.zeros(7)))  # no real step: zero state, zero mean


def _batch_with(batch: Batch, x: dict) -> Batch:
    return dataclasses.replace(batch, x=x)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_and_missing_values_never_count(data, name):
    """Garbage at padding steps and in missing modalities leaves the loss and its gradients unchanged."""
    mfm = _mfm(data, *CONFIGS[name]).eval()
    batch = data["train"][np.arange(48)]
    assert (~batch.present["b"]).any() and (~batch.steps["a"]).any()
    junk = {
        m: torch.where(
            (batch.steps[m] & batch.present[m][:, None]).unsqueeze(-1), batch.x[m], torch.full_like(batch.x[m], 7.0)
        )
        for m in batch.x
    }
    obj = Objective(mfm)
    losses, grads = [], []
    for b in (batch, _batch_with(batch, junk)):
        pyro.set_rng_seed(3)
        loss = obj(b)
        mfm.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        grads.append([p.grad.clone() for p in mfm.parameters() if p.grad is not None])
    assert np.isfinite(losses[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_configuration_trains_and_has_its_sites(data, name):
    mfm = _mfm(data, *CONFIGS[name])
    batch = data["train"][np.arange(48)]
    tr = pyro.poutine.trace(mfm.model).get_trace(batch)
    sites = {n for n, s in tr.nodes.items() if s["type"] == "sample"}
    has = lambda *names: all(n in sites for n in names)  # noqa: E731
    assert has("y")
    assert has("z_y") == (name != "no_shared")
    assert has("z_a_a", "z_a_b") == (name not in ("shared_only", "discriminative"))
    assert has("x_a", "x_b") == (name != "discriminative")
    obj = Objective(mfm)
    opt = torch.optim.Adam(mfm.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        pyro.set_rng_seed(1)
        loss = obj(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss.detach()) < first


def test_mfn_needs_sequences_of_one_length():
    gen = LinearGaussianMFM.random({"a": (6, 3), "b": (4, 2)}, z_y_dim=2, seed=1)
    d = gen.sample({"train": 8}, seed=0)
    with pytest.raises(ConfigError, match="modality 'b'.*one length"):
        _mfm(d, "model.fusion='mfn'")


def test_surrogate_reads_only_the_observed_modalities(data):
    mfm = _mfm(data, "model.missing='surrogate'", "model.objective='wae'").eval()
    batch = data["train"][np.arange(48)]
    hidden = batch.observe_only(["a"])
    codes = mfm.codes(hidden)["z_a_b"]
    changed = _batch_with(hidden, {"a": hidden.x["a"], "b": torch.randn_like(hidden.x["b"])})
    torch.testing.assert_close(mfm.codes(changed)["z_a_b"], codes)
    # the code is the surrogate's, not the prior's mean
    assert codes.abs().sum() > 0
    with torch.no_grad():
        h = mfm.guide.encode(hidden)
        torch.testing.assert_close(codes, mfm.guide.surrogate(hidden, h, "b", mfm.codes(hidden)["z_y"]))


def test_surrogate_learns_the_missing_modalitys_code():
    """Trained on its MSE term alone (the encoders fixed), the surrogate predicts the full data's code of a hidden
    modality from the other one better than the prior mean (zero) does, on held-out samples."""
    gen = LinearGaussianMFM.random({"a": (6, 3), "b": (6, 2)}, z_y_dim=2, seed=1)
    d = gen.sample({"train": 300, "test": 200}, seed=0)
    mfm = _mfm(d, "model.missing='surrogate'")
    opt = torch.optim.Adam(mfm.guide.S.parameters(), lr=1e-2)
    for epoch in range(20):
        for b in d["train"].loader(100, shuffle=True, seed=epoch):
            loss = mfm.surrogate_loss(b) / len(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
    test = d["test"][np.arange(200)].without_labels()
    with torch.no_grad():
        full = mfm.codes(test)["z_a_b"]
        guess = mfm.codes(test.observe_only(["a"]))["z_a_b"]
    surrogate_mse = float(((guess - full) ** 2).sum(-1).mean())
    prior_mse = float((full**2).sum(-1).mean())
    assert surrogate_mse < 0.5 * prior_mse, (surrogate_mse, prior_mse)
