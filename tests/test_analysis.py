"""Posterior analysis: ArviZ conversion (groups, dims, ArviZ functions, log likelihood), PIT and coverage of
calibrated and miscalibrated predictions against derived bounds, factor contributions on decoders with a known
answer, conditional generation, missingness and filled-in baselines."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from pyro_mfm import analysis  # noqa: E402
from pyro_mfm.config import ModelConfig  # noqa: E402
from pyro_mfm.data import LinearGaussianMFM  # noqa: E402
from pyro_mfm.data.stats import feature_statistics  # noqa: E402
from pyro_mfm.infer import Prediction  # noqa: E402
from pyro_mfm.model import MFM  # noqa: E402


def _model(label="categorical", modalities=None, seed=0, n=40, **model):
    modalities = modalities or {"a": 5, "b": 4}
    gen = LinearGaussianMFM.random(modalities, label=label, num_classes=3, label_dim=2, seed=seed)
    data = gen.sample({"train": n, "test": n}, missing={list(modalities)[-1]: 0.3}, seed=seed)
    torch.manual_seed(seed)
    cfg = ModelConfig(**{"z_y_dim": 3, "z_a_dim": 2, "f_y_dim": 4, "f_a_dim": 3, "hidden": 8, **model})
    return MFM(data.schema, cfg, feature_statistics(data["train"])).eval(), data


def _dkw(n: int, alpha: float = 1e-3) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: P(sup_u |F_n(u) - u| > eps) <= 2 exp(-2 n eps^2) = alpha for uniform draws."""
    return math.sqrt(math.log(2 / alpha) / (2 * n))


def _ks(u) -> float:
    u = np.sort(np.asarray(u).reshape(-1))
    n = len(u)
    return float(max(np.max(np.arange(1, n + 1) / n - u), np.max(u - np.arange(n) / n)))


# ------------------------------------------------------------------------------------------------ ArviZ
def test_to_arviz_groups_dims_and_arviz_functions():
    mfm, data = _model()
    test = data["test"]
    idata = analysis.to_arviz([mfm, mfm], test, num_samples=30, seeds=[0, 1])
    assert set(idata.groups()) >= {"posterior", "posterior_predictive", "log_likelihood", "observed_data"}
    n = int(np.sum(test.label_present))
    assert idata.posterior["z_y"].dims == ("chain", "draw", "sample", "z_y_dim")
    assert idata.posterior["z_y"].shape == (2, 30, n, 3)
    assert idata.posterior["y_point"].dims == ("chain", "draw", "sample", "y_dim")
    assert list(idata.posterior["y_dim"].values) == [0, 1, 2]
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "sample")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "sample")
    assert idata.observed_data["y"].dims == ("sample",)
    np.testing.assert_array_equal(idata.observed_data["y"].values, np.asarray(test.labels)[test.label_present])
    # the chains are distinct draw sets
    assert not np.allclose(idata.posterior["z_y"][0], idata.posterior["z_y"][1])
    summary = az.summary(idata, var_names=["y_point"], coords={"sample": idata.posterior["sample"][:3]})
    assert {"r_hat", "ess_bulk", "ess_tail"} <= set(summary.columns) and len(summary) == 9
    loo = az.loo(idata)
    assert np.isfinite(loo["elpd_loo"])
    az.plot_ppc(idata, num_pp_samples=10)
    az.plot_khat(loo)
    plt.close("all")


def test_to_arviz_log_likelihood_matches_direct_computation_and_guide():
    mfm, data = _model()
    test = data["test"]
    keep = np.asarray(test.label_present)
    state = torch.get_rng_state()
    idata = analysis.to_arviz(mfm, test, observed=["a"], num_samples=400, seeds=[5])
    assert torch.equal(state, torch.get_rng_state())  # the caller's random state is untouched
    z = torch.as_tensor(idata.posterior["z_y"].values[0])  # (draw, sample, k)
    y = torch.as_tensor(np.asarray(test.labels)[keep])
    with torch.no_grad():
        direct = mfm.label_distribution(z).log_prob(y).numpy()
    np.testing.assert_allclose(idata.log_likelihood["y"].values[0], direct, rtol=1e-5, atol=1e-5)
    # the draws come from q(z_y | x_a): their mean matches the guide's posterior mean within Monte Carlo error
    batch = test.subset(np.flatnonzero(keep)).batch(np.arange(int(keep.sum())))
    q = mfm.posterior_z_y(batch.observe_only(["a"]).without_labels())
    sd = q.variance.sqrt().detach().numpy()
    err = np.abs(z.numpy().mean(0) - q.mean.detach().numpy()) / (sd / math.sqrt(400))
    assert err.max() < 5.5
    # the same seed gives the same draws
    again = analysis.to_arviz(mfm, test, observed=["a"], num_samples=400, seeds=[5])
    np.testing.assert_array_equal(again.posterior["z_y"].values, idata.posterior["z_y"].values)


def test_to_arviz_conditioned_on_labels_and_regression_dims():
    mfm, data = _model(label="regression")
    idata = analysis.to_arviz(mfm, data["test"], num_samples=20, seeds=[0, 1, 2], condition_on_labels=True)
    n = int(np.sum(data["test"].label_present))
    assert idata.posterior["z_y"].shape[:3] == (3, 20, n)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "sample", "y_dim")
    assert idata.observed_data["y"].shape == (n, 2)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "sample")  # summed over the label's outputs
    assert idata.attrs["z_y_given"] == "observed modalities and the label"
    assert np.isfinite(az.loo(idata)["elpd_loo"])


# ------------------------------------------------------------------------------------------------ calibration
def _prediction(kind, point=None, samples=None):
    return Prediction(
        point=point,
        lower=None,
        upper=None,
        samples=samples,
        log_density=None,
        z_y=None,
        observed=(),
        interval=0.9,
        kind=kind,
    )


def test_pit_regression_calibrated_uniform_and_too_narrow_detected():
    rng = np.random.default_rng(0)
    n, s = 4000, 30
    mu, sd = rng.normal(size=(n, 1)), rng.uniform(0.5, 2.0, size=(n, 1))
    y = mu + sd * rng.normal(size=(n, 1))
    calibrated = _prediction("normal", mu, mu + sd * rng.normal(size=(s, n, 1)))
    u = analysis.pit_values(calibrated, y)
    assert u.shape == (n, 1) and np.all((u >= 0) & (u <= 1))
    assert _ks(u) < _dkw(n)
    narrow = _prediction("normal", mu, mu + 0.5 * sd * rng.normal(size=(s, n, 1)))
    assert _ks(analysis.pit_values(narrow, y)) > _dkw(n)
    absent = np.ones(n, bool)
    absent[:10] = False
    assert np.isnan(analysis.pit_values(calibrated, y, present=absent)[:10]).all()


def test_pit_categorical_oracle_uniform_and_overconfident_detected():
    gen = LinearGaussianMFM.random({"a": 4, "b": 3}, label="categorical", num_classes=4, seed=1)
    ds = gen.sample({"test": 4000}, missing=0.3, seed=2)["test"]
    probs = gen.predict_y(ds)  # the Bayes predictive: calibrated by construction
    y = np.asarray(ds.labels)
    u = analysis.pit_values(_prediction("categorical", probs), y)
    assert u.shape == (4000,)
    assert _ks(u) < _dkw(4000)
    sharp = probs**4 / (probs**4).sum(-1, keepdims=True)
    assert _ks(analysis.pit_values(_prediction("categorical", sharp), y)) > _dkw(4000)
    # coverage of the smallest class sets equals their mean mass within a binomial bound (n = 4000)
    cov = analysis.coverage_curve(_prediction("categorical", probs), y, levels=[0.5, 0.8, 0.9])
    tol = 4 * np.sqrt(cov["expected"] * (1 - cov["expected"]) / 4000)
    assert np.all(np.abs(cov["coverage"] - cov["expected"]) < tol)


def test_pit_bernoulli_and_regression_coverage():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=(3000, 2))
    y = (rng.uniform(size=p.shape) < p).astype(int)
    assert _ks(analysis.pit_values(_prediction("bernoulli", p), y)) < _dkw(6000)
    mu = rng.normal(size=(3000, 1))
    draws = mu + rng.normal(size=(200, 3000, 1))
    cov = analysis.coverage_curve(_prediction("normal", mu, draws), mu + rng.normal(size=(3000, 1)), levels=[0.5, 0.9])
    assert np.all(np.abs(cov["coverage"] - [0.5, 0.9]) < 0.04)


def test_prediction_sets_smallest_with_mass():
    probs = np.array([[0.5, 0.3, 0.2], [0.05, 0.9, 0.05], [0.34, 0.33, 0.33]])
    member, mass = analysis.prediction_sets(probs, 0.8)
    np.testing.assert_array_equal(member, [[1, 1, 0], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_allclose(mass, [0.8, 0.9, 1.0])


# ------------------------------------------------------------------------------------------------ factors
def test_variance_contributions_linear_decoder_exact():
    rng = np.random.default_rng(0)
    W, V = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    z_y, z_a = rng.normal(size=(30, 3)), rng.normal(size=(20, 2))
    fc = analysis.variance_contributions(
        lambda a, b: a @ torch.as_tensor(W).T + b @ torch.as_tensor(V).T, torch.as_tensor(z_y), torch.as_tensor(z_a)
    )
    np.testing.assert_allclose(fc.shared, np.var(z_y @ W.T, axis=0), rtol=1e-10)
    np.testing.assert_allclose(fc.specific, np.var(z_a @ V.T, axis=0), rtol=1e-10)
    np.testing.assert_allclose(fc.total, fc.shared + fc.specific, rtol=1e-10)  # additive: no interaction


@pytest.mark.parametrize("codes", ["posterior", "prior"])
def test_factor_contributions_decoder_that_ignores_one_factor(codes):
    mfm, data = _model(f_y_dim=8, f_a_dim=8, hidden=16)
    with torch.no_grad():
        for p in mfm.model.G["a"].parameters():  # f_a,a constant: the decoder of "a" ignores z_a,a
            p.zero_()
    fc = analysis.factor_contributions(mfm, data["test"], "a", codes=codes, num_codes=16)
    assert fc.shared.shape == (5,)
    assert np.all(fc.specific < 1e-10 * (1 + fc.shared)) and np.all(fc.shared > 0)
    np.testing.assert_allclose(fc.shared_fraction, 1.0)
    other = analysis.factor_contributions(mfm, data["test"], "b", codes=codes, num_codes=16)
    assert other.specific.sum() > 0
    with torch.no_grad():
        for p in mfm.model.G_y.parameters():  # now f_y is constant too: nothing varies in "a"
            p.zero_()
    fc = analysis.factor_contributions(mfm, data["test"], "b", codes=codes, num_codes=16)
    assert np.all(fc.shared < 1e-10 * (1 + fc.specific))
    np.testing.assert_allclose(fc.shared_fraction, 0.0, atol=1e-8)


def test_factor_contributions_sequence_and_conditional_generation():
    mfm, data = _model(modalities={"s": (6, 3), "v": 4})
    fc = analysis.factor_contributions(mfm, data["test"], "s", num_codes=8)
    assert fc.shared.shape == (6, 3) and fc.over_time().shape == (6,)
    assert 0 <= fc.overall() <= 1
    with torch.no_grad():
        for p in mfm.model.G["v"].parameters():
            p.zero_()
    gen = analysis.conditional_generation(mfm, "v", np.zeros((2, 3)), np.random.default_rng(0).normal(size=(5, 2)))
    assert gen.shape == (2, 5, 4)
    np.testing.assert_allclose(
        np.broadcast_to(gen[:, :1], gen.shape), gen, atol=1e-6
    )  # z_a ignored: every column of a row is the same
    codes = analysis.posterior_codes(mfm, data["test"], observed=["v"])
    assert codes["z_y"].shape == (len(data["test"]), 3) and codes["z_a_s"].shape == (len(data["test"]), 2)


# ------------------------------------------------------------------------------------------------ baselines
def test_with_missing_and_filled_classifier():
    _, data = _model(n=200)
    train = data["train"]
    same = analysis.with_missing(train, 0.0)
    for m in train.schema.names:
        np.testing.assert_array_equal(same.present[m], train.present[m])
    none = analysis.with_missing(train, 1.0, min_observed=1)
    kept = np.stack([none.present[m] for m in train.schema.names], 1)
    assert np.all(kept.sum(1) == 1)
    assert np.all(np.asarray(none.features["b"])[~none.present["b"]] == 0)
    half = analysis.with_missing(train, 0.5, seed=1)
    assert 0.3 < np.mean(half.present["a"]) < 0.7
    for fill in ("zero", "mean"):
        rec = analysis.filled_classifier(train, data["test"], [["a"], ["a", "b"]], fill=fill)
        assert [r["observed"] for r in rec] == [["a"], ["a", "b"]]
        assert all(0 <= r["accuracy"] <= 1 for r in rec)


# ------------------------------------------------------------------------------------------------ notebooks
def test_notebook_setup_finds_the_repository_and_its_configuration(tmp_path):
    setup = analysis.notebook_setup(start=Path(__file__).parent)
    assert (setup.root / "models" / "uci_mfeat.toml").is_file() and set(setup.data) == {"train", "valid", "test"}
    config = setup.config(8, "train.seed=3")
    assert (config.train.epochs, config.train.kl_warmup, config.train.progress, config.train.seed) == (8, 2, False, 3)
    with pytest.raises(FileNotFoundError, match="models/uci_mfeat.toml"):
        analysis.notebook_setup(start=tmp_path)
