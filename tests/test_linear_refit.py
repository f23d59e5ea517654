"""``model.linear_refit``: each observed subset's posterior of z_y refitted after training to the model's own full
posterior (:mod:`pyro_mfm.infer.refit`), stored with the model, used by prediction, and left out where a sample
has a known absence. Its accuracy on the linear-Gaussian oracle: ``tests/test_train.py``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer.checkpoint import load_model
from pyro_mfm.infer.predict import predict
from pyro_mfm.infer.refit import refit_subsets
from pyro_mfm.infer.train import fit
from pyro_mfm.model import MFM
from tests.test_hardening import TINY

REFIT = ["model.expert='linear'", "model.linear_refit=true"]


def product_of_experts(guide, batch):
    """The guide's posterior with every refitted subset set aside (their buffers zeroed: the state before fitting)."""
    guide.subset_posteriors.reset()
    return guide.posterior_z_y(batch)


def test_every_subset_takes_its_own_posterior_stored_with_the_model(tmp_path):
    gen = LinearGaussianMFM.random({"a": 4, "b": 6, "c": 5}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    data = gen.sample({"train": 600, "valid": 200}, missing=0.0, seed=1)
    config = Config().override(TINY + REFIT + ["train.epochs=3"])
    mfm = fit(config, data, out_dir=tmp_path / "run").mfm
    guide = mfm.guide
    assert all(guide.subset_posteriors.fitted(code) for code in range(1, 7))  # 600 samples observe every subset
    assert not guide.subset_posteriors.fitted(7)  # but that of every modality, whose posterior is the product
    # best.pt carries the refit: the reloaded model predicts the same numbers
    reloaded = load_model(tmp_path / "run")[0]
    assert reloaded.guide.subset_posteriors.fitted(1)
    a = predict(mfm, data["valid"], ["a"], num_samples=10, seed=0, keep_samples=False)
    b = predict(reloaded, data["valid"], ["a"], num_samples=10, seed=0, keep_samples=False)
    np.testing.assert_array_equal(a.point, b.point)
    batch = data["valid"].batch(np.arange(100)).without_labels()
    with torch.no_grad():
        full, one = guide.posterior_z_y(batch), guide.posterior_z_y(batch.observe_only(["a"]))
        poe_full, poe_one = product_of_experts(guide, batch), guide.posterior_z_y(batch.observe_only(["a"]))
    # the subset of every modality keeps the product of experts; a smaller subset's own posterior is not the
    # product of its experts
    torch.testing.assert_close(full.loc, poe_full.loc)
    torch.testing.assert_close(full.covariance_matrix, poe_full.covariance_matrix)
    assert float((one.loc - poe_one.loc).abs().max()) > 1e-3


def test_a_known_absence_keeps_the_product_of_experts():
    rng = np.random.default_rng(0)
    n = 300
    y = rng.normal(size=n)
    present = {"a": np.ones(n, bool), "b": rng.random(n) > 0.5}
    x_b = rng.normal(size=(n, 3)) * present["b"][:, None]
    data = from_arrays({"a": y[:, None] + rng.normal(size=(n, 2)), "b": x_b}, y + 2.0 * ~present["b"], present=present)
    mfm = fit(Config().override(TINY + REFIT + ["model.missingness='informative'"]), data).mfm
    guide = mfm.guide
    assert guide.absent_names == ["b"] and guide.subset_posteriors.fitted(1)
    batch = data["train"].batch(np.arange(len(data["train"]))).without_labels()
    absent = batch.absent["b"]
    with torch.no_grad():
        q, q_a = guide.posterior_z_y(batch), guide.posterior_z_y(batch.observe_only(["a"]))
        poe = product_of_experts(guide, batch)
        poe_a = guide.posterior_z_y(batch.observe_only(["a"]))
    torch.testing.assert_close(q.loc[absent], poe.loc[absent])  # their absence's expert counts, as trained
    # with b hidden on purpose (neither present nor known absent) every sample takes the subset's own posterior
    assert float((q_a.loc - poe_a.loc).abs().max()) > 1e-3


def test_more_modalities_than_subsets_can_be_kept_keep_the_product_of_experts_with_a_one_line_warning():
    rng = np.random.default_rng(0)
    data = from_arrays({f"m{i}": rng.normal(size=(30, 1)) for i in range(9)}, rng.normal(size=30), name="nine")
    with pytest.warns(RuntimeWarning, match=r"model\.linear_refit: nine has 9 modalities, more than 8") as caught:
        mfm = MFM(data.schema, Config().override(REFIT).model, feature_statistics(data["train"]))
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    assert getattr(mfm.guide, "subset_posteriors", None) is None
    assert refit_subsets(mfm, data["train"]) == {}


def test_leave_one_out_residuals_are_those_of_refits_without_the_sample():
    """The subset posterior's spread is the regression's error on unseen samples: without groups, the residual of
    each sample is, to float64 rounding, that of a ridge regression (at the chosen penalty) refitted without it."""
    from sklearn.linear_model import Ridge

    from pyro_mfm.infer.refit import held_out_regression

    rng = np.random.default_rng(0)
    for features in (6, 90):  # fewer features than samples, and more (the kernel's form)
        x = rng.normal(size=(40, features))
        y = x @ rng.normal(size=(features, 3)) + rng.normal(size=(40, 3))
        reg, held = held_out_regression(x, y)
        fitted = y - reg.predict(x)
        for i in range(len(x)):
            keep = np.arange(len(x)) != i
            refit = Ridge(alpha=reg.alpha_).fit(x[keep], y[keep])
            np.testing.assert_allclose(held[i], y[i] - refit.predict(x[i : i + 1])[0], rtol=1e-8, atol=1e-10)
        # and they are larger than the fitted residuals, which the regression has seen
        assert (np.abs(held) > np.abs(fitted)).all()


def test_where_samples_name_their_groups_the_spread_is_the_error_on_new_groups():
    """Features that tell a training speaker apart predict that speaker's offset within the training split but not
    on a new speaker: leave-one-out sees the speaker's other samples and reports a small error, folds of whole
    speakers the error the regression makes on speakers it has not seen. With the offset's variance four times the
    noise's, that error is about five times the noise's, so the grouped spread is well above twice the other."""
    from pyro_mfm.infer.refit import group_folds, held_out_regression

    rng = np.random.default_rng(0)
    speakers, per = 30, 20
    g = np.repeat(np.arange(speakers), per)
    identity = rng.normal(size=(speakers, 40))[g] + 0.3 * rng.normal(size=(speakers * per, 40))  # a code per speaker
    target = 2.0 * rng.normal(size=(speakers, 2))[g] + rng.normal(size=(speakers * per, 2))
    _, by_sample = held_out_regression(identity, target)
    _, by_group = held_out_regression(identity, target, g.astype(str))
    assert (by_group**2).mean() > 2 * (by_sample**2).mean()
    # no folds where the samples name no groups, each sample its own, or fewer groups than folds
    assert group_folds(None) is None and group_folds(np.arange(50).astype(str)) is None
    assert group_folds(np.repeat(["a", "b", "c"], 10)) is None
    for train, test in group_folds(g):  # a speaker is never on both sides of a fold
        assert not set(g[train]) & set(g[test])


def test_a_split_larger_than_the_cap_is_refitted_from_a_fixed_random_subset_of_it(monkeypatch):
    """The regressions hold their inputs in memory: a larger training split is read through a subset of
    ``MAX_SAMPLES`` samples, the same every time, and the refit is the one that subset alone gives."""
    import pyro_mfm.infer.refit as refit

    gen = LinearGaussianMFM.random({"a": 4, "b": 6}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    train = gen.sample({"train": 600}, missing=0.0, seed=1)["train"]
    mfm = MFM(train.schema, Config().override(REFIT).model, feature_statistics(train))
    monkeypatch.setattr(refit, "MAX_SAMPLES", 250)
    capped = refit.refit_subsets(mfm, train)
    state = {k: v.clone() for k, v in mfm.guide.subset_posteriors.state_dict().items()}
    capped_again, held_out = refit.refit_subsets(mfm, train, return_held_out=True)
    assert capped_again == capped  # the same subset every time
    monkeypatch.setattr(refit, "MAX_SAMPLES", 10_000)
    chosen = np.sort(np.random.default_rng(0).choice(600, 250, replace=False))
    sub = train.subset(chosen)
    assert refit.refit_subsets(mfm, sub) == capped
    # the held-out means of the samples read are the subset's own, each at its place in the whole split; NaN
    # for the samples the cap left out
    _, own = refit.refit_subsets(mfm, sub, return_held_out=True)
    for code, table in held_out[0].items():
        torch.testing.assert_close(table[chosen], own[0][code])
        assert torch.isnan(table[np.setdiff1d(np.arange(600), chosen)]).all()
    for key, value in mfm.guide.subset_posteriors.state_dict().items():
        torch.testing.assert_close(value, state[key])
    refit.refit_subsets(mfm, train)  # all 600 samples: another fit
    assert any(not torch.equal(v, state[k]) for k, v in mfm.guide.subset_posteriors.state_dict().items())


def test_the_refit_of_several_splits_is_that_of_their_samples_together():
    """Training refits on the training and the validation split at once (features and posteriors, no labels): the
    result is the regression on all their samples, whichever part each sample comes from."""
    from pyro_mfm.infer.refit import refit_subsets

    gen = LinearGaussianMFM.random({"a": 4, "b": 6}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    train = gen.sample({"train": 500}, missing=0.0, seed=1)["train"]
    mfm = MFM(train.schema, Config().override(REFIT).model, feature_statistics(train))
    whole = refit_subsets(mfm, train)
    state = {k: v.clone() for k, v in mfm.guide.subset_posteriors.state_dict().items()}
    order = np.random.default_rng(1).permutation(500)
    assert refit_subsets(mfm, [train.subset(order[:380]), train.subset(order[380:])]) == whole
    for key, value in mfm.guide.subset_posteriors.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=1e-5, atol=1e-6)


def test_the_calibration_draws_from_each_subsets_refitted_posterior_as_prediction_does():
    # the held-out objective that fits the label's temperatures and the ensemble's weights scores the predictive
    # that prediction reports: a refitted subset's own posterior where one serves the sample, else the product
    from pyro_mfm.infer.calibrate import HeldOutNLPD, _encoded, calibration_subsets

    rng = np.random.default_rng(0)
    n = 400
    y = rng.normal(size=n)
    present = {"a": np.ones(n, bool), "b": rng.random(n) > 0.3, "c": np.ones(n, bool)}
    x_b = (y[:, None] + rng.normal(size=(n, 3))) * present["b"][:, None]
    features = {"a": y[:, None] + rng.normal(size=(n, 2)), "b": x_b, "c": rng.normal(size=(n, 4)) + y[:, None]}
    data = from_arrays(features, y + 2.0 * ~present["b"], present=present)
    mfm = fit(Config().override(TINY + REFIT + ["model.missingness='informative'"]), data).mfm
    guide = mfm.guide
    assert guide.absent_names == ["b"] and guide.subset_posteriors.fitted(1)
    mfm.eval()
    parts = _encoded(mfm, data["train"], 64, torch.device("cpu"))
    subsets = calibration_subsets(mfm.names)
    objective = HeldOutNLPD(mfm, parts, subsets, 3, seed=0)
    k = mfm.config.z_y_dim
    t, r = guide.expert_log_temperature, guide.expert_redundancy
    served = 0
    for i, (batch, _, _, experts) in enumerate(parts):
        noise = torch.randn(3, len(batch), k, generator=torch.Generator().manual_seed(i))
        for s in range(0, len(subsets), objective.chunk):
            observed, absent = (
                objective.observed[i][s : s + objective.chunk],
                objective.absent[i][s : s + objective.chunk],
            )
            refitted = objective._refitted_chunk(i, s)
            with torch.no_grad():  # at zero noise the posteriors' means; with noise, the refitted rows' draws
                centre = objective.product_draws(experts, observed, t, r, torch.zeros_like(noise[:1]), absent, refitted)
                z = objective.product_draws(experts, observed, t, r, noise, absent, refitted)
            for j, obs in enumerate(subsets[s : s + objective.chunk]):
                with torch.no_grad():
                    q = guide.posterior_z_y(batch.observe_only(obs))
                torch.testing.assert_close(centre[0, j], q.loc, rtol=1e-4, atol=1e-4)
                rows = torch.zeros(len(batch), dtype=torch.bool) if refitted is None else refitted[0][j]
                draws = q.loc + (q.scale_tril @ noise.unsqueeze(-1)).squeeze(-1)  # as Posterior.rsample draws
                torch.testing.assert_close(z[:, j, rows], draws[:, rows], rtol=1e-4, atol=1e-4)
                served += int(rows.sum())
    assert served > 0  # some rows drew from a refitted posterior
    # with the refit's held-out means (here: 5 for every other sample, none for the rest), a row that a refitted
    # posterior serves is centred on its held-out mean where it has one, else on the refit's own mean
    n_train = len(data["train"])
    held = {1: torch.full((n_train, k), float("nan"), dtype=torch.float64)}
    held[1][::2] = 5.0
    objective = HeldOutNLPD(mfm, parts, subsets, 3, seed=0, held_out=held)
    assert subsets[0] == ("a",)
    for i, (batch, _, _, experts) in enumerate(parts):
        rows, loc, codes, table = objective._refitted_chunk(i, 0)
        first = (rows[:1], loc[:1], codes[:1], table)  # the subset of a alone
        with torch.no_grad():
            zero = torch.zeros(1, len(batch), k)
            centre = objective.product_draws(
                experts, objective.observed[i][:1], t, r, zero, objective.absent[i][:1], first
            )[0, 0]
            q = guide.posterior_z_y(batch.observe_only(["a"]))
        even = batch.index % 2 == 0
        torch.testing.assert_close(centre[even], torch.full_like(centre[even], 5.0))
        torch.testing.assert_close(centre[~even], q.loc[~even], rtol=1e-4, atol=1e-4)
    guide.subset_posteriors.reset()  # with nothing refitted, every row is the product of experts, as before
    assert HeldOutNLPD(mfm, parts, subsets, 3, seed=0).refitted == [None] * len(parts)


def test_each_samples_held_out_mean_is_the_refit_without_it():
    """The calibration scores the validation split, which the refit read, with each sample's held-out means: the
    regression without that sample (leave-one-out where the samples name no groups), NaN where a sample does not
    observe the subset."""
    gen = LinearGaussianMFM.random({"a": 4, "b": 6}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    data = gen.sample({"train": 300, "valid": 120}, missing=0.3, seed=1)
    train, valid = data["train"], data["valid"]
    mfm = MFM(train.schema, Config().override(REFIT).model, feature_statistics(train))
    mfm.eval()
    chosen, held_out = refit_subsets(mfm, [train, valid], return_held_out=True)
    assert set(held_out[1]) == {1, 2} and set(held_out[0]) == {1, 2}  # a alone, b alone; both keep the product
    k = mfm.config.z_y_dim
    assert held_out[0][1].shape == (300, k) and held_out[1][2].shape == (120, k)
    for code, name in ((1, "a"), (2, "b")):  # NaN exactly where a sample does not observe the subset
        np.testing.assert_array_equal(np.isfinite(held_out[1][code].numpy()).all(-1), np.asarray(valid.present[name]))
    observing = np.flatnonzero(np.asarray(valid.present["a"]))
    for j in observing[:3]:
        rest = valid.subset(np.setdiff1d(np.arange(120), [j]))
        assert refit_subsets(mfm, [train, rest]) == chosen  # the same penalties: the same regression, less sample j
        with torch.no_grad():
            q = mfm.guide.posterior_z_y(valid.batch([j]).without_labels().observe_only(["a"]))
        torch.testing.assert_close(held_out[1][1][j], q.loc[0], rtol=1e-4, atol=1e-5)
    # and they differ from the refit's own means there, which read those samples
    refit_subsets(mfm, [train, valid])
    with torch.no_grad():
        q = mfm.guide.posterior_z_y(valid.batch(observing).without_labels().observe_only(["a"]))
    assert float((held_out[1][1][observing] - q.loc.double()).abs().max()) > 1e-4


def test_the_refitted_covariances_scale_is_fitted_with_the_label_and_kept_with_the_model(tmp_path):
    """The calibration fits one factor on the refitted posteriors' covariances (held-out labels); prediction and a
    reloaded model use it; a checkpoint written before it loads with the factor 1."""
    gen = LinearGaussianMFM.random({"a": 4, "b": 6}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    data = gen.sample({"train": 400, "valid": 200}, missing=0.0, seed=1)
    result = fit(
        Config().override(TINY + REFIT + ["train.epochs=3", "train.calibrate='label'"]), data, out_dir=tmp_path / "run"
    )
    mfm, refit = result.mfm, result.mfm.guide.subset_posteriors
    assert set(result.refit_held_out) == {1, 2}  # the validation split's held-out means, which it calibrated with
    assert result.refit_held_out[1].shape[0] == len(data["valid"])
    assert result.calibration["refit_log_scale"] == pytest.approx(float(refit.log_scale))
    assert result.calibration["refit_log_scale"] != 0.0  # fitted, not the default
    batch = data["valid"].batch(np.arange(50)).without_labels().observe_only(["a"])
    with torch.no_grad():
        fitted = mfm.guide.posterior_z_y(batch).covariance_matrix
        refit.log_scale.fill_(0.0)
        unscaled = mfm.guide.posterior_z_y(batch).covariance_matrix
    torch.testing.assert_close(fitted, unscaled * math.exp(result.calibration["refit_log_scale"]))
    reloaded = load_model(tmp_path / "run")[0]  # best.pt holds the calibrated scale
    assert float(reloaded.guide.subset_posteriors.log_scale) == pytest.approx(result.calibration["refit_log_scale"])
    state = {k: v for k, v in reloaded.state_dict().items() if k != "guide.subset_posteriors.log_scale"}
    reloaded.load_state_dict(state)  # as written before the scale: none
    assert float(reloaded.guide.subset_posteriors.log_scale) == 0.0
