"""Training: checkpoints and resume, and the statistical acceptance tests of the model.

The statistical tests train real (small) models with fixed seeds; their thresholds are the ones the project set
for the model (15% of the Bayes-optimal error, 85-95% coverage of 90% intervals, accuracy 0.97 on UCI), and the
comments give the sampling error of each estimate, so a pass is not a fluke of the test set.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, load_embedded
from pyro_mfm.data.dataset import MultimodalData
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer import CheckpointError, fit, impute, load_model, predict
from pyro_mfm.infer.evaluate import observed_subsets
from pyro_mfm.infer.objective import Objective
from pyro_mfm.model import MFM

SMALL = [
    "train.progress=False",
    "train.ensemble=1",
    "model.z_y_dim=4",
    "model.z_a_dim=4",
    "model.hidden=64",
    "model.f_y_dim=16",
    "model.f_a_dim=8",
]


def tiny_data():
    gen = LinearGaussianMFM.random({"a": 3, "b": 5}, z_y_dim=2, label="regression", seed=0)
    return gen.sample({"train": 200, "valid": 50, "test": 50}, missing=0.2, seed=0)


def test_interrupted_training_resumes_to_the_same_result(tmp_path):
    data = tiny_data()
    cfg = Config().override(
        SMALL + ["train.epochs=4", "train.kl_warmup=2", "train.batch_size=32", "train.valid_samples=3"]
    )
    full = fit(cfg, data, tmp_path / "full")
    fit(cfg.override(["train.epochs=2"]), data, tmp_path / "cut")  # the "interrupted" run stops after epoch 2
    resumed = fit(cfg, data, tmp_path / "cut", resume=True)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert a["state"]["epoch"] == b["state"]["epoch"] == 3
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert [r["train_loss"] for r in full.history] == pytest.approx([r["train_loss"] for r in resumed.history])
    # the kept model too: the "interrupted" run ended with a mean of the weights of its own, which the resumed run,
    # which found no better epoch, must not take for its best epoch's weights
    a, b = (
        torch.load(tmp_path / "full" / "best.pt", weights_only=False),
        torch.load(tmp_path / "cut" / "best.pt", weights_only=False),
    )
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert full.averaged == resumed.averaged
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "event" not in r] == [0, 1, 2, 3]
    for name in ("best.pt", "last.pt", "config.json"):
        assert (tmp_path / "cut" / name).exists()


def test_checkpoint_reloads_and_corruption_is_detected(tmp_path):
    data = tiny_data()
    cfg = Config().override(SMALL + ["train.epochs=1", "train.kl_warmup=0", "train.valid_samples=2"])
    result = fit(cfg, data, tmp_path)
    mfm, config, _ = load_model(tmp_path)
    assert config.to_dict() == cfg.to_dict()
    torch.manual_seed(0)
    p1 = predict(result.mfm, data["test"], num_samples=5).point
    torch.manual_seed(0)
    p2 = predict(mfm, data["test"], num_samples=5).point
    np.testing.assert_allclose(p1, p2, rtol=1e-5)
    raw = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="last.pt is corrupt or truncated"):
        load_model(tmp_path / "last.pt")
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="other.pt"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


@pytest.mark.slow
@pytest.mark.parametrize("expert", ["mlp", "linear", "linear-refit"])
def test_linear_gaussian_predictions_and_imputations_match_the_bayes_oracle(expert):
    """3 modalities, 20% of modalities missing at random in training. For every observed subset on 2,000 held-out
    samples: label MSE and imputation MSE within 15% of the exact Bayes-optimal values, and 90% predictive
    intervals covering between 85% and 95% (the coverage estimate's standard error is sqrt(.9 * .1 / 2000) = 0.7%,
    a relative MSE's about sqrt(2 / 2000) = 3%). With MLP experts of z_y, and with linear ones (``model.expert =
    "linear"``), the form of these modalities' exact experts, alone and with each subset's posterior refitted to the
    full one (``model.linear_refit``; the missing modalities' samples fit the subsets they observe).

    The label's spread is calibrated on the validation split with 256 draws of z_y per sample and subset. With 16, the
    Monte Carlo estimate of the held-out log predictive density, biased low most where q(z_y | x_S) is wide, was
    raised by widening the label: a log factor of +0.30 to +0.32, and the linear experts' intervals on the subsets
    with ``a`` covered 0.93-0.95, (a, c) 0.951 with the mean of the weights (``pyro_mfm/infer/calibrate.py``)."""
    gen = LinearGaussianMFM.random({"a": 4, "b": 6, "c": 8}, z_y_dim=2, z_a_dims=2, label="regression", seed=0)
    data = gen.sample({"train": 4000, "valid": 1000}, missing=0.2, seed=1)
    test = gen.sample({"test": 2000}, missing=0.0, seed=1)["test"]
    cfg = Config().override(
        SMALL
        + ["train.epochs=150", "train.patience=30", "train.select_metric='loss'", "model.alpha=0.0"]
        + [f"model.expert='{expert.split('-')[0]}'", f"model.linear_refit={expert.endswith('refit')}"]
    )
    mfm = fit(cfg, data).mfm
    y = test.labels[:, 0]
    failures = []
    for obs in observed_subsets(("a", "b", "c")):
        pred = predict(mfm, test, list(obs), num_samples=200, interval=0.9)
        oracle_mean, _ = gen.predict_y(test, observed=list(obs))
        ratio = np.mean((pred.point[:, 0] - y) ** 2) / np.mean((oracle_mean[:, 0] - y) ** 2)
        coverage = np.mean((y >= pred.lower[:, 0]) & (y <= pred.upper[:, 0]))
        if ratio > 1.15 or not 0.85 <= coverage <= 0.95:
            failures.append(f"{obs}: label MSE ratio {ratio:.3f}, coverage {coverage:.3f}")
        hidden = [m for m in ("a", "b", "c") if m not in obs]
        if hidden:
            imp = impute(mfm, test, list(obs), num_samples=50)
            oracle = gen.impute(test, observed=list(obs))
            for m in hidden:
                x = np.asarray(test.features[m])
                r = np.mean((imp.mean[m] - x) ** 2) / np.mean((oracle[m][0] - x) ** 2)
                if r > 1.15:
                    failures.append(f"{obs}: imputation of {m} MSE ratio {r:.3f}")
    assert not failures, failures


@pytest.mark.slow
def test_unlabelled_samples_improve_the_classifier():
    """97% of training labels missing (40 labelled samples of 1,500, fewer than the 120 features): the MFM trained on
    all samples (the unlabelled ones through the generative part) is more accurate than the same model trained on
    the labelled samples alone, with the same number of optimisation steps (the labelled samples repeated to the
    size of the full training split, so the epochs, steps and early stopping are alike).

    Four training seeds; the gain in test accuracy (2,000 samples) is positive on each, and its mean over the seeds
    exceeds the one-sided 97.5% quantile of Student's t with 3 degrees of freedom (3.182) times its standard error
    over the seeds: the training's own variability, not only the test sample's, is in the bound.

    The label carries the generative model's weight (``model.label_weight = "fixed"``, alpha = 1): on data drawn from
    the MFM's own story that is the weighting under which unlabelled samples inform z_y (the default ``"auto"`` makes
    the model discriminative; `docs/quality.md`). With equal steps and 30 epochs, the gains over six seeds were
    0.04-0.11 (mean 0.076, t = 7.0); 3,000 samples (97 labelled) and 60 epochs gave 0.024-0.035 at three times the cost,
    and 20 epochs left one seed of six below its labelled-only model. With 10% labelled, and ten times the epochs for
    the labelled 300 alone, the two were level (0.859-0.872 against 0.850-0.866 over four seeds); without equal steps
    the labelled-only model takes 10 to 30 times fewer steps and can stop at chance."""
    gen = LinearGaussianMFM.random(
        {"a": 40, "b": 40, "c": 40},
        z_y_dim=2,
        z_a_dims=4,
        label="categorical",
        num_classes=3,
        label_noise=0.1,
        noise=1.0,
        seed=1,
    )
    data = gen.sample({"train": 1500}, label_missing=0.97, seed=4)
    data.splits["valid"] = gen.sample({"valid": 500}, seed=4)["valid"]
    test = gen.sample({"test": 2000}, seed=4)["test"]
    train = data["train"]
    labelled = np.nonzero(train.label_present)[0]
    repeated = np.resize(labelled, len(train))  # the labelled samples, repeated: as many steps per epoch
    supervised = MultimodalData(data.schema, {"train": train.subset(repeated), "valid": data["valid"]})
    gains = []
    for seed in range(4):
        cfg = Config().override(
            SMALL
            + ["train.epochs=30", "train.select_metric='accuracy'", "model.label_weight='fixed'", f"train.seed={seed}"]
            + ["train.calibrate='none'"]  # what is compared is what training makes of the unlabelled samples
        )
        acc = {
            name: (predict(fit(cfg, d).mfm, test, num_samples=50).label == test.labels).mean()
            for name, d in (("semi", data), ("supervised", supervised))
        }
        gains.append(acc["semi"] - acc["supervised"])
    gains = np.array(gains)
    se = gains.std(ddof=1) / math.sqrt(len(gains))
    assert (gains > 0).all() and gains.mean() > 3.182 * se, (gains, se)


@pytest.mark.slow
def test_uci_all_views_accuracy():
    """Embedded UCI Multiple Features, the shipped configuration trained for 12 of its 60 epochs (accuracy with
    every view saturates early; the remaining epochs serve the decoders) and with one MFM of its ensemble of four
    (the suite's time; ``tests/test_ensemble.py`` trains ensembles), all 6 views observed: test accuracy >= 0.97
    (400 test digits: a standard error of about 0.8 points at that accuracy); and each other view imputed from pix
    closer to the truth than the training mean."""
    data = load_embedded()
    cfg = Config.load(
        Path(__file__).parents[1] / "models" / "uci_mfeat.toml",
        ["train.progress=False", "train.epochs=12", "train.ensemble=1"],
    )
    mfm = fit(cfg, data).mfm
    pred = predict(mfm, data["test"], num_samples=50)
    accuracy = np.mean(pred.label == data["test"].labels)
    assert accuracy >= 0.97, accuracy
    # the other views imputed from pix: below the squared error of the training mean (the configuration's
    # imputation term; 60 epochs give 0.15-0.60 of it, 12 without the term 0.83-0.93 with narrower heads,
    # docs/quality.md)
    test, train = data["test"], data["train"]
    imp = impute(mfm, test, ["pix"], num_samples=50, seed=0)
    ratios = {}
    for m in test.schema.names:
        if m != "pix":
            x = np.asarray(test.features[m])
            ratios[m] = ((imp.mean[m] - x) ** 2).mean() / ((np.asarray(train.features[m]).mean(0) - x) ** 2).mean()
    assert all(r < 1 for r in ratios.values()), ratios


def built_run(data, cfg):
    """A model (initialised from seed 0), SGD optimizer and step scheduler built outside ``fit``."""
    torch.manual_seed(0)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    optimizer = torch.optim.SGD(mfm.parameters(), lr=0.05, momentum=0.5)
    return mfm, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)


def test_fit_trains_the_model_optimizer_and_scheduler_it_is_given_and_resumes_them(tmp_path):
    data = tiny_data()
    cfg = Config().override(
        SMALL
        + [
            "train.epochs=3",
            "train.kl_warmup=0",
            "train.valid_samples=2",
            "train.calibrate='none'",
            "train.batch_size=64",
        ]
    )
    mfm, optimizer, scheduler = built_run(data, cfg)
    before = {k: v.clone() for k, v in mfm.state_dict().items()}
    result = fit(cfg, data, tmp_path / "full", model=mfm, optimizer=optimizer, scheduler=scheduler)
    assert result.mfm is mfm
    assert any(not torch.equal(before[k], v) for k, v in mfm.state_dict().items())
    assert scheduler.last_epoch == 3  # stepped after each epoch
    state = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["state"]
    assert state["scheduler"]["last_epoch"] == 3
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.05 * 0.5**3)
    assert state["optimizer"]["param_groups"][0]["momentum"] == 0.5  # SGD's state, not the default Adam's
    # a run cut after 2 epochs resumes its optimizer and schedule: the same weights as the uninterrupted run
    m2, o2, s2 = built_run(data, cfg)
    fit(cfg.override(["train.epochs=2"]), data, tmp_path / "cut", model=m2, optimizer=o2, scheduler=s2)
    m3, o3, s3 = built_run(data, cfg)
    fit(cfg, data, tmp_path / "cut", resume=True, model=m3, optimizer=o3, scheduler=s3)
    assert s3.last_epoch == 3 and o3.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5**3)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["model"]
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_fit_passes_the_kl_warmup_factor_to_the_objective_it_is_given():
    data = tiny_data()
    cfg = Config().override(
        SMALL
        + [
            "train.epochs=2",
            "train.kl_warmup=2",
            "train.valid_samples=2",
            "train.calibrate='none'",
            "train.batch_size=50",
        ]
    )
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    seen = []

    class Recording(Objective):
        def __call__(self, batch, beta=1.0):
            if torch.is_grad_enabled():  # training steps (validation runs without gradients)
                seen.append(beta)
            return super().__call__(batch, beta=beta)

    fit(cfg, data, model=mfm, objective=Recording(mfm))
    assert seen == pytest.approx([s / 8 for s in range(8)])  # 4 steps an epoch, rising to 1 over 2 epochs
    with pytest.raises(ValueError, match="needs the model"):
        fit(cfg, data, optimizer=torch.optim.SGD(mfm.parameters(), lr=0.1))


def test_cosine_schedule_anneals_the_learning_rate_to_zero_over_the_epochs(tmp_path):
    data = tiny_data()
    base = SMALL + ["train.kl_warmup=0", "train.valid_samples=2", "train.calibrate='none'", "train.lr=0.01"]
    cfg = Config().override(base + ["train.epochs=4", "train.lr_schedule='cosine'"])
    fit(cfg, data, tmp_path / "run")
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["state"]
    assert state["scheduler"]["last_epoch"] == 4 and state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0)
    # after the second of four epochs: half way down the half cosine
    epoch2 = torch.load(tmp_path / "run" / "epoch-0002.pt", weights_only=False)["state"]
    assert epoch2["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005)
    fit(Config().override(base + ["train.epochs=2"]), data, tmp_path / "constant")
    state = torch.load(tmp_path / "constant" / "last.pt", weights_only=False)["state"]
    assert state.get("scheduler") is None and state["optimizer"]["param_groups"][0]["lr"] == 0.01


def test_plateau_schedule_halves_the_rate_where_the_selection_score_stalls(tmp_path):
    """``lr_schedule = "plateau"``: at a rate too small to move the validation loss, the score stalls, and the rate
    is halved after more than 5 scored epochs without a better score; the epochs within the KL warm-up are not
    counted (a scheduler stepped on all 13 epochs would halve twice, on the 12 scored ones once)."""
    data = tiny_data()
    cfg = Config().override(
        SMALL
        + ["train.epochs=13", "train.kl_warmup=2", "train.lr=1e-7", "train.lr_schedule='plateau'"]
        + ["train.select_metric='loss'", "train.valid_samples=2", "train.calibrate='none'"]
    )
    result = fit(cfg, data, tmp_path / "run")
    lr = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["state"]["optimizer"]["param_groups"][0]["lr"]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-7)
    replay = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=5)
    for record in result.history[1:]:  # the second epoch ends the warm-up: scored from there
        replay.step(record["valid_loss"])
    assert lr == optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-7, rel=1e-12)


def test_weight_decay_shrinks_the_networks_weights_and_not_the_learned_scales():
    """AdamW's decoupled decay multiplies a decayed parameter by 1 - lr * wd per step; with zero gradients (Adam's
    moments 0, no update) that is all a step does, so each weight matrix is scaled by exactly that factor and the
    biases and the learned per-feature scales of x_m are left as they were."""
    from pyro_mfm.infer.run import decay_groups, split_decay_state

    data = tiny_data()
    cfg = Config().override(SMALL)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"]))
    lr, wd = 0.01, 0.5
    opt = torch.optim.AdamW(decay_groups(mfm, wd), lr=lr)
    before = {n: p.detach().clone() for n, p in mfm.named_parameters()}
    for p in mfm.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for n, p in mfm.named_parameters():
        factor = 1 - lr * wd if p.dim() >= 2 else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor, rtol=1e-6, atol=0, msg=n)
    assert any(n.endswith("raw_scale") for n in before) and any(p.dim() < 2 for p in mfm.parameters())
    # a state written with one group of every parameter (module order) resumes with each parameter's moments
    one = torch.optim.AdamW(mfm.parameters(), lr=lr, weight_decay=wd)
    for p in mfm.parameters():
        p.grad = torch.randn_like(p)
    one.step()
    two = torch.optim.AdamW(decay_groups(mfm, wd), lr=lr)
    two.load_state_dict(split_decay_state(one.state_dict(), two, mfm))
    for p in mfm.parameters():
        torch.testing.assert_close(two.state[p]["exp_avg_sq"], one.state[p]["exp_avg_sq"], rtol=0, atol=0)
    assert [g["weight_decay"] for g in two.param_groups] == [wd, 0.0]


def test_model_selection_scores_each_modality_alone_and_leaves_the_training_unchanged():
    """``train.select_over = "subsets"`` (the default) selects on the label metric's mean over the validation
    predictions from all modalities and from each alone; the extra predictions draw from a seed of their own, so
    the run trains exactly as with ``"observed"``, and only which epoch is kept may differ."""
    from pyro_mfm.infer.loop import ModelSelection, validation_score
    from pyro_mfm.infer.metrics import label_metrics

    data = tiny_data()
    cfg = Config().override(
        SMALL + ["train.epochs=6", "train.kl_warmup=1", "train.batch_size=32", "train.valid_samples=3"]
    )
    runs = {over: fit(cfg.override([f"train.select_over='{over}'"]), data) for over in ("subsets", "observed")}
    sub, obs = runs["subsets"], runs["observed"]
    assert [r["train_loss"] for r in sub.history] == [r["train_loss"] for r in obs.history]
    assert [r["valid_mae"] for r in sub.history] == [r["valid_mae"] for r in obs.history]
    scored = sub.history[1:]  # the first epoch is within the KL warm-up
    assert sub.best["mae_subsets"] == min(r["valid_mae_subsets"] for r in scored)
    assert obs.best["mae"] == min(r["valid_mae"] for r in scored) and "valid_mae_subsets" not in obs.history[0]

    # the score: the mean over all modalities and each alone, each alone predicted with the training seed's draws
    # and scored on the samples that recorded it (a fifth of the samples lack each modality)
    valid = data["valid"]
    scores = validation_score(sub.mfm, data, cfg, "mae", Objective(sub.mfm))
    y, labelled = np.asarray(valid.labels), np.asarray(valid.label_present)
    assert not all(np.asarray(valid.present[m]).all() for m in ("a", "b"))
    alone = [
        label_metrics(
            predict(sub.mfm, valid, (m,), num_samples=3, keep_samples=False, seed=0),
            y,
            labelled & np.asarray(valid.present[m]),
            valid.schema.label,
        )["mae"]
        for m in ("a", "b")
    ]
    assert scores["mae_subsets"] == pytest.approx(np.mean([scores["mae"], *alone]), rel=1e-12)

    # selection reads the key it is given
    selection = ModelSelection("mae", key="valid_mae_subsets")
    for epoch, (all_, mean) in enumerate([(1.0, 2.0), (0.5, 2.5), (2.0, 1.5)]):
        selection.update({"epoch": epoch, "train_loss": 0.0, "valid_mae": all_, "valid_mae_subsets": mean})
    assert selection.best == {"epoch": 2, "mae_subsets": 1.5}
