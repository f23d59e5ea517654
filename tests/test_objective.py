"""MeanFieldELBO: the value and gradients of Pyro's TraceMeanField_ELBO, computed with fewer terms."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_mfm.config import ModelConfig
from pyro_mfm.data import LinearGaussianMFM, from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer.objective import MeanFieldELBO, empty_guide, scale_latents
from pyro_mfm.model import MFM, discriminative_weight


def mfm_and_batch(label="categorical"):
    gen = LinearGaussianMFM.random({"a": 3, "b": 4, "s": (5, 2)}, z_y_dim=2, label=label, num_classes=3, seed=1)
    data = gen.sample({"train": 48}, missing=0.3, seed=1)
    cfg = ModelConfig(z_y_dim=3, z_a_dim=2, f_y_dim=8, f_a_dim=4, hidden=16)
    mfm = MFM(data.schema, cfg, feature_statistics(data["train"]))
    batch = data["train"].batch(np.arange(48))
    batch.y_present[::4] = False
    return mfm.eval(), batch


def loss_and_grads(elbo, model, guide, params, *args, seed=5):
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


def assert_same(a, b):
    # float32, the same terms added in the same order: equal to rounding
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)
    for ga, gb in zip(a[1], b[1]):
        assert (ga is None) == (gb is None)
        if ga is not None:
            torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label", ["categorical", "regression"])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_equals_trace_mean_field_elbo_on_the_mfm(label, beta):
    """Same draws, same value, same gradient for every parameter; also with the KL warm-up's scaled latents."""
    mfm, batch = mfm_and_batch(label)
    model, guide = scale_latents(beta)(mfm.model), scale_latents(beta)(mfm.guide)
    params = list(mfm.parameters())
    ours = loss_and_grads(MeanFieldELBO(max_plate_nesting=1), model, guide, params, batch)
    pyros = loss_and_grads(TraceMeanField_ELBO(max_plate_nesting=1), model, guide, params, batch)
    assert_same(ours, pyros)
    assert sum(float(g.abs().sum()) for g in ours[1] if g is not None) > 0


def test_vectorized_particles_equal_pyros():
    mfm, batch = mfm_and_batch()
    params = list(mfm.parameters())
    kw = dict(max_plate_nesting=1, num_particles=4, vectorize_particles=True)
    assert_same(
        loss_and_grads(MeanFieldELBO(**kw), mfm.model, mfm.guide, params, batch),
        loss_and_grads(TraceMeanField_ELBO(**kw), mfm.model, mfm.guide, params, batch),
    )


def test_latent_without_analytic_kl_falls_back_to_monte_carlo_like_pyro():
    """No KL(Normal || Gamma) is registered: both estimate log p(z) - log q(z) at the guide's draw."""
    loc = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    data = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)

    def model(x):
        rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=torch.float64), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Exponential(rate), obs=x)

    def guide(x):
        pyro.sample("rate", dist.LogNormal(loc, 0.3))

    elbo_args = dict(max_plate_nesting=1)
    assert_same(
        loss_and_grads(MeanFieldELBO(**elbo_args), model, guide, [loc], data),
        loss_and_grads(TraceMeanField_ELBO(**elbo_args), model, guide, [loc], data),
    )


def test_validation_still_rejects_a_site_whose_shape_misses_its_plate():
    """A vector site outside every plate (a forgotten ``to_event``) is Pyro's shape error with both."""
    loc = torch.zeros(2, requires_grad=True)

    def model(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([3]), obs=x)
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]))

    def guide(x):
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Normal(loc.sum(), 1.0).expand([3]))

    for elbo in (MeanFieldELBO(max_plate_nesting=1), TraceMeanField_ELBO(max_plate_nesting=1)):
        with pyro.validation_enabled(True), pytest.raises(ValueError, match="invalid log_prob shape"):
            elbo.differentiable_loss(model, guide, torch.zeros(3))


@pytest.mark.parametrize("analytic", [True, False])
def test_validation_rejects_a_guide_that_is_not_reparameterised_like_pyro(analytic):
    """A guide site without ``rsample`` (a score-function estimator the mean-field ELBO does not compute) is Pyro's
    NotImplementedError with both, where the KL is analytic and where it falls back to Monte Carlo."""
    loc = torch.zeros((), requires_grad=True)

    def model(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0) if analytic else dist.Gamma(2.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        q = dist.Normal(loc, 1.0) if analytic else dist.LogNormal(loc, 1.0)  # KL(Normal || Normal) is registered
        pyro.sample("z", q.has_rsample_(False))

    for elbo in (MeanFieldELBO(), TraceMeanField_ELBO()):
        with pyro.validation_enabled(True), pytest.raises(NotImplementedError, match="fully reparameterized"):
            elbo.differentiable_loss(model, guide, torch.tensor(1.0))


@pytest.mark.parametrize("validate, expected", [("first", [True, False, False, False]), ("always", [True] * 4)])
def test_training_validates_the_first_step_or_every_step(monkeypatch, validate, expected):
    """``train.validate``: Pyro's and torch's distribution checks on the first training step, or on every one."""
    from pyro.infer.util import is_validation_enabled

    from pyro_mfm.config import Config
    from pyro_mfm.infer import fit
    from pyro_mfm.infer.objective import Objective

    seen, call = [], Objective.__call__

    def spy(self, batch, **kwargs):
        if torch.is_grad_enabled():  # training steps (validation scores run without gradients)
            seen.append(is_validation_enabled())
        return call(self, batch, **kwargs)

    monkeypatch.setattr(Objective, "__call__", spy)
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=0)
    data = gen.sample({"train": 64, "valid": 16}, seed=0)
    fit(
        Config().override(
            [
                "train.progress=False",
                "train.ensemble=1",
                "model.hidden=8",
                "train.epochs=2",
                "train.batch_size=32",
                "train.valid_samples=2",
                f"train.validate='{validate}'",
            ]
        ),
        data,
    )
    assert seen == expected
    assert is_validation_enabled()  # restored after training


@pytest.mark.parametrize("ablation, label_weight", [("none", "fixed"), ("no_shared", "fixed"), ("none", "auto")])
def test_discriminative_term_is_a_program_of_scaled_observed_label_sites(ablation, label_weight):
    """MFM.classify (the ss-VAE's model_classify): one observed site per pass, scaled by the term's weight / passes
    and masked to the labelled samples; Trace_ELBO's loss of it with an empty guide is weight *
    discriminative_loss. The weight is alpha, or with label_weight = "auto" and this class label, alpha times the 3
    + 4 features per sample."""
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=1)
    data = gen.sample({"train": 48}, missing=0.3, seed=1)
    cfg = ModelConfig(
        hidden=16,
        alpha=2.5,
        label_subsets=2,
        label_samples=4 * (ablation == "none"),
        ablation=ablation,
        label_weight=label_weight,
    )
    weight = 2.5 * (7 if label_weight == "auto" else 1)
    mfm = MFM(data.schema, cfg, feature_statistics(data["train"])).eval()
    assert mfm.alpha == weight
    batch = data["train"].batch(np.arange(48))
    batch.y_present[::4] = False
    pyro.set_rng_seed(3)
    trace = pyro.poutine.trace(mfm.classify).get_trace(batch)
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"}
    assert sorted(sites) == ["y_aux", "y_aux_1", "y_aux_2"]  # no latent site: the guide's codes stay local
    for site in sites.values():
        assert site["is_observed"] and site["scale"] == pytest.approx(weight / 3)
        assert torch.equal(site["mask"], batch.y_present)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(mfm.classify, empty_guide, batch)
    pyro.set_rng_seed(3)
    term = mfm.discriminative_loss(batch)
    torch.testing.assert_close(loss, weight * term)
    assert term.requires_grad and torch.isfinite(term)
    assert Trace_ELBO().differentiable_loss(mfm.classify, empty_guide, batch.without_labels()) == 0


def test_discriminative_weight_counts_features_per_step_against_the_label_variables():
    """ "auto": alpha times the features per sample (per step of a sequence) over the label's variables (one for a
    class label, one per label of a multilabel one); a regression label, or "fixed", keeps alpha."""
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(30, 3)), "b": rng.normal(size=(30, 4, 5))}  # a vector and 4 steps of 5 features
    cfg = ModelConfig(alpha=2.0)
    assert discriminative_weight(from_arrays(x, rng.integers(0, 3, 30)).schema, cfg) == 2.0 * (3 + 5)
    assert discriminative_weight(from_arrays(x, rng.integers(0, 2, (30, 2))).schema, cfg) == 2.0 * (3 + 5) / 2
    assert discriminative_weight(from_arrays(x, rng.normal(size=30)).schema, cfg) == 2.0
    fixed = ModelConfig(alpha=2.0, label_weight="fixed")
    assert discriminative_weight(from_arrays(x, rng.integers(0, 3, 30)).schema, fixed) == 2.0


def test_surrogate_term_is_a_program_of_factor_sites_that_trains_the_surrogates_alone():
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=1)
    data = gen.sample({"train": 48}, missing=0.3, seed=1)
    cfg = ModelConfig(hidden=16, missing="surrogate", surrogate_weight=0.7)
    mfm = MFM(data.schema, cfg, feature_statistics(data["train"])).eval()
    batch = data["train"].batch(np.arange(48))
    trace = pyro.poutine.trace(mfm.fit_surrogates).get_trace(batch)
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and n != "data"}
    assert sorted(sites) == ["surrogate_a", "surrogate_b"]
    for m in ("a", "b"):
        assert sites[f"surrogate_{m}"]["scale"] == pytest.approx(0.7)
        assert torch.equal(sites[f"surrogate_{m}"]["mask"], batch.present[m])
    loss = Trace_ELBO(max_plate_nesting=1).differentiable_loss(mfm.fit_surrogates, empty_guide, batch)
    torch.testing.assert_close(loss, 0.7 * mfm.surrogate_loss(batch))
    grads = torch.autograd.grad(loss, [p for p in mfm.parameters()], allow_unused=True)
    trained = {n for (n, _), g in zip(mfm.named_parameters(), grads) if g is not None and g.abs().sum() > 0}
    assert trained and all(n.startswith("guide.S.") for n in trained)
