"""Informative missingness (``model.missingness``): whether a modality is recorded is an observed site of the model,
r_m ~ Bernoulli(sigmoid(b_m + w_m . z_y)), and a known absence is an expert of z_y in the guide."""

import math

import numpy as np
import pytest
import torch
from pyro import poutine

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, MultimodalData
from pyro_mfm.data.missing import with_present
from pyro_mfm.data.stats import FeatureStats, absence_p_value, feature_statistics
from pyro_mfm.guide import ABSENCE_LEVEL, missing_not_at_random
from pyro_mfm.infer import fit, predict
from pyro_mfm.infer.calibrate import HeldOutNLPD, _encoded, calibration_subsets
from pyro_mfm.infer.train import missingness_lines
from pyro_mfm.model import MFM, SINGLE, _random_subset
from tests.test_model import small_config, small_data


def test_statistics_record_what_each_modality_lacks_and_old_ones_read_as_nothing_missing():
    data = small_data(n=400)
    train = data["train"]
    stats = feature_statistics(train)
    for m in train.schema.names:
        assert stats.missing[m] == pytest.approx(1 - np.mean(train.present[m]))
        assert 0 < stats.missing[m] < 1
    assert FeatureStats.from_dict(stats.to_dict()).missing == stats.missing
    old = {k: v for k, v in stats.to_dict().items() if k != "missing"}  # a checkpoint written before
    older = MFM(data.schema, small_config(missingness="informative"), FeatureStats.from_dict(old))
    ignorable = MFM(data.schema, small_config(missingness="ignorable"), stats)
    informative = MFM(data.schema, small_config(missingness="informative"), stats)
    assert older.state_dict().keys() == ignorable.state_dict().keys()
    extra = set(informative.state_dict()) - set(ignorable.state_dict())
    assert "model.R.weight" in extra
    for m in train.schema.names:
        assert f"guide.q_absent.{m}.eta" in extra


def test_a_batch_knows_what_the_data_lack_apart_from_what_a_subset_hides():
    data = small_data(n=64)
    batch = data["train"].batch(np.arange(64))
    for m, p in batch.present.items():
        assert torch.equal(batch.absent[m], ~p)
    sub = batch.observe_only(["a"])
    assert torch.equal(sub.absent["a"], batch.absent["a"]) and set(sub.absent) == {"a"}
    assert not sub.absent_masks(["b", "s"]).any()  # hidden on purpose: neither present nor known absent
    assert sub.absent_masks([]).shape == (64, 0)
    assert torch.equal(batch.to("cpu").absent["b"], batch.absent["b"])


def test_a_known_absence_is_an_expert_of_z_y_and_a_hidden_modality_is_not():
    """q(z_y | x_S, absences in S) is the normalised product of the prior, the observed modalities' experts and the
    absences' learned experts; outside S an absence says nothing."""
    data = small_data(n=64)
    mfm = MFM(data.schema, small_config(missingness="informative"), feature_statistics(data["train"])).eval()
    with torch.no_grad():
        for m in mfm.names:
            mfm.guide.q_absent[m].eta.normal_()
            mfm.guide.q_absent[m].factor.normal_()
    batch = data["train"].batch(np.arange(64)).without_labels()
    features = mfm.guide.features(batch)
    q = mfm.posterior_z_y(batch, features)
    absences = mfm.guide.absence_experts((64,))
    k = mfm.config.z_y_dim
    for i in range(64):
        precision, eta = torch.eye(k), torch.zeros(k)
        for j, m in enumerate(mfm.names):
            if batch.present[m][i]:
                eta, precision = eta + features.experts[j][0][i], precision + features.experts[j][1][i]
            else:
                eta, precision = eta + absences[j][0][i], precision + absences[j][1][i]
        torch.testing.assert_close(q.precision_matrix[i], precision, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(q.mean[i], torch.linalg.solve(precision, eta), rtol=1e-4, atol=1e-4)
    lacking_a = ~batch.present["a"]
    alone = mfm.posterior_z_y(batch.observe_only(["a"]))
    prior = mfm.posterior_z_y(batch.observe_only([]))
    torch.testing.assert_close(prior.mean, torch.zeros(64, k))
    assert (
        alone.mean[lacking_a] - absences[0][0][0] @ torch.linalg.inv(torch.eye(k) + absences[0][1][0])
    ).abs().max() < 1e-4
    ignorable = MFM(data.schema, small_config(missingness="ignorable"), feature_statistics(data["train"])).eval()
    ignorable.load_state_dict(mfm.state_dict(), strict=False)
    torch.testing.assert_close(
        ignorable.posterior_z_y(batch.observe_only(["a"])).mean[lacking_a], torch.zeros(int(lacking_a.sum()), k)
    )


def test_the_model_scores_whether_each_modality_is_recorded_where_it_is_known():
    data = small_data(n=64)
    mfm = MFM(data.schema, small_config(missingness="informative"), feature_statistics(data["train"]))
    assert mfm.model.recorded == ["a", "b", "s"]
    batch = data["train"].batch(np.arange(64))
    sub = batch.observe_only(["a"])
    guide_tr = poutine.trace(mfm.guide).get_trace(sub)
    tr = poutine.trace(poutine.replay(mfm.model, trace=guide_tr)).get_trace(sub)
    tr.compute_log_prob()
    z_y = tr.nodes["z_y"]["value"]
    logits = mfm.model.R(z_y)[:, 0]
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(batch.present["a"].float())
    # outside the subset, b and s are not observed: only a's term counts
    torch.testing.assert_close(tr.nodes["present"]["log_prob"], expected)


def test_random_subsets_take_absences_as_observations_and_draw_alike_without_them():
    data = small_data(n=4000)
    batch = data["train"].batch(np.arange(4000))
    names = list(batch.present)
    torch.manual_seed(0)
    sub = _random_subset(batch, SINGLE, names)
    present, absent = batch.present_masks(names), batch.absent_masks(names)
    kept, gone = sub.present_masks(names), sub.absent_masks(names)
    assert not (kept & ~present).any() and not (gone & ~absent).any()
    assert ((kept | gone).sum(-1) >= 1).all()
    only_absences = ~kept.any(-1) & gone.any(-1)  # a subset of absences alone: trained to predict on its own
    assert only_absences.float().mean() > 0.05
    torch.manual_seed(0)
    plain = _random_subset(batch, SINGLE)
    torch.manual_seed(0)
    none_lacking = _random_subset(batch.with_present(batch.present, {}), SINGLE, names)
    assert torch.equal(plain.present_masks(names), none_lacking.present_masks(names))
    assert not plain.absent_masks(names).any() or torch.equal(plain.absent_masks(names), absent)


def test_calibrations_product_of_experts_counts_the_absences_as_the_guide_does():
    data = small_data(n=96)
    mfm = MFM(data.schema, small_config(missingness="informative"), feature_statistics(data["train"])).eval()
    with torch.no_grad():
        for m in mfm.names:
            mfm.guide.q_absent[m].eta.normal_()
    parts = _encoded(mfm, data["train"], 48, torch.device("cpu"))
    subsets = calibration_subsets(mfm.names)
    objective = HeldOutNLPD(mfm, parts, subsets, 4, seed=0)
    m, k = len(mfm.names), mfm.config.z_y_dim
    for i, (batch, _, _, experts) in enumerate(parts):
        eps = torch.zeros(1, len(batch), k)
        z = objective.product_draws(
            experts, objective.observed[i], torch.zeros(m), torch.zeros(m, m), eps, objective.absent[i]
        )
        for s, obs in enumerate(subsets):
            torch.testing.assert_close(z[0, s], mfm.posterior_z_y(batch.observe_only(obs)).mean, rtol=1e-4, atol=1e-4)


def _informatively_missing(seed: int) -> MultimodalData:
    """Two modalities of a linear-Gaussian MFM; ``b`` is missing for 80% of the samples whose label is above its
    median and for 20% of the others (missing not at random), in every split."""
    gen = LinearGaussianMFM.random({"a": 4, "b": 4}, z_y_dim=2, label="regression", seed=seed)
    data = gen.sample({"train": 1500, "valid": 500, "test": 2000}, seed=seed)
    rng = np.random.default_rng(seed)
    splits = {}
    for name in ("train", "valid", "test"):
        ds = data[name]
        y = np.asarray(ds.labels)[:, 0]
        lack = rng.random(len(ds)) < np.where(y > np.median(y), 0.8, 0.2)
        splits[name] = with_present(ds, {"b": ~lack})
    return MultimodalData(data.schema, splits, source="mnar")


def test_an_absence_that_depends_on_the_label_informs_the_prediction():
    """Where ``b`` goes missing with the label, a sample that lacks it, observed through ``b`` alone (its absence),
    is predicted towards the mean of the label among such samples with the default missingness (``"auto"``, which
    finds the absence informative), and at the prior predictive with it ignorable. The squared errors of the two on
    the test samples that lack ``b`` are compared by their paired difference: the default is better by more than
    three paired standard errors (seed 0: 0.29, standard error 0.033)."""
    data = _informatively_missing(0)
    cfg = Config().override(
        ["train.progress=False", "train.ensemble=1", "train.epochs=30", "model.z_y_dim=2", "model.hidden=32"]
    )
    test = data["test"]
    lacking = ~np.asarray(test.present["b"])
    y = np.asarray(test.labels)[:, 0]
    errors = {}
    for missingness in ("auto", "ignorable"):
        mfm = fit(cfg.override([f"model.missingness='{missingness}'"]), data).mfm
        pred = predict(mfm, test, ["b"], num_samples=50)
        errors[missingness] = (pred.point[lacking, 0] - y[lacking]) ** 2
    diff = errors["ignorable"] - errors["auto"]
    se = diff.std(ddof=1) / math.sqrt(len(diff))
    assert diff.mean() > 3 * se, (diff.mean(), se)
    train = data["train"]
    y_train = np.asarray(train.labels)[:, 0]
    shift = y_train[~np.asarray(train.present["b"])].mean() - y_train.mean()
    assert shift > 0.3 * y_train.std()  # the data's own: what the informative model has to find


def test_the_test_of_independence_finds_an_absence_that_tells_of_the_label_and_no_other():
    """Welch's t-tests (regression, Bonferroni over the outputs) and the chi-squared test (classes): a shift of half
    a standard deviation between 300 samples with and 300 without the modality is found far below the level; an
    absence drawn independently of the label is not found (fixed seed); too few samples either way cannot be tested."""
    rng = np.random.default_rng(0)
    present = rng.random(600) < 0.5
    y = rng.normal(size=(600, 3))
    assert absence_p_value(y, present, "regression") > ABSENCE_LEVEL
    shifted = y + 0.5 * ~present[:, None] * np.array([1.0, 0.0, 0.0])
    assert absence_p_value(shifted, present, "regression") < 1e-4
    # one output of three shifted: the Bonferroni correction multiplies its p-value by three
    one = shifted[:, :1]
    assert absence_p_value(shifted, present, "regression") == pytest.approx(
        min(1, 3 * absence_p_value(one, present, "regression"))
    )
    classes = rng.integers(0, 4, 600)
    assert absence_p_value(classes, present, "categorical") > ABSENCE_LEVEL
    lacking_class_3 = present | (classes != 3)  # only class 3 is ever missing the modality
    assert absence_p_value(classes, lacking_class_3, "categorical") < 1e-6
    assert absence_p_value(y, np.r_[True, np.zeros(599, bool)], "regression") == 1.0
    assert absence_p_value(classes, np.ones(600, bool), "categorical") == 1.0


def test_auto_observes_the_absences_that_tell_of_the_label():
    """``model.missingness = "auto"``: on data whose ``b`` goes missing with the label, b's absence is observed; on
    the same kind of data missing completely at random, none is; "informative" observes every modality that
    training lacks; statistics stored before the test, none."""
    mnar = _informatively_missing(0)
    stats = feature_statistics(mnar["train"])
    assert stats.absence_p["b"] < 1e-6 and stats.missing["a"] == 0
    auto = small_config()
    assert auto.missingness == "auto"
    assert missing_not_at_random(auto, stats, ["a", "b"]) == ["b"]
    mcar = small_data(n=400)
    stats = feature_statistics(mcar["train"])
    assert all(p > ABSENCE_LEVEL for p in stats.absence_p.values())
    assert missing_not_at_random(auto, stats, mcar.schema.names) == []
    assert missing_not_at_random(small_config(missingness="informative"), stats, mcar.schema.names) == ["a", "b", "s"]
    old = FeatureStats.from_dict({k: v for k, v in stats.to_dict().items() if k != "absence_p"})
    assert missing_not_at_random(auto, old, mcar.schema.names) == []
    # the level holds for all the modalities that training lacks together (Bonferroni)
    three = FeatureStats(stats.mean, stats.std, stats.label_mean, stats.label_std, stats.missing, {"a": 0.008})
    assert missing_not_at_random(auto, three, mcar.schema.names) == []
    one = FeatureStats(stats.mean, stats.std, stats.label_mean, stats.label_std, {"a": 0.3}, {"a": 0.008})
    assert missing_not_at_random(auto, one, mcar.schema.names) == ["a"]
    mfn = small_config(missingness="informative", fusion="mfn")
    assert missing_not_at_random(mfn, stats, mcar.schema.names) == []


def test_training_says_what_it_takes_each_absence_for():
    data = _informatively_missing(0)
    config = Config().override(["train.progress=False"])
    (line,) = missingness_lines(config, data)
    assert "'b'" in line and "an observation" in line and "model.missingness = 'auto'" in line
    lines = missingness_lines(config, small_data(n=400))
    assert len(lines) == 3 and all("missing at random" in line for line in lines)
    assert missingness_lines(config.override(["model.missingness='ignorable'"]), data) == []
    complete = LinearGaussianMFM.random({"a": 2, "b": 2}, seed=0).sample({"train": 50}, seed=0)
    assert missingness_lines(config, complete) == []


def test_the_main_job_reports_what_it_takes_each_absence_for(tmp_path, capsys):
    """``pyro-mfm run`` on data whose ``b`` goes missing with the label: ``metrics.json`` records the fraction
    missing, the test's p-value and that the absence is observed, and ``report.md`` says so in a section of its own;
    the console says it before training."""
    import json

    from pyro_mfm.cli import main
    from pyro_mfm.data import save
    from tests.test_cli_model import CONFIG

    save(_informatively_missing(0), tmp_path / "mnar.h5")
    (tmp_path / "mnar.toml").write_text(CONFIG.format(data="mnar.h5").replace("progress = false", "progress = true"))
    out = tmp_path / "job"
    assert main(["run", str(tmp_path / "mnar.toml"), "--out", str(out), "--set", "train.calibrate='none'"]) == 0
    (record,) = json.loads((out / "metrics.json").read_text())["missingness"]
    train = _informatively_missing(0)["train"]
    assert record["modality"] == "b" and record["observed"] is True and record["absence_p"] < 1e-6
    assert record["missing"] == pytest.approx(1 - np.mean(train.present["b"]))  # the data's own validation split
    report = (out / "report.md").read_text()
    assert "## Missing modalities (training split)" in report and "its absence is an observation" in report
    assert "modality 'b' is missing in" in capsys.readouterr().out
