"""The mean of the weights over the patience window (``train.average_weights``, :class:`WeightAverage`).

The mean is checked against the epochs' own checkpoints (``epoch-XXXX.pt``), so what is kept is the arithmetic mean
of the weights at the ends of the best epoch and of every epoch after it; the rule that keeps it is driven by
validation scores set by the test, so both of its outcomes are exercised on the same trained weights.
"""

import json

import pytest
import torch
from test_reliability import TINY  # the same tiny networks

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM
from pyro_mfm.infer import fit, load_model
from pyro_mfm.infer import train as train_module
from pyro_mfm.infer.checkpoint import read_checkpoint
from pyro_mfm.infer.loop import WeightAverage

SMALL = TINY + ["train.batch_size=32", "train.kl_warmup=0", "train.calibrate=none", "train.keep_last=100"]


def data():
    return LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=0).sample(
        {"train": 96, "valid": 32}, missing=0.2, seed=0
    )


def params(state: dict, mfm) -> dict:
    """The parameters (not the buffers) of a model state."""
    names = {n for n, _ in mfm.named_parameters()}
    return {k: v for k, v in state.items() if k in names}


class Scores:
    """Validation scores of the test's choosing: one per epoch in turn, then ``final`` for the mean's scoring."""

    def __init__(self, per_epoch, final):
        self.values, self.final = list(per_epoch), final

    def __call__(self, mfm, data, config, metric, objective, beta=1.0):
        value = self.values.pop(0) if self.values else self.final
        return {"loss": value, metric: value, f"{metric}_subsets": value}


# epoch scores (MAE, lower is better): the best is epoch 3 of 6, then the window 3-6 scores 1.0, 2.0, 4.0, 3.0
EPOCHS = [5.0, 3.0, 1.0, 2.0, 4.0, 3.0]


@pytest.mark.parametrize("final, kept", [(2.5, True), (3.5, False)])
def test_mean_of_the_window_is_kept_where_it_scores_as_well_as_its_median_epoch(tmp_path, monkeypatch, final, kept):
    monkeypatch.setattr(train_module, "validation_score", Scores(EPOCHS, final))
    cfg = Config().override(SMALL + ["train.epochs=6", "train.patience=0"])
    result = fit(cfg, data(), tmp_path / "run")
    assert result.averaged == {
        "epochs": 4,
        "from_epoch": 3,
        "score": final,
        "best_score": 1.0,
        "median_score": 2.5,  # the median of 1, 2, 4, 3
        "kept": kept,
    }
    run = tmp_path / "run"
    epochs = [read_checkpoint(run / f"epoch-{e:04d}.pt")["model"] for e in range(3, 7)]
    mean = {k: torch.stack([s[k] for s in epochs]).mean(0) for k in params(epochs[0], result.mfm)}
    expected = mean if kept else params(epochs[0], result.mfm)
    best = read_checkpoint(run / "best.pt")
    for k, v in expected.items():
        assert torch.allclose(result.mfm.state_dict()[k], v, atol=1e-6), k
        assert torch.allclose(best["model"][k], v, atol=1e-6), k
    # best.pt keeps its epoch's own weights beside the mean (a resumed run starts from them)
    if kept:
        assert torch.equal(best["best_epoch_model"][next(iter(mean))], epochs[0][next(iter(mean))])
    else:
        assert "best_epoch_model" not in best
    # the model that evaluate loads is the one fit returned
    loaded, _, _ = load_model(run)
    for k, v in expected.items():
        assert torch.allclose(loaded.state_dict()[k], v, atol=1e-6), k
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "event" not in r] == list(range(6))
    assert log[-1] == {"event": "average_weights", **result.averaged, "at_epoch": 6}


def test_without_averaging_the_best_epoch_stays(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "validation_score", Scores(EPOCHS, 0.0))
    cfg = Config().override(SMALL + ["train.epochs=6", "train.patience=0", "train.average_weights=false"])
    result = fit(cfg, data(), tmp_path / "run")
    assert result.averaged == {}
    third = read_checkpoint(tmp_path / "run" / "epoch-0003.pt")["model"]
    for k, v in params(third, result.mfm).items():
        assert torch.equal(result.mfm.state_dict()[k], v), k


def test_nothing_to_average_when_the_last_epoch_is_the_best(monkeypatch):
    monkeypatch.setattr(train_module, "validation_score", Scores([3.0, 2.0, 1.0], 0.0))
    result = fit(Config().override(SMALL + ["train.epochs=3", "train.keep_last=0"]), data())
    assert result.averaged == {} and result.best["epoch"] == 2


def test_running_mean_restarts_at_each_best_and_survives_its_state():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    average = WeightAverage(net)
    snapshots = []
    for improved, scored in [(True, True), (False, True), (False, False), (True, True), (False, True), (False, True)]:
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        average.update(improved, scored)
        if improved:
            snapshots = []
        if scored:  # an epoch within the KL warm-up is not added
            snapshots.append([p.detach().clone() for p in net.parameters()])
    assert average.count == 3
    for got, *xs in zip(average.parameters(), *snapshots):
        assert torch.allclose(got, torch.stack(xs).mean(0), atol=1e-6)
    restored = WeightAverage(net)
    restored.load_state_dict(average.state_dict())
    assert restored.count == 3
    for a, b in zip(restored.parameters(), average.parameters()):
        assert torch.equal(a, b)
    # a checkpoint written before the averaging holds none; a run without averaging holds none either
    restored.load_state_dict({})
    assert restored.count == 0
    off = WeightAverage(net, enabled=False)
    off.update(True, True)
    assert off.count == 0 and off.state_dict() == {"average": None}


def test_a_resumed_run_averages_as_the_run_it_continues(tmp_path, monkeypatch):
    """A run that ended with its mean kept, resumed for more epochs without a better one, starts again from its best
    epoch's own weights and continues the same running mean: the same weights as one run of all the epochs, whether
    the final mean is kept or not (not kept, the best epoch's own weights, not the first run's mean, are the model)."""
    cfg = Config().override(SMALL + ["train.epochs=6", "train.patience=0"])
    for final in (2.5, 3.5):
        monkeypatch.setattr(train_module, "validation_score", Scores(EPOCHS, final))
        full = fit(cfg, data(), tmp_path / f"full{final}")
        monkeypatch.setattr(train_module, "validation_score", Scores(EPOCHS[:4], 1.5))
        cut = fit(cfg.override(["train.epochs=4"]), data(), tmp_path / f"cut{final}")
        assert cut.averaged["kept"] and cut.averaged["epochs"] == 2
        monkeypatch.setattr(train_module, "validation_score", Scores(EPOCHS[4:], final))
        resumed = fit(cfg, data(), tmp_path / f"cut{final}", resume=True)
        assert resumed.averaged == full.averaged and full.averaged["kept"] == (final == 2.5)
        for k, v in full.mfm.state_dict().items():
            assert torch.allclose(resumed.mfm.state_dict()[k], v, atol=1e-6), k
