"""Unit tests of the model/guide pair, the product of experts, likelihoods, prediction and imputation APIs."""

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive

from pyro_mfm.config import Config, ConfigError, ModelConfig
from pyro_mfm.data import DataError, LinearGaussianMFM, from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer import Objective, impute, predict
from pyro_mfm.infer.predict import guide_draws
from pyro_mfm.model import MFM, SINGLE, _random_subset
from pyro_mfm.nets import product_of_experts


def small_config(**model):
    return ModelConfig(z_y_dim=3, z_a_dim=2, f_y_dim=8, f_a_dim=4, hidden=16, **model)


def small_data(label="regression", n=64, seed=0, **kw):
    gen = LinearGaussianMFM.random({"a": 3, "b": 4, "s": (5, 2)}, z_y_dim=2, label=label, num_classes=3, seed=seed)
    return gen.sample({"train": n, "test": n}, missing=0.3, seed=seed, **kw)


def build(data, **model):
    return MFM(data.schema, small_config(**model), feature_statistics(data["train"]))


def test_model_and_guide_have_the_generative_story_sites():
    data = small_data()
    mfm = build(data, missingness="informative")
    batch = data["train"].batch(np.arange(10))
    guide_tr = poutine.trace(mfm.guide).get_trace(batch)
    model_tr = poutine.trace(poutine.replay(mfm.model, trace=guide_tr)).get_trace(batch)
    latents = {"z_y", "z_a_a", "z_a_b", "z_a_s"}
    assert set(guide_tr.stochastic_nodes) - {"data"} == latents  # "data" is the plate
    observed = {n for n in model_tr.observation_nodes if not n.endswith(("_mean", "_point"))}
    # every modality is missing for some training samples: whether each is recorded is observed too
    assert observed == {"x_a", "x_b", "x_s", "y", "present"}
    assert model_tr.nodes["present"]["value"].shape == (10, 3)
    assert model_tr.nodes["z_y"]["value"].shape == (10, 3)
    assert model_tr.nodes["x_s"]["fn"].event_shape == (5, 2)
    ignorable = build(data, missingness="ignorable")
    model_tr = poutine.trace(poutine.replay(ignorable.model, trace=guide_tr)).get_trace(batch)
    assert {n for n in model_tr.observation_nodes if not n.endswith(("_mean", "_point"))} == {"x_a", "x_b", "x_s", "y"}


@pytest.mark.parametrize("model", [{}, {"missing": "surrogate"}, {"ablation": "no_shared"}])
def test_weights_of_the_flat_layout_load_into_model_and_guide(model):
    """Checkpoints written when the MFM was one flat module (and before the redundancy) load, the encoders' input
    scaling taken from the likelihoods' statistics: the same weights, the same predictions."""
    data = small_data()
    model = {**model, "missingness": "ignorable"}  # a flat layout's checkpoints predate the absences' sites
    trained, fresh = build(data, **model), build(data, **model)
    flat = {
        k.split(".", 1)[1]: v
        for k, v in trained.state_dict().items()
        if not k.startswith(("guide.x_in.", "guide.y_in.", "guide.expert_redundancy"))
    }
    assert not any(k.startswith(("model.", "guide.")) for k in flat) and "trunk.a.net.0.weight" in flat
    with torch.no_grad():
        for v in trained.parameters():
            v.add_(0.1)
        flat = {k.split(".", 1)[1]: v for k, v in trained.state_dict().items() if k.split(".", 1)[1] in flat}
    fresh.load_state_dict(flat)
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k
    batch = data["test"].batch(np.arange(8)).without_labels()
    trained.eval(), fresh.eval()
    assert torch.equal(fresh.representation(batch), trained.representation(batch))


def test_missing_modality_and_label_contribute_nothing():
    """A masked site's log density is exactly zero for missing rows, whatever values they hold."""
    data = small_data()
    mfm = build(data)
    batch = data["train"].batch(np.arange(32))
    batch.present["a"][:] = torch.arange(32) % 2 == 0
    batch.y_present[:] = torch.arange(32) % 3 == 0
    guide_tr = poutine.trace(mfm.guide).get_trace(batch)
    tr = poutine.trace(poutine.replay(mfm.model, trace=guide_tr)).get_trace(batch)
    tr.compute_log_prob()
    assert torch.all(tr.nodes["x_a"]["log_prob"][~batch.present["a"]] == 0)
    assert torch.all(tr.nodes["x_a"]["log_prob"][batch.present["a"]] != 0)
    assert torch.all(tr.nodes["y"]["log_prob"][~batch.y_present] == 0)
    # padding steps of a sequence never count: changing their values leaves the log density unchanged
    s_steps = batch.steps["s"]
    assert (~s_steps & batch.present["s"][:, None]).any(), "the fixture should contain padded steps"
    x2 = batch.x["s"].clone()
    x2[~s_steps] = 123.0
    fn = tr.nodes["x_s"]["fn"]
    assert torch.allclose(fn.log_prob(batch.x["s"]), fn.log_prob(x2))


def test_product_of_experts_matches_gaussian_algebra():
    torch.manual_seed(0)
    k = 3
    etas = [torch.randn(5, k) for _ in range(2)]
    precs = []
    for _ in range(2):
        a = torch.randn(5, k, k)
        precs.append(a @ a.transpose(-1, -2))
    masks = [torch.tensor([1, 1, 0, 0, 1], dtype=torch.bool), torch.tensor([1, 0, 1, 0, 0], dtype=torch.bool)]
    q = product_of_experts(etas, precs, masks)
    for i in range(5):
        lam = torch.eye(k) + sum(p[i] for p, m in zip(precs, masks) if m[i])
        eta = sum((e[i] for e, m in zip(etas, masks) if m[i]), torch.zeros(k))
        assert torch.allclose(q.precision_matrix[i], lam, atol=1e-4)
        assert torch.allclose(q.mean[i], torch.linalg.solve(lam, eta), atol=1e-4)
    # no observed modality: the prior
    assert torch.allclose(q.mean[3], torch.zeros(k)) and torch.allclose(q.covariance_matrix[3], torch.eye(k))
    # weights in between (a calibrated expert), given stacked: each expert's eta and Lambda times its weight
    w = torch.rand(5, 2)
    q = product_of_experts(etas, precs, w)
    for i in range(5):
        lam = torch.eye(k) + w[i, 0] * precs[0][i] + w[i, 1] * precs[1][i]
        assert torch.allclose(q.precision_matrix[i], lam, atol=1e-4)
        assert torch.allclose(
            q.mean[i], torch.linalg.solve(lam, w[i, 0] * etas[0][i] + w[i, 1] * etas[1][i]), atol=1e-4
        )


@pytest.mark.parametrize(
    "model", [{}, {"label_samples": 3}, {"ablation": "no_shared"}, {"missing": "surrogate"}, {"dropout": 0.5}]
)
def test_subset_label_terms_reuse_the_observed_modalities_features(model):
    """Without dropout, the discriminative term's random subsets take their experts (and the z_a,m encoders'
    features) from the pass over the observed modalities, as prediction does: each reads its own modality alone, so
    that equals encoding each subset anew. With dropout each subset is encoded anew, with dropout masks of its own
    (drawn in the same order here)."""
    data = small_data(label="categorical")
    mfm = build(data, label_subsets=2, missingness="informative", **model).train()
    batch = data["train"].batch(np.arange(32))
    torch.manual_seed(0)
    shared = mfm.label_log_predictives(batch)
    torch.manual_seed(0)
    unlabelled = batch.without_labels()
    features = mfm.guide.features(unlabelled)
    subsets = [unlabelled] + [_random_subset(unlabelled, SINGLE, mfm.guide.absent_names) for _ in range(2)]
    anew = [mfm._label_log_predictive(b, batch.y, features if i == 0 else None) for i, b in enumerate(subsets)]
    assert len(shared) == 3
    for a, b in zip(shared, anew):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(shared[0], shared[1])  # the subsets observe less than the full pass


def test_imputation_term_scores_the_hidden_views_at_imputations_draws():
    """``MFM.hidden_log_likelihoods``: for each random subset, lambda_x,m log p(x_m | F_m(G_y(z_y), G_m(z_a,m))) over
    the modalities observed but outside the subset, z_y a draw of q(z_y | x_subset) and z_a,m a prior draw (the
    same draws made by hand, in the same order: z_a,m for the samples whose m is hidden, decoded here with the whole
    batch, where the term decodes those samples alone); zero where a sample observes one modality (nothing is
    hidden); it trains the decoders, the factor nets and the experts; and it is in the objective only when asked
    for."""
    data = small_data(label="categorical")
    mfm = build(data, impute_subsets=2, lambda_x=0.5, missingness="informative").eval()
    batch = data["train"].batch(np.arange(32))
    torch.manual_seed(0)
    terms = mfm.hidden_log_likelihoods(batch)
    torch.manual_seed(0)
    unlabelled = batch.without_labels()
    features = mfm.guide.features(unlabelled)
    for term in terms:
        subset = _random_subset(unlabelled, absent=mfm.guide.absent_names)
        z_y = mfm.posterior_z_y(subset, features).rsample()
        expected = torch.zeros(len(batch))
        for m in mfm.names:
            hidden = batch.present[m] & ~subset.present[m]
            z_a = torch.zeros(len(batch), mfm.model.size[f"z_a_{m}"])
            if hidden.any():
                z_a[hidden] = torch.randn(int(hidden.sum()), z_a.shape[-1])
            p_x = mfm.model.modality_distribution(m, {"z_y": z_y, f"z_a_{m}": z_a}, steps=batch.steps.get(m))
            expected += torch.where(hidden, 0.5 * p_x.log_prob(batch.x[m]), torch.tensor(0.0))
        assert (term != 0).any()
        torch.testing.assert_close(term, expected)
    one = np.nonzero(sum(np.asarray(data["train"].present[m], dtype=int) for m in mfm.names) == 1)[0]
    assert len(one) > 0
    # with missingness ignorable; informative, a known absence is an observation that can hide the one modality
    ignorable = build(data, impute_subsets=2, lambda_x=0.5, missingness="ignorable").eval()
    assert all((t == 0).all() for t in ignorable.hidden_log_likelihoods(data["train"].batch(one)))
    mfm.train()
    (-sum(t.sum() for t in mfm.hidden_log_likelihoods(batch))).backward()
    for part in (mfm.model.F, mfm.model.G_y, mfm.guide.q_y):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert build(data).hidden_log_likelihoods(batch) == []


def test_imputation_terms_subsets_are_encoded_as_the_label_terms_are(monkeypatch):
    """The imputation term's subsets take the observed pass's experts where that gives the same values (no dropout,
    product of experts) and are encoded anew where it would not: under dropout in training (masks of their own,
    as the label term's subsets) and with the MFN, which reads the modalities together."""
    vectors = small_data(label="categorical")
    gen = LinearGaussianMFM.random({"s": (5, 2), "t": (5, 3)}, z_y_dim=2, label="categorical", num_classes=3, seed=0)
    sequences = gen.sample({"train": 64}, missing=0.3, seed=0)
    for data, model, anew in (
        (vectors, {}, 0),
        (vectors, {"dropout": 0.2}, 2),
        (sequences, {"fusion": "mfn", "mfn_hidden": 8}, 2),
    ):
        batch = data["train"].batch(np.arange(32))
        mfm = build(data, impute_subsets=2, label_subsets=2, **model).train()
        features = mfm.guide.features(batch.without_labels())
        calls = []
        encode = mfm.guide.features
        monkeypatch.setattr(mfm.guide, "features", lambda b: calls.append(1) or encode(b))
        assert len(mfm.hidden_log_likelihoods(batch, features)) == 2
        assert len(calls) == anew, model
        calls.clear()
        mfm.label_log_predictives(batch, features)
        assert len(calls) == anew, model


@pytest.mark.parametrize("shape", [(), (7,), (2, 3)])
def test_posterior_draws_are_torchs_draws(shape):
    """The product of experts draws many samples with one product per Cholesky factor; the draws are torch's
    MultivariateNormal's for the same noise (float64), with a sample shape or a batch expanded by a plate, and the
    gradient reaches the experts."""
    torch.manual_seed(1)
    k, b = 4, 5
    a = torch.randn(b, k, k, dtype=torch.float64)
    eta = torch.randn(b, k, dtype=torch.float64, requires_grad=True)
    q = product_of_experts([eta], [a @ a.transpose(-1, -2)], [torch.ones(b, dtype=torch.bool)])
    ref = torch.distributions.MultivariateNormal(q.loc, precision_matrix=q.precision_matrix)
    for mine, theirs, sample_shape in ((q, ref, shape), (q.expand(shape + (b,)), ref.expand(shape + (b,)), ())):
        torch.manual_seed(2)
        x = mine.rsample(sample_shape)
        torch.manual_seed(2)
        y = theirs.rsample(sample_shape)
        assert x.shape == shape + (b, k)
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    x.sum().backward()
    assert eta.grad is not None and torch.isfinite(eta.grad).all()


@pytest.mark.parametrize(
    "label,likelihood", [("regression", "normal"), ("regression", "laplace"), ("categorical", "categorical")]
)
def test_label_likelihoods_train_a_step(label, likelihood):
    data = small_data(label)
    mfm = build(data, label_likelihood=likelihood)
    loss = Objective(mfm)(data["train"].batch(np.arange(16)))
    loss.backward()
    assert torch.isfinite(loss)
    checked = [n for n, _ in mfm.named_parameters() if n.startswith(("model.D.", "guide.q_y.", "model.F."))]
    assert checked and all(p.grad is not None for n, p in mfm.named_parameters() if n in checked)


def test_multilabel_bernoulli_likelihood():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4))
    y = (x[:, :3] > 0).astype(float)
    data = from_arrays({"v": x, "w": x[:, ::-1] + 0.1}, y, label_kind="multilabel")
    mfm = MFM(data.schema, small_config(), feature_statistics(data["train"]))
    assert mfm.D.kind == "bernoulli"
    pred = predict(mfm, data["train"], num_samples=4)
    assert pred.point.shape == (40, 3) and ((pred.point >= 0) & (pred.point <= 1)).all()
    assert set(np.unique(pred.label)) <= {0, 1}


def test_wrong_likelihood_for_label_kind_is_an_error():
    data = small_data("categorical")
    with pytest.raises(ValueError, match="does not fit a categorical label"):
        build(data, label_likelihood="normal")


def test_fixed_scale_and_lambda_x_scale_the_site():
    data = small_data()
    mfm = build(data, x_scale="fixed", x_fixed_scale=0.5, lambda_x={"a": 0.25, "b": 1.0, "s": 1.0})
    batch = data["train"].batch(np.arange(8))
    tr = poutine.trace(poutine.replay(mfm.model, trace=poutine.trace(mfm.guide).get_trace(batch))).get_trace(batch)
    assert tr.nodes["x_a"]["scale"] == 0.25 and tr.nodes["x_b"]["scale"] == 1.0
    scale = tr.nodes["x_a"]["fn"].base_dist.scale
    assert torch.allclose(scale, 0.5 * mfm.p_x["a"].std.expand_as(scale))


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="unknown key model.z_dim"):
        Config.from_dict({"model": {"z_dim": 3}})
    with pytest.raises(ConfigError, match="expected table.key=value"):
        Config().override(["epochs=3"])
    with pytest.raises(ConfigError, match="model.x_scale"):
        Config().override(["model.x_scale='wild'"])
    with pytest.raises(ConfigError, match="train.validate = 'never': expected 'first' or 'always'"):
        Config().override(["train.validate='never'"])
    with pytest.raises(ConfigError, match="model.label_scale = -1.0: expected a finite number >= 0"):
        Config().override(["model.label_scale=-1.0"])
    with pytest.raises(ConfigError, match="model.impute_subsets = 2 .* model.objective = 'wae'"):
        Config().override(["model.impute_subsets=2", "model.objective='wae'"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.load(bad)
    data = small_data()
    with pytest.raises(ConfigError, match=r"no value for modalities \['s'\]"):
        MFM(data.schema, small_config().__class__(z_a_dim={"a": 2, "b": 2}), feature_statistics(data["train"]))
    cfg = Config().override(["train.epochs=7", "model.lambda_x={'a': 0.5}", "train.device=cpu"])
    assert cfg.train.epochs == 7 and cfg.model.lambda_x == {"a": 0.5} and cfg.train.device == "cpu"


def test_predict_and_impute_shapes_and_pass_through():
    data = small_data()
    mfm = build(data).eval()
    test = data["test"]
    pred = predict(mfm, test, observed=["a"], num_samples=7, interval=0.8)
    assert pred.point.shape == (len(test), 1) and pred.samples.shape == (7, len(test), 1)
    assert np.all(pred.lower <= pred.upper) and pred.observed == ("a",)
    labelled = test.label_present
    assert np.isfinite(pred.log_density[labelled]).all() and np.isnan(pred.log_density[~labelled]).all()
    imp = impute(mfm, test, observed=["a", "s"], num_samples=5, keep_samples=True)
    for m, spec in zip(test.schema.names, test.schema.modalities):
        assert imp.mean[m].shape == (len(test),) + spec.shape
        assert imp.samples[m].shape == (5, len(test)) + spec.shape
    # observed entries pass through unchanged, hidden or missing ones are imputed
    a_obs = test.present["a"]
    assert np.array_equal(imp.mean["a"][a_obs], np.asarray(test.features["a"])[a_obs])
    assert np.all(imp.std["a"][a_obs] == 0)
    assert np.all(imp.std["b"] > 0), "b is hidden: every entry must be drawn"
    assert not np.allclose(imp.mean["a"][~a_obs], 0)


def test_imputation_decodes_only_what_some_sample_lacks_and_matches_the_model_program():
    """The decoders of modalities that every sample observes never run; what is imputed is distributed as the
    unconditioned model's x_m at the guide's draws (Predictive of the whole model given the same factor draws)."""
    data = small_data()
    mfm = build(data).eval()
    test = data["test"].subset(np.flatnonzero(data["test"].present["a"]))  # a is observed for every sample
    calls = {m: 0 for m in mfm.names}
    hooks = [mfm.model.F[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1)) for m in calls]
    try:
        imp = impute(mfm, test, observed=["a"], num_samples=4, seed=0)
    finally:
        for h in hooks:
            h.remove()
    assert calls["a"] == 0 and all(calls[m] > 0 for m in calls if m != "a")
    # the same factor draws through the whole model: the means of the hidden modalities agree
    batch = test.batch(np.arange(len(test))).observe_only(["a"]).without_labels()
    pyro.set_rng_seed(0)
    z = guide_draws(mfm, batch, 4, modalities=["b", "s"])
    assert sorted(z) == ["z_a_b", "z_a_s", "z_y"] and z["z_y"].shape == (4, len(test), mfm.config.z_y_dim)
    full = Predictive(poutine.uncondition(mfm.model), posterior_samples=z, return_sites=["x_b_mean"], parallel=True)
    torch.testing.assert_close(torch.as_tensor(imp.mean["b"]), full(batch)["x_b_mean"].mean(0), rtol=1e-5, atol=1e-5)


def test_unknown_modality_and_schema_mismatch_are_clear_errors():
    data = small_data()
    mfm = build(data)
    with pytest.raises(DataError, match=r"unknown modalities \['video'\]"):
        predict(mfm, data["test"], observed=["video"])
    other_schema = from_arrays({"a": np.zeros((4, 3))}, np.zeros(4))
    with pytest.raises(DataError, match="do not match the model"):
        impute(mfm, other_schema["train"], observed=["a"])


def test_code_follows_the_tensors_device():
    """The model moves with .to(); nothing is pinned to the CPU (runs on CUDA when present)."""
    data = small_data()
    mfm = build(data)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mfm.to(device)
    loss = Objective(mfm)(data["train"].batch(np.arange(8), device=device))
    assert loss.device.type == device.type
    assert predict(mfm, data["test"], num_samples=3).point.shape[0] == len(data["test"])


def test_enumerating_a_missing_class_label_equals_masking_it():
    """y is a leaf of the model, so summing an unobserved class label out (TraceEnum_ELBO) adds exactly zero:
    the masked ELBO used in training is the enumerated one, at a fraction of the cost."""
    from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate

    data = small_data("categorical")
    mfm = build(data)
    batch = data["train"].batch(np.arange(20))
    batch.y_present[:] = False
    pyro.set_rng_seed(3)
    masked = Trace_ELBO(max_plate_nesting=1).differentiable_loss(mfm.model, mfm.guide, batch)
    pyro.set_rng_seed(3)
    enumerated = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        config_enumerate(mfm.model), mfm.guide, batch.without_labels()
    )
    assert torch.allclose(masked, enumerated, rtol=1e-5)


def test_input_dropout_drops_the_guides_standardised_inputs_in_training_only():
    data = small_data()
    batch = data["train"].batch(np.arange(64))
    mfm = build(data, input_dropout=0.5)
    plain = build(data).train()
    state = torch.get_rng_state()
    clean = plain.guide.inputs(batch)
    assert torch.equal(torch.get_rng_state(), state)  # none configured: nothing drawn
    dropped = mfm.train().guide.inputs(batch)
    for m in ("a", "b"):
        entries = clean[m] != 0  # present modalities' entries
        zero = (dropped[m] == 0) & entries
        share = zero.sum() / entries.sum()  # about half of them (binomial sd below 0.06 here), the rest scaled by 2
        assert 0.3 < share < 0.7
        torch.testing.assert_close(dropped[m][~zero], 2 * clean[m][~zero])
    for m, x in mfm.eval().guide.inputs(batch).items():
        assert torch.equal(x, clean[m])


def test_blocks_of_draws_give_what_all_draws_at_once_give(monkeypatch):
    """On a CPU the label head and the decoders run on blocks of draws of at most CPU_ROWS_PER_BLOCK rows (a GPU
    takes every draw at once): blocks of one draw give the prediction and imputation that one block of all draws
    gives, and the imputed variance is the law of total variance over the model program's means at the draws."""
    import importlib

    P = importlib.import_module("pyro_mfm.infer.predict")
    assert P.draw_block(512, 100, "cpu") == max(1, P.CPU_ROWS_PER_BLOCK // 512) < 100
    assert P.draw_block(10**6, 100, "cpu") == 1 and P.draw_block(512, 100, "cuda") == 100
    data = small_data()
    mfm = build(data).eval()
    test = data["test"]

    def run(rows):
        monkeypatch.setattr(P, "CPU_ROWS_PER_BLOCK", rows)
        return (
            predict(mfm, test, observed=["a"], num_samples=9, seed=0, keep_samples=False),
            impute(mfm, test, observed=["a"], num_samples=9, seed=0),
        )

    (pred_1, imp_1), (pred_all, imp_all) = run(1), run(10**6)
    for key in ("point", "lower", "upper", "log_density"):
        np.testing.assert_allclose(getattr(pred_1, key), getattr(pred_all, key), rtol=1e-6, atol=1e-6)
    for m in mfm.names:
        np.testing.assert_allclose(imp_1.mean[m], imp_all.mean[m], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(imp_1.std[m], imp_all.std[m], rtol=1e-5, atol=1e-5)
    # the variance by hand: the Normal's scale^2 plus the variance of its means over the same draws
    batch = test.batch(np.arange(len(test))).observe_only(["a"]).without_labels()
    pyro.set_rng_seed(0)
    z = guide_draws(mfm, batch, 9, modalities=["a", "b", "s"])  # the draws impute takes: some samples lack a
    full = Predictive(poutine.uncondition(mfm.model), posterior_samples=z, return_sites=["x_b_mean"], parallel=True)
    means = full(batch)["x_b_mean"].detach()
    variance = (mfm.p_x["b"].std * mfm.p_x["b"].scale()).square().detach() + means.var(0, unbiased=False)
    torch.testing.assert_close(torch.as_tensor(imp_1.mean["b"]), means.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.as_tensor(imp_1.std["b"]).square(), variance, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("label", "likelihood", "expected"),
    [("regression", "auto", "mae"), ("regression", "laplace", "mae"), ("categorical", "auto", "accuracy")],
)
def test_training_and_the_search_resolve_select_metric_auto_alike(label, likelihood, expected):
    """``train.select_metric = "auto"``: training reads the built model's label, the search the data's schema and
    the configuration (it builds no model); both give the same metric, and a named metric is kept as it is."""
    from pyro_mfm.config import Config
    from pyro_mfm.infer.loop import select_metric
    from pyro_mfm.infer.tune import selection_metric

    data = small_data(label=label)
    config = Config.from_dict({"data": {"source": "synthetic"}, "model": {"label_likelihood": likelihood}})
    mfm = MFM(data.schema, config.model, feature_statistics(data["train"]))
    assert select_metric(config, mfm) == selection_metric(config, data) == expected
    named = config.override(["train.select_metric='nlpd'"])
    assert select_metric(named, mfm) == selection_metric(named, data) == "nlpd"


def test_linear_experts_read_the_standardised_features_linearly_with_one_precision():
    """``model.expert = "linear"``: eta_m is an affine map of the standardised features (of a sequence read by an
    LSTM, their mean over the real steps) and Lambda_m one matrix for every sample, the form of a linear-Gaussian
    modality's exact expert; the MLP experts stay the default."""
    from pyro_mfm.nets import InformationExpert, LinearExpert, step_mean

    data = small_data()
    assert isinstance(build(data).guide.q_y["a"], InformationExpert)
    mfm = build(data, expert="linear").eval()
    guide, batch = mfm.guide, data["train"].batch(np.arange(20))
    inputs = guide.inputs(batch)
    with torch.no_grad():
        experts = dict(zip(mfm.names, guide.features(batch).experts))
        for m, x in (("a", inputs["a"]), ("b", inputs["b"]), ("s", step_mean(inputs["s"], guide.steps(batch, "s")))):
            expert = guide.q_y[m]
            assert isinstance(expert, LinearExpert) and expert.eta.in_features == x.shape[-1]
            eta, precision = experts[m]
            assert torch.allclose(eta, x @ expert.eta.weight.T + expert.eta.bias, atol=1e-6)
            assert torch.equal(precision, precision[:1].expand_as(precision))  # the same for every sample
            assert torch.linalg.eigvalsh(precision[0]).min() >= 0
        # affine: eta(x1 + x2) = eta(x1) + eta(x2) - eta(0)
        e = guide.q_y["a"]
        x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
        zero = e(torch.zeros(5, 3))[0]
        assert torch.allclose(e(x1 + x2)[0], e(x1)[0] + e(x2)[0] - zero, atol=1e-5)
    # a sequence read by an MLP is read flattened over its steps
    assert build(data, expert="linear", sequence_net="mlp").guide.q_y["s"].eta.in_features == 5 * 2


def test_linear_experts_train_and_predict_any_subset_and_need_the_product_of_experts():
    data = small_data()
    mfm = build(data, expert="linear")
    loss = Objective(mfm)(data["train"].batch(np.arange(32)))
    loss.backward()
    assert torch.isfinite(loss) and mfm.guide.q_y["b"].factor.grad.abs().sum() > 0
    for obs in (["a"], ["s"], ["a", "b", "s"]):
        pred = predict(mfm.eval(), data["test"], obs, num_samples=4)
        assert np.isfinite(pred.point).all()
    with pytest.raises(ConfigError, match="model.expert = 'linear'.*model.fusion = 'mfn'"):
        Config().override(["model.expert='linear'", "model.fusion='mfn'"])
