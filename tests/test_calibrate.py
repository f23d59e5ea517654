"""Label terms on random observed subsets, the posterior-predictive label term, and the held-out calibration."""

import math

import numpy as np
import pyro
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer import fit, predict
from pyro_mfm.infer.calibrate import calibrate, calibration_subsets
from pyro_mfm.infer.checkpoint import load_model
from pyro_mfm.model import MFM, SINGLE, _random_subset
from tests.test_model import small_config, small_data


@pytest.mark.parametrize("single", [None, SINGLE])
def test_random_subsets_are_non_empty_subsets_of_what_is_observed_with_the_stated_sizes(single):
    """Sizes uniform on 1..|observed| (the imputation term's rule), or one modality with probability ``single`` and
    else uniform on 2..|observed| (the label term's); either way, members drawn uniformly."""
    data = small_data(n=4000)
    batch = data["train"].batch(np.arange(4000))
    torch.manual_seed(0)
    sub = _random_subset(batch, single)
    names = list(batch.present)
    before = torch.stack([batch.present[m] for m in names], -1)
    after = torch.stack([sub.present[m] for m in names], -1)
    assert not (after & ~before).any()  # never observes what was missing
    assert (after.sum(-1) >= 1).all()
    for m in names:  # hidden entries are zeroed
        assert (sub.x[m][~sub.present[m]] == 0).all()
    # among samples with all three observed: P(size = k) is 1/3 each, or 1/2, 1/4, 1/4 with single = 1/2
    full = before.all(-1)
    sizes = after[full].sum(-1)
    n = int(full.sum())
    rest = (1 - single) / 2 if single is not None else None
    expected = {1: 1 / 3, 2: 1 / 3, 3: 1 / 3} if single is None else {1: single, 2: rest, 3: rest}
    for k, q in expected.items():
        p = float((sizes == k).float().mean())
        assert abs(p - q) < 4 * math.sqrt(q * (1 - q) / n), (k, p, q, n)  # 4 binomial standard errors
    # and each modality of a single-modality subset is as likely as the others
    ones = after[full & (after.sum(-1) == 1)]
    for i in range(len(names)):
        p = float(ones[:, i].float().mean())
        assert abs(p - 1 / 3) < 4 * math.sqrt(2 / 9 / len(ones)), (names[i], p)


def test_with_two_modalities_observed_the_label_terms_rule_is_the_uniform_one_draw_for_draw():
    """POM's two modalities: the label term's subsets are those of the uniform rule, from the same draws."""
    data = small_data(n=400)
    batch = data["train"].batch(np.arange(400))
    names = list(batch.present)
    two = batch.with_present({m: batch.present[m] & (m != names[2]) for m in names})
    assert int(torch.stack([two.present[m] for m in names], -1).sum(-1).max()) == 2
    torch.manual_seed(3)
    uniform = _random_subset(two)
    torch.manual_seed(3)
    halves = _random_subset(two, 0.5)
    for m in names:
        assert torch.equal(uniform.present[m], halves.present[m])
    sizes = sum(halves.present[m].long() for m in names)
    assert (sizes == 1).any() and (sizes == 2).any()


def test_label_subset_and_predictive_terms_are_finite_and_reduce_to_the_mean_code_term():
    data = small_data()
    batch = data["train"].batch(np.arange(32))
    stats = feature_statistics(data["train"])
    pyro.set_rng_seed(0)
    plain = MFM(data.schema, small_config(), stats)
    pyro.set_rng_seed(0)
    subsets = MFM(data.schema, small_config(label_subsets=2, label_samples=4), stats)
    plain.eval(), subsets.eval()
    torch.manual_seed(1)
    a = plain.discriminative_loss(batch)
    torch.manual_seed(1)
    b = subsets.discriminative_loss(batch)
    assert torch.isfinite(b) and b.requires_grad
    assert not torch.allclose(a, b)  # other subsets and draws: another term
    # label_samples = K draws: as K grows the predictive term tends to a limit, and by Jensen it is never above
    # the mean of the per-draw log likelihoods
    q = subsets.posterior_z_y(batch.without_labels())
    z = q.rsample((64,))
    log_p = subsets.label_distribution(z).log_prob(batch.y)
    assert (torch.logsumexp(log_p, 0) - math.log(64) >= log_p.mean(0) - 1e-5).all()


def small_regression_config(calibrate: str) -> Config:
    """One small MFM, three epochs, with ``train.calibrate = calibrate``."""
    return Config.from_dict(
        {
            "model": {"z_y_dim": 2, "z_a_dim": 2, "f_y_dim": 8, "f_a_dim": 4, "hidden": 16},
            "train": {"ensemble": 1, "epochs": 3, "kl_warmup": 1, "batch_size": 64, "progress": False},
        }
    ).override([f"train.calibrate='{calibrate}'"])


def test_calibration_never_worsens_the_held_out_fit_and_is_stored_in_best_pt(tmp_path):
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=3)
    data = gen.sample({"train": 300, "valid": 200, "test": 50}, missing=0.2, seed=3)
    cfg = small_regression_config("all")
    result = fit(cfg, data, out_dir=tmp_path / "run")
    cal = result.calibration
    assert cal["nlpd_after"] <= cal["nlpd_before"]
    assert cal["subsets"] == 3
    t = result.mfm.expert_log_temperature
    assert torch.isfinite(t).all() and t.abs().sum() > 0  # fitted, not left at zero
    mfm, _, _ = load_model(tmp_path / "run" / "best.pt")
    assert torch.equal(mfm.expert_log_temperature, t)
    assert torch.equal(mfm.expert_redundancy, result.mfm.expert_redundancy)
    assert torch.equal(mfm.D.log_temperature, result.mfm.D.log_temperature)
    assert (tmp_path / "run" / "calibration.json").exists()
    # refitting from the stored model starts again from t = 0 and lands on the same temperatures
    again = calibrate(mfm, data["valid"], seed=cfg.train.seed)
    assert np.allclose(list(again["expert_log_temperature"].values()), t.numpy(), atol=1e-4)


def _duplicated_view(seed: int, **label):
    """A trained MFM of one linear-Gaussian view a (``label``: the generator's label arguments) and its copy c, whose
    networks are then made a's: the two experts are identical. Returns the model and the data (300 training and 300
    validation samples)."""
    gen = LinearGaussianMFM.random({"a": 3}, z_y_dim=2, seed=seed, **label)
    sample = gen.sample({"train": 300, "valid": 300}, seed=seed)
    x = np.concatenate([np.asarray(sample[s].features["a"]) for s in ("train", "valid")])
    y = np.concatenate([np.asarray(sample[s].labels) for s in ("train", "valid")])
    data = from_arrays({"a": x, "c": x.copy()}, y, split={"train": np.arange(300), "valid": np.arange(300, 600)})
    cfg = Config.from_dict(
        {
            "model": {"z_y_dim": 2, "z_a_dim": 2, "f_y_dim": 8, "f_a_dim": 4, "hidden": 16},
            "train": {
                "ensemble": 1,
                "epochs": 30,
                "kl_warmup": 1,
                "batch_size": 32,
                "progress": False,
                "calibrate": "none",
            },
        }
    )
    mfm = fit(cfg, data).mfm
    state = mfm.state_dict()
    for key in state:  # c's networks become a's: the two experts are identical
        parts = key.split(".")
        if "c" in parts:
            state[key] = state[".".join("a" if p == "c" else p for p in parts)].clone()
    mfm.load_state_dict(state)
    return mfm, data


def test_a_duplicated_modality_is_found_redundant_and_counted_once():
    """Modality c is a copy of a, with a copy of a's encoder and expert: {a}, {c} and {a, c} then carry the same
    information, and each subset's term of the calibration objective is the same function g of the weight w of
    the expert's precision, I + w Lambda_a. The optimum puts every subset at g's minimiser w*: exp(t_a) = exp(t_c)
    = w* and exp(t_a - r) + exp(t_c - r) = w*, so the redundancy r of the pair is log 2 (up to the optimiser's
    tolerance), which counts the two copies once. Without it the product would claim 2 w* for {a, c}."""
    mfm, data = _duplicated_view(label="regression", label_noise=0.1, seed=5)
    cal = calibrate(mfm, data["valid"])
    t = cal["expert_log_temperature"]
    assert abs(cal["expert_redundancy"]["a+c"] - math.log(2)) < 0.02 and abs(t["a"] - t["c"]) < 0.02, cal
    assert cal["nlpd_after"] < cal["nlpd_before"]
    r = mfm.expert_redundancy
    assert torch.allclose(r, r.T) and (r.diag() == 0).all() and (r >= 0).all()
    # train.calibrate = "pairs": the label's factor and shares with the pair's redundancy, the experts' temperatures
    # left at 0. It nests "label" (r = 0), so its optimum is at least as good, and better here, where {a, c} counts
    # one expert twice; the discount is found (r > 0)
    fits = {}
    for what, redundancies in (("label", False), ("pairs", True)):
        mfm.expert_log_temperature.zero_()
        fits[what] = calibrate(mfm, data["valid"], experts=False, redundancies=redundancies, num_samples=64)
    assert all(t == 0 for t in fits["pairs"]["expert_log_temperature"].values()), fits["pairs"]
    assert fits["pairs"]["expert_redundancy"]["a+c"] > 0 and fits["label"]["expert_redundancy"]["a+c"] == 0
    assert fits["pairs"]["nlpd_after"] < fits["label"]["nlpd_after"], fits
    # a checkpoint written before the redundancy existed loads with none
    mfm.load_state_dict({k: v for k, v in mfm.state_dict().items() if k != "guide.expert_redundancy"})
    assert (mfm.expert_redundancy == 0).all()


def test_label_only_calibration_keeps_point_predictions():
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=4)
    data = gen.sample({"train": 200, "valid": 100, "test": 50}, seed=4)
    cfg = Config.from_dict(
        {
            "model": {"z_y_dim": 2, "z_a_dim": 2, "f_y_dim": 8, "f_a_dim": 4, "hidden": 16},
            "train": {"ensemble": 1, "epochs": 2, "kl_warmup": 1, "progress": False, "calibrate": "none"},
        }
    )
    mfm = fit(cfg, data).mfm
    batch = data["test"].batch(np.arange(50)).without_labels()
    before = mfm.label_distribution(mfm.posterior_z_y(batch).mean).mean
    cal = calibrate(mfm, data["valid"], experts=False)
    assert (mfm.expert_log_temperature == 0).all()
    after = mfm.label_distribution(mfm.posterior_z_y(batch).mean).mean
    assert torch.allclose(before, after)
    assert cal["nlpd_after"] <= cal["nlpd_before"]
    # each modality's share of the label's log temperature where it is observed, fitted with it
    shares = mfm.model.label_observed_log_temperature
    assert list(cal["label_observed_log_temperature"]) == ["a", "b"] and shares.abs().sum() > 0
    assert torch.equal(shares, torch.tensor(list(cal["label_observed_log_temperature"].values())))
    # they set the label's scale of a sample by what it observes, and move no point prediction
    z = mfm.posterior_z_y(batch).mean
    scale = lambda observed: mfm.label_distribution(z, observed=observed).base_dist.scale  # noqa: E731
    only_b = torch.tensor([[False, True]]).expand(50, 2)
    base = mfm.label_distribution(z).base_dist.scale
    assert torch.allclose(scale(only_b), base * shares[1].exp()) and torch.allclose(
        scale(~only_b), base * shares[0].exp()
    )
    assert torch.allclose(scale(torch.ones(50, 2, dtype=torch.bool)), base * shares.sum().exp())
    mfm.model.label_observed_log_temperature = torch.tensor([0.0, 1.0])
    wide = predict(mfm, data["test"], ["b"], num_samples=20, seed=0)
    mfm.model.label_observed_log_temperature = torch.zeros(2)
    plain = predict(mfm, data["test"], ["b"], num_samples=20, seed=0)
    assert np.array_equal(wide.point, plain.point)
    assert ((wide.upper - wide.lower) > (plain.upper - plain.lower)).all()
    # the experts' calibration ("all") sets the shares to 0; a checkpoint written before them loads with none
    mfm.model.label_observed_log_temperature = torch.tensor([0.3, -0.2])
    calibrate(mfm, data["valid"], experts=True)
    assert (mfm.model.label_observed_log_temperature == 0).all()
    mfm.load_state_dict({k: v for k, v in mfm.state_dict().items() if k != "model.label_observed_log_temperature"})
    assert (mfm.model.label_observed_log_temperature == 0).all()


def test_a_sample_that_observes_nothing_gets_an_offset_of_its_own():
    """Where a sample lacks every modality of a subset, its predictive is the prior predictive, to which no
    modality's share applies: the offset e of the label's log temperature there is fitted with the shares (a
    regression label), on the held-out samples that observe nothing in some subset, and on no others."""
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=4)
    cfg = Config.from_dict(
        {
            "model": {"z_y_dim": 2, "z_a_dim": 2, "f_y_dim": 8, "f_a_dim": 4, "hidden": 16},
            "train": {"ensemble": 1, "epochs": 2, "kl_warmup": 1, "progress": False, "calibrate": "none"},
        }
    )
    complete = gen.sample({"train": 200, "valid": 100, "test": 50}, seed=4)
    mfm = fit(cfg, complete).mfm
    cal = calibrate(mfm, complete["valid"], experts=False)
    assert cal["label_empty_log_temperature"] == 0.0  # no held-out sample observes nothing: nothing to fit
    # half the held-out samples lack b: from b alone they observe nothing
    data = gen.sample({"train": 200, "valid": 100, "test": 50}, missing=0.5, seed=4)
    mfm = fit(cfg, data).mfm
    cal = calibrate(mfm, data["valid"], experts=False)
    e = mfm.model.label_empty_log_temperature
    assert float(e) == cal["label_empty_log_temperature"] != 0.0
    # it scales the label where nothing is observed, and nowhere else
    z = torch.zeros(5, 2)
    scale = lambda observed: mfm.label_distribution(z, observed=observed).base_dist.scale  # noqa: E731
    base, shares = mfm.label_distribution(z).base_dist.scale, mfm.model.label_observed_log_temperature
    assert torch.allclose(scale(torch.zeros(5, 2, dtype=torch.bool)), base * e.exp())
    assert torch.allclose(scale(torch.tensor([[True, False]]).expand(5, 2)), base * shares[0].exp())
    # fitted to the held-out density of those samples (the objective's optimum in e, everything else as fitted)
    valid = data["valid"]
    nothing = ~np.asarray(valid.present["b"], bool)
    fitted = predict(mfm, valid, ["b"], num_samples=200, seed=0).log_density[nothing].mean()
    mfm.model.label_empty_log_temperature = torch.zeros(())
    plain = predict(mfm, valid, ["b"], num_samples=200, seed=0).log_density[nothing].mean()
    assert nothing.sum() > 20 and fitted > plain
    # a checkpoint written before the offset loads with none
    mfm.model.label_empty_log_temperature = torch.tensor(0.5)
    mfm.load_state_dict({k: v for k, v in mfm.state_dict().items() if k != "model.label_empty_log_temperature"})
    assert float(mfm.model.label_empty_log_temperature) == 0.0


def test_calibration_subsets_cover_singles_and_all_when_there_are_many():
    names = [f"m{i}" for i in range(8)]
    subs = calibration_subsets(names, limit=20)
    assert len(subs) == 20 and len(set(subs)) == 20
    assert all((m,) in subs for m in names) and tuple(names) in subs
    assert len(calibration_subsets(names[:3])) == 7


def test_calibration_stays_within_its_bounds_and_steps_around_points_it_cannot_factorise(monkeypatch):
    """The log temperatures are fitted within +-``LOG_TEMPERATURE_BOUND`` (unbounded, a line search on a binary POM
    rating once tried an expert weight whose product of experts float32 could not factorise, and the run ended in
    a traceback); a point where the product cannot be factorised is never taken: the fit goes on around it. A
    validation split labelled with the model's own most likely labels rewards sharp predictions, so the
    unbounded fit goes far from 0."""
    from pyro_mfm.infer import calibrate as cal

    data = small_data(label="categorical", n=200)
    mfm = MFM(data.schema, small_config(), feature_statistics(data["train"])).eval()
    valid = data["train"]
    with torch.no_grad():
        b = valid.batch(np.arange(len(valid))).without_labels()
        own = mfm.label_distribution(mfm.posterior_z_y(b).mean).probs.argmax(-1).numpy()
    sharp = from_arrays(
        {m: np.asarray(valid.features[m]) for m in data.schema.names},
        own,
        label_kind="categorical",
        num_classes=3,
        present={m: np.asarray(valid.present[m]) for m in data.schema.names},
        steps={"s": np.asarray(valid.steps["s"])},
    )["train"]

    def values(result):
        return result["label_log_temperature"] + list(result["expert_log_temperature"].values())

    free = calibrate(mfm, sharp)
    assert max(abs(v) for v in values(free)) > 2.0
    monkeypatch.setattr(cal, "LOG_TEMPERATURE_BOUND", 1.0)
    bounded = calibrate(mfm, sharp)
    assert bounded["nlpd_after"] < bounded["nlpd_before"]
    assert all(abs(v) <= 1.0 + 1e-6 for v in values(bounded))
    assert any(abs(v) == pytest.approx(1.0) for v in values(bounded))

    draws = cal.HeldOutNLPD.product_draws

    # as if float32 failed where a weight is over e^0.5
    def fragile(self, experts, observed, t, r, eps, absent=None, refitted=None):
        if float(t.detach().max()) > 0.5:
            raise torch.linalg.LinAlgError("not positive-definite")
        return draws(self, experts, observed, t, r, eps, absent, refitted)

    monkeypatch.setattr(cal.HeldOutNLPD, "product_draws", fragile)
    result = calibrate(mfm, sharp)
    assert result["nlpd_after"] < result["nlpd_before"]
    assert all(t <= 0.5 for t in result["expert_log_temperature"].values())


def test_class_labels_get_a_temperature_of_their_own_where_one_modality_is_observed_alone():
    """A class label keeps no shares of the label's log temperature (on UCI's classes they moved ECE both ways), but
    where a sample observes one modality alone, that modality's own offset u_m of it applies: the logits of a sample
    observing only m are divided by exp(t_y + u_m), of one observing two or more by exp(t_y). A weak view alone, whose
    posterior of z_y spans classes, is underconfident where two views together count shared evidence twice, and
    one temperature cannot serve both. An offset is kept where it gains more than one nat of held-out log density
    (Akaike: what one fitted parameter gains by chance); on this short fit neither need be."""
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=4)
    data = gen.sample({"train": 200, "valid": 100}, seed=4)
    cfg = Config.from_dict(
        {
            "model": {"z_y_dim": 2, "z_a_dim": 2, "f_y_dim": 8, "f_a_dim": 4, "hidden": 16},
            "train": {"ensemble": 1, "epochs": 2, "kl_warmup": 1, "progress": False, "calibrate": "none"},
        }
    )
    mfm = fit(cfg, data).mfm
    cal = calibrate(mfm, data["valid"], experts=False)
    assert cal["label_observed_log_temperature"] == {"a": 0.0, "b": 0.0}
    assert (mfm.model.label_observed_log_temperature == 0).all() and cal["label_log_temperature"][0] != 0
    # each single modality's offset is kept only where it gains more than one nat of held-out log density (Akaike)
    singles = mfm.model.label_single_log_temperature
    assert list(cal["label_single_log_temperature"]) == ["a", "b"] == list(cal["label_single_gain"])
    assert torch.equal(singles, torch.tensor(list(cal["label_single_log_temperature"].values())))
    for i, m in enumerate(["a", "b"]):
        assert (cal["label_single_gain"][m] > 1) == bool(singles[i] != 0), cal
    singles = torch.tensor([-0.4, 0.6])
    mfm.model.label_single_log_temperature = singles
    batch = data["valid"].batch(np.arange(50)).without_labels()
    z = mfm.posterior_z_y(batch).mean
    logits = lambda observed: mfm.label_distribution(z, observed=observed).logits  # noqa: E731
    raw = mfm.model.label_output(z)
    t_y = mfm.D.log_temperature
    one = torch.zeros(50, 2, dtype=torch.bool)
    for i in range(2):
        alone = one.clone()
        alone[:, i] = True
        assert torch.allclose(logits(alone), torch.log_softmax(raw * (-(t_y + singles[i])).exp(), -1), atol=1e-6)
    both = torch.ones(50, 2, dtype=torch.bool)
    assert torch.allclose(logits(both), torch.log_softmax(raw * (-t_y).exp(), -1), atol=1e-6)
    # prediction reads them: a higher offset for a flattens the predictions from a alone, and only those
    mfm.model.label_single_log_temperature = torch.zeros(2)
    plain = {obs: predict(mfm, data["valid"], obs, num_samples=20, seed=0).point for obs in (("a",), ("b",))}
    mfm.model.label_single_log_temperature = torch.tensor([1.0, 0.0])
    flat = {obs: predict(mfm, data["valid"], obs, num_samples=20, seed=0).point for obs in (("a",), ("b",))}
    assert flat[("a",)].max(-1).mean() < plain[("a",)].max(-1).mean()
    assert np.array_equal(flat[("b",)], plain[("b",)])
    # a checkpoint written before the single modalities' offsets loads with none
    mfm.load_state_dict({k: v for k, v in mfm.state_dict().items() if k != "model.label_single_log_temperature"})
    assert (mfm.model.label_single_log_temperature == 0).all()


def test_a_duplicated_view_alone_is_sharper_than_the_two_copies_together():
    """Views a and c are copies, with copies of one encoder and expert, and the label is a class: {a} and {c} carry
    the same information, and {a, c} counts it twice, so its posterior predictive is sharper than {a}'s with the same
    evidence. Without the redundancies ("label") one log temperature t_y is fitted to all three subsets, the pair
    pulling it flat; the copies alone then take their own offsets u_a = u_c, fitted on their own with t_y fixed,
    which are below 0: each alone needs sharper logits than the double-counted pair."""
    mfm, data = _duplicated_view(label="categorical", num_classes=3, seed=6)
    cal = calibrate(mfm, data["valid"], experts=False, redundancies=False, num_samples=64)
    u, gain = cal["label_single_log_temperature"], cal["label_single_gain"]
    assert abs(u["a"] - u["c"]) < 1e-4 and u["a"] < 0 and min(gain.values()) > 1, cal
    assert cal["nlpd_after"] < cal["nlpd_before"]


@pytest.mark.parametrize("label,fusion", [("regression", "poe"), ("categorical", "poe"), ("regression", "mfn")])
def test_the_label_only_objective_from_cached_outputs_equals_drawing_anew(label, fusion):
    """With the experts' values at 0 the draws of z_y are fixed, so the label-only calibration computes the label
    head's outputs once and only rescales them: at any label factor and shares, and any number of the draws, the
    same objective as drawing through the product of experts (or the fusion network's posterior) at each
    evaluation (with the single modalities' offsets too)."""
    from pyro_mfm.infer.calibrate import HeldOutNLPD, _encoded

    if fusion == "mfn":  # the MFN reads sequences of one length
        gen = LinearGaussianMFM.random({"a": (5, 3), "b": (5, 2)}, z_y_dim=2, label=label, seed=0)
        data = gen.sample({"train": 120}, missing=0.3, seed=0)
    else:
        data = small_data(label=label, n=120)
    mfm = MFM(data.schema, small_config(fusion=fusion), feature_statistics(data["train"])).eval()
    parts = _encoded(mfm, data["train"], 64, torch.device("cpu"))  # two batches
    subsets = calibration_subsets(mfm.names)
    cached = HeldOutNLPD(mfm, parts, subsets, 24, seed=1, cache=True)
    anew = HeldOutNLPD(mfm, parts, subsets, 24, seed=1, cache=False)
    m, k = len(mfm.names), mfm.D.log_temperature.numel()
    t, r = torch.zeros(m), torch.zeros(m, m)
    values = (
        (torch.zeros(k), torch.zeros(m), torch.zeros(m)),
        (torch.full((k,), 0.4), torch.linspace(-0.3, 0.5, m), torch.linspace(-0.7, 0.2, m)),
    )
    for t_y, shares, singles in values:
        for draws in (6, 24):
            cached.draws = anew.draws = draws
            with torch.no_grad():
                a, b = cached(t, r, t_y, shares, singles), anew(t, r, t_y, shares, singles)
            assert torch.isfinite(a) and torch.allclose(a, b, rtol=1e-5), (label, fusion, draws, a, b)
    with pytest.raises(ValueError, match="fixed ones"):  # its draws are those of experts at t = 0 and r = 0
        cached(torch.full((m,), 0.5), r, torch.zeros(k), torch.zeros(m))


def test_label_draws_keep_the_cached_outputs_within_their_budget():
    """The label-only fit takes as many draws as the budget of cached outputs allows, from 16 up to 256; where even
    16 would not fit, :func:`calibrate` draws anew at each evaluation instead of caching."""
    from pyro_mfm.infer.calibrate import EXPERT_DRAWS, LABEL_DRAWS, OUTPUT_BUDGET, label_draws

    assert label_draws(7 * 1000 * 1) == LABEL_DRAWS  # three modalities, 1,000 held-out samples, one output
    uci = 63 * 200 * 10  # 63 subsets, 200 held-out digits, 10 classes
    assert EXPERT_DRAWS < label_draws(uci) < LABEL_DRAWS and label_draws(uci) * uci <= OUTPUT_BUDGET
    assert label_draws(63 * 100_000 * 10) == EXPERT_DRAWS


def test_with_the_experts_the_label_factor_is_fitted_again_with_many_draws():
    """``calibrate = "all"`` fits the experts' values with 16 draws drawn anew at each evaluation, then the label's
    factor again at those values with a label-only fit's draws (cached: the experts are fixed by then), from which the
    16 draws' bias (`docs/quality.md`, "The calibration's draws") is gone: the label's factor minimises that
    objective."""
    from pyro_mfm.infer.calibrate import EXPERT_DRAWS, HeldOutNLPD, _encoded

    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=3)
    data = gen.sample({"train": 300, "valid": 200}, missing=0.2, seed=3)
    cfg = small_regression_config("none")
    mfm = fit(cfg, data).mfm
    cal = calibrate(mfm, data["valid"], experts=True)
    refit = cal["label_refit"]
    assert refit["draws"] > EXPERT_DRAWS and refit["nlpd_after"] <= refit["nlpd_before"]
    t, r, t_y = mfm.expert_log_temperature.clone(), mfm.expert_redundancy.clone(), mfm.D.log_temperature.clone()
    assert t.abs().sum() > 0  # the experts' values were fitted too
    assert cal["label_log_temperature"] == [float(v) for v in t_y]
    parts = _encoded(mfm, data["valid"], 512, torch.device("cpu"))
    objective = HeldOutNLPD(
        mfm, parts, calibration_subsets(mfm.names), refit["draws"], seed=0, cache=True, fixed=(t, r)
    )
    with torch.no_grad():
        at = float(objective(t, r, t_y))
        assert at == pytest.approx(refit["nlpd_after"], rel=1e-5)
        for step in (-0.05, 0.05):
            assert at <= float(objective(t, r, t_y + step))
    # a label-only fit leaves nothing to fit again
    assert calibrate(mfm, data["valid"], experts=False)["label_refit"] is None


def test_the_label_is_calibrated_on_each_outputs_own_predictive():
    """The calibration's objective scores each output of a regression label by its own mixture over the draws,
    sum_i log (1/K) sum_k p(y_i | z_k), what each output's interval reads, and not the joint mixture, whose draws of
    z_y moving every output together stand in for a spread that each output's predictive lacks: the objective equals
    that sum by hand, and differs from the joint. With one output the two are the same."""
    from pyro_mfm.infer.calibrate import HeldOutNLPD, _encoded, mixture_log_predictive

    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", label_dim=3, seed=0)
    data = gen.sample({"train": 80}, seed=0)
    mfm = MFM(data.schema, small_config(), feature_statistics(data["train"])).eval()
    parts = _encoded(mfm, data["train"], 80, torch.device("cpu"))
    objective = HeldOutNLPD(mfm, parts, [("a", "b")], 16, seed=0)
    m, k = len(mfm.names), mfm.D.log_temperature.numel()
    t_y = torch.linspace(-0.3, 0.3, k)
    with torch.no_grad():
        value = objective(torch.zeros(m), torch.zeros(m, m), t_y)
        batch, y = parts[0][0], parts[0][1]
        q = mfm.posterior_z_y(batch)
        z = q.loc + (q.scale_tril @ objective.noise[0].unsqueeze(-1)).squeeze(-1)  # the objective's fixed draws
        lp = mfm.label_distribution(z).base_dist.log_prob(y)  # (K, N, 3)
        by_hand = -(torch.logsumexp(lp, 0) - math.log(16)).sum(-1).mean()
        joint = -(torch.logsumexp(lp.sum(-1), 0) - math.log(16)).mean()
    torch.testing.assert_close(value, by_hand, rtol=1e-4, atol=1e-4)
    assert abs(float(value - joint)) > 1e-4  # an untrained model: its draws spread little
    one = lp[..., :1]
    torch.testing.assert_close(mixture_log_predictive(one), torch.logsumexp(one.sum(-1), 0) - math.log(16))
