"""The paper's objective: the minibatch MMD estimator, Delta codes, and the WAE loss against a hand computation."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_mfm.config import Config, ConfigError
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.data.synthetic import LinearGaussianMFM
from pyro_mfm.guide import point_codes
from pyro_mfm.infer.objective import Objective, kernel, mmd
from pyro_mfm.model import MFM


def test_mmd_hand_computation_tiny_example():
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.0], [2.0]])
    e1, e4 = math.exp(-1), math.exp(-4)
    # gaussian kernel, s = dim^2 = 1: k = exp(-d^2)
    kxx, kyy, kxy = (2 + 2 * e1) / 4, (2 + 2 * e4) / 4, (1 + e4 + 2 * e1) / 4
    assert float(mmd(x, y)) == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-6)
    assert float(mmd(x, y)) == pytest.approx((1 - e1) / 2, rel=1e-6)
    assert float(mmd(x, y, estimator="unbiased")) == pytest.approx(e1 + e4 - 2 * kxy, rel=1e-6)
    # imq with s = 2: k = 2 / (2 + d^2)
    k = lambda d2: 2 / (2 + d2)  # noqa: E731
    want = (2 + 2 * k(1)) / 4 + (2 + 2 * k(4)) / 4 - 2 * (1 + k(4) + 2 * k(1)) / 4
    assert float(mmd(x, y, kind="imq", scale=2.0)) == pytest.approx(want, rel=1e-6)


def test_default_gaussian_kernel_is_the_papers():
    """The authors' kernel: exp(-mean_d (x_d - y_d)^2 / dim)."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 7, generator=g), torch.randn(4, 7, generator=g)
    paper = torch.exp(-((x[:, None, :] - y[None, :, :]) ** 2).mean(-1) / 7)
    torch.testing.assert_close(kernel(x, y), paper)


def _mmd_draws(shift, estimator, reps=300, n=40, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    vals = [
        float(mmd(torch.randn(n, k, generator=g) + shift, torch.randn(n, k, generator=g), estimator=estimator))
        for _ in range(reps)
    ]
    return np.mean(vals), np.std(vals) / np.sqrt(reps)


def test_unbiased_mmd_is_zero_in_expectation_for_prior_samples():
    mean, se = _mmd_draws(0.0, "unbiased")
    assert abs(mean) < 4 * se


def test_biased_mmd_expectation_for_prior_samples_matches_closed_form():
    """E[biased MMD] = (1/n + 1/m)(1 - E k(x, x')), and E exp(-|x - x'|^2 / s) = (1 + 4 / s)^(-k/2) for
    x, x' ~ N(0, I_k) independent."""
    n, k = 40, 3
    mean, se = _mmd_draws(0.0, "biased", n=n, k=k)
    want = (2 / n) * (1 - (1 + 4 / k**2) ** (-k / 2))
    assert abs(mean - want) < 4 * se


@pytest.mark.parametrize("estimator", ["biased", "unbiased"])
def test_mmd_is_positive_for_shifted_samples(estimator):
    null, se0 = _mmd_draws(0.0, estimator)
    shifted, se1 = _mmd_draws(1.0, estimator)
    assert shifted - null > 4 * np.hypot(se0, se1)


@pytest.fixture(scope="module")
def seq_data():
    gen = LinearGaussianMFM.random({"a": (6, 3), "b": (6, 2), "v": 4}, z_y_dim=2, seed=3)
    return gen.sample({"train": 64}, missing={"b": 0.3}, seed=0)


def _mfm(data, *overrides):
    cfg = Config().override(
        ["model.hidden=16", "model.objective='wae'", "model.sequence_net='lstm'", "model.lstm_hidden=8"]
        + list(overrides)
    )
    pyro.set_rng_seed(0)
    return MFM(data.schema, cfg.model, feature_statistics(data["train"]))


def test_wae_guide_codes_are_deterministic_delta_sites(seq_data):
    mfm = _mfm(seq_data).eval()
    batch = seq_data["train"][np.arange(16)]
    t1 = pyro.poutine.trace(mfm.guide).get_trace(batch)
    t2 = pyro.poutine.trace(mfm.guide).get_trace(batch)
    missing = ~batch.present["b"]
    assert missing.any()
    codes = mfm.codes(batch.without_labels())
    for site in ["z_y", "z_a_a", "z_a_b", "z_a_v"]:
        assert isinstance(
            t1.nodes[site]["fn"].base_dist if hasattr(t1.nodes[site]["fn"], "base_dist") else t1.nodes[site]["fn"],
            pyro.distributions.Delta,
        )
        seen = batch.present.get(site[4:], torch.ones(16, dtype=torch.bool))
        assert torch.equal(t1.nodes[site]["value"][seen], t2.nodes[site]["value"][seen])
        torch.testing.assert_close(t1.nodes[site]["value"][seen], codes[site][seen])
    # a missing modality's factor is a fresh draw of its prior with missing = 'poe' (its mean code is the prior's)
    assert not torch.equal(t1.nodes["z_a_b"]["value"][missing], t2.nodes["z_a_b"]["value"][missing])
    assert torch.all(codes["z_a_b"][missing] == 0)


def test_wae_loss_equals_hand_computation(seq_data):
    """lambda_mmd = 0: the loss is -(sum lambda_x log p(x_m | codes) + lambda_y log p(y | codes) + sum log p(r_m |
    codes)) / B, r_m whether modality m is recorded; with
    lambda_mmd > 0 it adds lambda_mmd * MMD(codes, prior draws) per factor, from the same random draws."""
    mfm = _mfm(
        seq_data,
        "model.lambda_mmd=0.0",
        "model.lambda_x={'a': 0.5, 'b': 2.0, 'v': 1.0}",
        "model.missingness='informative'",
    ).eval()
    batch = seq_data["train"][np.arange(32)]
    obj = Objective(mfm)
    with torch.no_grad():
        loss = float(obj(batch))
        c = mfm.codes(batch.without_labels())
        f_y = mfm.model.G_y(c["z_y"])
        total = 0.0
        for m, lam in {"a": 0.5, "b": 2.0, "v": 1.0}.items():
            loc = mfm.model.F[m](torch.cat([f_y, mfm.model.G[m](c[f"z_a_{m}"])], -1))
            lp = mfm.p_x[m].distribution(loc, batch.present[m], batch.steps.get(m)).log_prob(batch.x[m])
            total += lam * float(lp.sum())
        total += float(mfm.D.distribution(f_y).log_prob(batch.y).sum())
        for i, m in enumerate(mfm.model.recorded):  # whether each modality that training lacks is recorded
            p_r = torch.distributions.Bernoulli(logits=mfm.model.R(c["z_y"])[:, i])
            total += float(p_r.log_prob(batch.present[m].float()).sum())
    assert mfm.model.recorded  # the data lack modalities
    assert loss == pytest.approx(-total / 32, rel=1e-5)
    mfm2 = _mfm(seq_data, "model.lambda_mmd={'z_y': 2.0, 'a': 0.0, 'b': 0.0, 'v': 0.0}").eval()
    obj2 = Objective(mfm2)
    with torch.no_grad():
        base = Objective(_mfm(seq_data, "model.lambda_mmd=0.0").eval())(batch)
        torch.manual_seed(7)
        with_mmd = float(obj2(batch))
        torch.manual_seed(7)  # the same random draws: the guide's, then the prior's
        code = pyro.poutine.trace(mfm2.guide).get_trace(batch).nodes["z_y"]["value"]
        torch.testing.assert_close(code, mfm2.codes(batch.without_labels())["z_y"])
        want = float(base) + 2.0 * float(mmd(code, torch.randn_like(code)))
    assert with_mmd == pytest.approx(want, rel=1e-5)


def test_lambda_mmd_table_must_name_every_factor(seq_data):
    with pytest.raises(ConfigError, match="lambda_mmd.*'v'"):
        Objective(_mfm(seq_data, "model.lambda_mmd={'z_y': 1.0, 'a': 1.0, 'b': 1.0}"))


def test_wae_mmd_gradient_pulls_codes_toward_the_prior(seq_data):
    """Training on the MMD term alone makes the z_y codes' MMD to N(0, I) smaller."""
    mfm = _mfm(seq_data, "model.lambda_mmd=100.0", "model.lambda_x=1e-6", "model.lambda_y=1e-6")
    batch = seq_data["train"][np.arange(64)]
    obj = Objective(mfm)
    opt = torch.optim.Adam(mfm.parameters(), lr=1e-2)

    def code_mmd():
        with torch.no_grad():
            code = mfm.codes(batch.without_labels())["z_y"]
            return float(
                mmd(
                    code,
                    torch.randn(4000, code.shape[-1], generator=torch.Generator().manual_seed(1)),
                    estimator="unbiased",
                )
            )

    mfm.train()
    with torch.no_grad():  # start far from the prior
        mfm.guide.q_y["a"].net[-1].bias[:2] += 30.0
    before = code_mmd()
    for _ in range(60):
        opt.zero_grad()
        obj(batch).backward()
        opt.step()
    assert code_mmd() < before / 4


def test_point_codes_puts_each_latent_site_at_its_mean_and_draws_only_where_masked(seq_data):
    mfm = _mfm(seq_data, "model.objective='elbo'").eval()
    batch = seq_data["train"][np.arange(32)].without_labels()
    guide = mfm.guide
    features = guide.features(batch)
    q_y = guide.posterior_z_y(batch, features)
    codes = guide.codes(batch, features)
    torch.testing.assert_close(codes["z_y"], q_y.mean)
    for m in ("a", "b", "v"):  # each z_a,m at its mean given the mean of z_y; the prior's mean 0 where x_m is missing
        torch.testing.assert_close(codes[f"z_a_{m}"], guide.posterior_z_a(batch, features.h, m, q_y.mean)[0])
    missing = ~batch.present["b"]
    assert missing.any() and torch.all(codes["z_a_b"][missing] == 0)

    draws = [pyro.poutine.trace(point_codes(masked="sample")(guide.program)).get_trace(batch) for _ in range(2)]
    values = [t.nodes["z_a_b"]["value"] for t in draws]
    torch.testing.assert_close(values[0][~missing], codes["z_a_b"][~missing])
    assert torch.equal(values[0][~missing], values[1][~missing])
    assert not torch.equal(values[0][missing], values[1][missing])  # draws of the prior N(0, I) where x_b is missing
    with pytest.raises(ValueError, match="masked must be"):
        point_codes(masked="median")
