"""The parts of a training run, each owning its state: where the run is (:class:`Progress`), model selection and
early stopping (:class:`ModelSelection`), the random-number generators (:class:`RandomState`), the KL warm-up
(:class:`KLWarmup`), the average of the weights over the patience window (:class:`WeightAverage`), the divergence
guard (:class:`DivergenceGuard`) and the run folder (:class:`Checkpointer`);
with what a step and an epoch's end apply: the modality dropout (:func:`drop_modalities`) and the validation score
(:func:`validation_score` on the metric :func:`select_metric` picks).

:func:`pyro_mfm.infer.train.fit` runs the loop over them. The ``state`` of a checkpoint is the union of the parts'
``state_dict()``s (each part writes its own keys) with the optimizer's, and each part restores itself from it with
``load_state_dict``, so a checkpoint's layout is that of every run folder written so far.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from ..data.dataset import Batch
from ..metric_directions import resolve_select_metric
from ..outputs import atomic_write, strict
from ..rng import get_rng_state, set_rng_state
from . import distributed
from .checkpoint import read_checkpoint, save_run, update_weights
from .faults import DivergenceError, diagnose, divergence_report, is_finite
from .metrics import HIGHER_IS_BETTER, label_metrics
from .predict import predict, split_features


def drop_modalities(batch: Batch, rate: float, generator: torch.Generator, rows=None, total=None) -> Batch:
    """Hide each observed modality of each sample with probability ``rate``, keeping at least one observed.

    ``batch`` may be the part ``rows`` of a global batch of ``total`` samples (one rank's shard): the draws are
    made for the whole global batch, so N ranks hide exactly what one process would."""
    if rate <= 0:
        return batch
    names = list(batch.present)
    present = batch.present_masks(names)
    draws = torch.rand(present.shape if rows is None else (total, len(names)), generator=generator)
    drop = (draws if rows is None else draws[rows]).to(present.device) < rate
    kept = present & ~drop
    # a sample that would lose every observed modality keeps its first observed one
    first = torch.zeros_like(present)
    first.scatter_(-1, present.float().argmax(-1, keepdim=True), True)
    kept = torch.where(kept.any(-1, keepdim=True), kept, present & first)
    return batch.with_present({m: kept[:, i] for i, m in enumerate(names)})


def validation_score(mfm, data, config, metric: str, objective, beta: float = 1.0) -> dict:
    """The validation split's loss (the objective with KL weight ``beta``) and, selecting on a label metric, the
    label metrics of the predictions from all modalities; with ``train.select_over = "subsets"`` also ``metric``'s
    mean over the predictions from all modalities and from each modality alone (``<metric>_subsets``, what
    :class:`ModelSelection` then reads)."""
    ds = data[config.data.valid_split]
    mfm.eval()
    with torch.no_grad():
        losses = [
            float(objective(b, beta=beta)) * len(b) for b in ds.loader(config.evaluate.batch_size, device=_dev(mfm))
        ]
    scores = {"loss": sum(losses) / len(ds)}
    if mfm.D is not None and metric != "loss":
        truth = (np.asarray(ds.labels), ds.label_present, ds.schema.label)
        subsets = config.train.select_over == "subsets" and len(ds.schema.names) > 1
        options = {
            "num_samples": config.train.valid_samples,
            "batch_size": config.evaluate.batch_size,
            "keep_samples": False,
            "interval": config.evaluate.interval,
            # the predictions from all modalities and from each alone read each modality's one encoding (same values)
            "encoded": split_features(mfm, ds, config.evaluate.batch_size) if subsets else None,
        }
        scores.update(label_metrics(predict(mfm, ds, **options), *truth))
        if config.train.select_over == "subsets":
            scores[f"{metric}_subsets"] = _mean_over_subsets(mfm, ds, config, metric, scores[metric], options)
    return scores


def _mean_over_subsets(mfm, ds, config, metric: str, observed: float, options: dict) -> float:
    """``metric``'s mean over the prediction from all modalities (``observed``, its value) and from each modality
    alone, each scored on the labelled samples that recorded it (the others would be scored on the prior), with
    draws of their own seed (the training's random state is left as it was); a modality that too few samples
    recorded to give a finite value is left out."""
    names, y = ds.schema.names, np.asarray(ds.labels)
    labelled = np.asarray(ds.label_present, bool)
    values = [observed]
    for m in names if len(names) > 1 else ():
        keep = labelled & np.asarray(ds.present[m], bool)
        if keep.sum() >= 2:
            pred = predict(mfm, ds, (m,), seed=config.train.seed, **options)
            values.append(label_metrics(pred, y, keep, ds.schema.label)[metric])
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def best_name(key: str) -> str:
    """The name under which :class:`ModelSelection` keeps the best score of the record's entry ``key``
    (``valid_mae_subsets`` -> ``mae_subsets``)."""
    return key.removeprefix("valid_")


def selection_key(metric: str, config) -> str:
    """The key of an epoch's record that model selection reads for ``metric``: ``valid_<metric>``, or with a label
    metric and ``train.select_over = "subsets"``, ``valid_<metric>_subsets``."""
    subsets = metric != "loss" and config.train.select_over == "subsets"
    return f"valid_{metric}" + ("_subsets" if subsets else "")


def _dev(mfm):
    return next(mfm.parameters()).device


class Progress:
    """Where a run is: the epoch being run (0-based), the next step of it, and the epoch's running record (this
    rank's sum of per-sample losses and their count, the steps skipped as non-finite); resumable at any step.

    State: ``epoch`` (the last finished epoch, -1 before any) and ``position`` (``{"epoch", "step", "total",
    "count", "skipped"}``, the sums over ranks; ``None`` between epochs)."""

    def __init__(self, group: distributed.Dist, device=None):
        self.group, self.device = group, device
        self.epoch, self.step, self.in_epoch = 0, 0, False
        self.total, self.count, self.skipped = 0.0, 0, 0

    def add(self, loss: float, n: int) -> None:
        """Count a step's mean loss ``loss`` over ``n`` samples."""
        self.total += loss * n
        self.count += n

    def totals(self) -> tuple[float, int]:
        """The epoch's loss sum and sample count over every rank."""
        total, count = distributed.all_sum([self.total, self.count], self.group, self.device)
        return total, int(count)

    def next_epoch(self) -> None:
        self.epoch, self.step, self.in_epoch = self.epoch + 1, 0, False
        self.total, self.count, self.skipped = 0.0, 0, 0

    def state_dict(self) -> dict:
        position = None
        if self.in_epoch:
            total, count = self.totals()
            position = {"epoch": self.epoch, "step": self.step, "total": total, "count": count, "skipped": self.skipped}
        return {"epoch": self.epoch - 1, "position": position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"] + 1
        pos = state.get("position")
        if pos:
            self.epoch, self.step, self.skipped = pos["epoch"], pos["step"], pos["skipped"]
            if self.group.main:  # the sums over ranks, counted once
                self.total, self.count = pos["total"], pos["count"]


def select_metric(config, mfm) -> str:
    """The metric of ``train.select_metric`` for ``mfm`` (``auto``: accuracy for a discrete label, MAE for a
    continuous one, the loss without a label)."""
    return resolve_select_metric(config.train.select_metric, None if mfm.D is None else mfm.D.is_discrete)


class ModelSelection:
    """Model selection and early stopping on ``metric`` (a validation score, else the training loss): the best epoch
    and its score, the epochs since the last improvement, and the record of every epoch. An epoch within the KL
    warm-up is recorded but not scored (its objective is not the final one).

    ``key``: the record's entry that is scored (:func:`selection_key`; default ``valid_<metric>``). The best score
    is kept under that entry's name less ``valid_`` (``mae``, or ``mae_subsets`` for the mean over the subsets), so
    that what is printed with it says what it is.

    State: ``best`` (``{"epoch": e, name: score}``, epoch -1 before any is scored), ``bad_epochs``, ``history``,
    ``metric``."""

    def __init__(self, metric: str, patience: int = 0, key: str | None = None):
        self.metric, self.patience = metric, patience
        self.key = key or f"valid_{metric}"
        self.name = best_name(self.key)
        self.higher = HIGHER_IS_BETTER[metric]
        self.best = {"epoch": -1, self.name: -math.inf if self.higher else math.inf}
        self.bad_epochs = 0
        self.history: list[dict] = []

    def score(self, record: dict) -> float:
        return record.get(self.key, record["train_loss"])

    def update(self, record: dict, scored: bool = True) -> bool:
        """Add an epoch's record; whether it is the best so far (only a ``scored`` epoch can be)."""
        score, best = self.score(record), self.best[self.name]
        improved = scored and (score > best if self.higher else score < best)
        if improved:
            self.best = {"epoch": record["epoch"], self.name: score}
            self.bad_epochs = 0
        elif scored:
            self.bad_epochs += 1
        self.history.append(record)
        return improved

    @property
    def should_stop(self) -> bool:
        """``patience`` epochs in a row without improvement (never with ``patience = 0``)."""
        return bool(self.patience) and self.bad_epochs >= self.patience

    def settle(self) -> bool:
        """When no epoch was scored (all within the KL warm-up), make the last one the best; whether it did."""
        if self.best["epoch"] >= 0 or not self.history:
            return False
        last = self.history[-1]
        self.best = {"epoch": last["epoch"], self.name: self.score(last)}
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "history": self.history, "metric": self.metric}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.history = state["best"], state["bad_epochs"], state["history"]


class RandomState:
    """The random-number generators of a run: every rank's global ones (:func:`pyro_mfm.rng.get_rng_state`) and the
    generator of the modality dropout, ``dropper`` (seeded ``seed + 1``, the same on every rank).

    State: ``rng`` (this rank's generators with ``dropper``: rank 0's in the file), ``rng_ranks`` (every rank's),
    ``world_size``. A run resumed on another number of ranks restores rank 0's global generators on each."""

    def __init__(self, seed: int, group: distributed.Dist):
        self.group = group
        self.dropper = torch.Generator().manual_seed(seed + 1)

    def state_dict(self) -> dict:
        rng = {**get_rng_state(), "dropper": self.dropper.get_state()}
        return {"rng": rng, "rng_ranks": distributed.gather(rng, self.group), "world_size": self.group.world}

    def load_state_dict(self, state: dict) -> None:
        ranks = state.get("rng_ranks") or []
        set_rng_state(ranks[self.group.rank] if len(ranks) == self.group.world else state["rng"])
        self.dropper.set_state(state["rng"]["dropper"])


class WeightAverage:
    """Stochastic weight averaging over the patience window (Izmailov et al., "Averaging weights leads to wider
    optima and better generalization", UAI 2018; ``train.average_weights``): the running mean of the weights at the
    end of the best epoch and of every scored epoch after it (torch's ``AveragedModel``), started anew at each new
    best. When training ends, :func:`pyro_mfm.infer.train.fit` keeps it where it scores on the validation split at
    least as well as the median epoch of that window.

    The weights of one epoch's end are one point of a noisy trajectory (on the speaker testbed of `docs/quality.md`,
    after the first ten epochs the test MAE of audio alone moved by 0.02 from one epoch to the next at the median and by
    up to 0.17); the epochs that early stopping trains past the best lie around the same optimum, and their mean is
    nearer its centre than any of them.

    State: ``average`` (the averaged module's state and how many epochs it holds; ``None`` before the first best)."""

    def __init__(self, mfm, enabled: bool = True):
        self.mfm, self.enabled = mfm, enabled
        self.model: AveragedModel | None = None

    def _new(self) -> AveragedModel:
        return AveragedModel(self.mfm, use_buffers=False)

    def update(self, improved: bool, scored: bool) -> None:
        """Add the weights as they stand at an epoch's end: a new best starts the mean anew."""
        if not self.enabled:
            return
        if improved:
            self.model = self._new()
        elif not scored or self.model is None:
            return
        self.model.update_parameters(self.mfm)

    @property
    def count(self) -> int:
        """How many epochs' weights the mean holds (0 before the first best)."""
        return 0 if self.model is None else int(self.model.n_averaged)

    def parameters(self) -> list[torch.Tensor]:
        """The averaged parameters, in the order of the model's ``parameters()``."""
        return [p.detach() for p in self.model.module.parameters()]

    def state_dict(self) -> dict:
        return {"average": None if self.model is None else self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        average = state.get("average")  # a checkpoint written before the averaging has none
        self.model = None
        if average is not None and self.enabled:
            self.model = self._new()
            self.model.load_state_dict(average)


class KLWarmup:
    """The annealing factor ``beta`` of the objective's KL terms: rises linearly, step by step, from 0 to 1 over
    the first ``epochs`` epochs, then stays 1 (always 1 with ``epochs = 0``). ``beta`` is the factor of the last
    step taken (1 before any), which the epoch's validation loss uses. A function of the position: nothing to
    checkpoint."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.beta = 1.0

    def at(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The factor of ``step`` of ``epoch``."""
        if self.epochs:
            self.beta = min(1.0, (epoch + step / steps_per_epoch) / self.epochs)
        return self.beta

    def complete(self, epoch: int) -> bool:
        """Whether ``epoch`` ends at or after the warm-up (its score is one of the final objective). The warm-up's
        last epoch is scored: it ends at ``beta`` just below 1. Scoring only the epochs after it changed no kept
        epoch on UCI's defaults or POM's sequences and cost a little on POM's single ratings (`docs/quality.md`)."""
        return epoch + 1 >= self.epochs


class DivergenceGuard:
    """Keeps non-finite values out of the parameters (``train.on_divergence``): a step with a non-finite loss or
    gradient is not applied, and an optimizer step that makes a parameter non-finite is rolled back to the start of
    the epoch. ``policy = "stop"`` calls ``on_stop()`` (the checkpoint of this step) and raises
    :class:`DivergenceError`; ``"skip"`` warns and keeps the report in ``reports``. Nothing to checkpoint: the state
    to roll back to is taken again at every epoch's start."""

    def __init__(self, policy: str, mfm, optimizer, on_stop, out_dir=None):
        self.policy, self.mfm, self.optimizer, self.on_stop, self.out_dir = policy, mfm, optimizer, on_stop, out_dir
        self.named = list(mfm.named_parameters())
        self.reports: list[str] = []
        self.good = None

    def begin_epoch(self) -> None:
        self.good = copy.deepcopy((self.mfm.state_dict(), self.optimizer.state_dict()))

    def gradients_ok(self, epoch: int, step: int, loss, norm, error, batch) -> bool:
        """Whether the step's loss and gradient norm are finite; if not, the gradients are cleared and the step
        reported, naming what :func:`diagnose` finds not finite (and the error the objective raised, if any)."""
        if error is None and is_finite(loss) and is_finite(norm):
            return True
        found = [] if error is None else [f"the objective raised {type(error).__name__}: {str(error).splitlines()[0]}"]
        found += diagnose(self.mfm, batch, self.named)
        self.optimizer.zero_grad()
        self.diverged(divergence_report(epoch, step, loss, norm, batch, found))
        return False

    def parameters_ok(self, epoch: int, step: int) -> bool:
        """Whether every parameter is finite after the optimizer step; if not, rolls back and reports."""
        if is_finite(torch.stack([p.detach().sum() for _, p in self.named])):
            return True
        self.mfm.load_state_dict(self.good[0])
        self.optimizer.load_state_dict(self.good[1])
        self.diverged(
            f"non-finite parameters after the optimizer step at epoch {epoch + 1}, step {step + 1}; "
            "rolled back to the start of the epoch"
        )
        return False

    def diverged(self, report: str) -> None:
        if self.policy == "stop":
            self.on_stop()
            where = f"; the run folder {self.out_dir} holds the last good state" if self.out_dir is not None else ""
            raise DivergenceError(report + where + " (train.on_divergence = 'skip' drops such steps instead)")
        warnings.warn(report, RuntimeWarning, stacklevel=4)
        self.reports.append(report)


def log_lines(history: list, events: list) -> bytes:
    """``log.jsonl``: one line per epoch; each resume that changed a field outside
    :data:`pyro_mfm.infer.train.RESUME_FREE` is a line ``{"event": "resume", "from": ..., "at_epoch": ...,
    "at_step": ..., "changed": {key: [old, new]}}`` before the first epoch it ran; the mean of the weights over the
    patience window, a line ``{"event": "average_weights", ...}`` after the last epoch
    (:attr:`pyro_mfm.infer.train.TrainResult.averaged`)."""
    lines, pending = [], sorted(events, key=lambda e: e["at_epoch"])
    for record in history:
        while pending and pending[0]["at_epoch"] <= record["epoch"]:
            lines.append(pending.pop(0))
        lines.append(record)
    return "".join(json.dumps(strict(r), allow_nan=False) + "\n" for r in lines + pending).encode()


# the key under which best.pt keeps its epoch's own weights where the mean of the weights replaced them
BEST_EPOCH_WEIGHTS = "best_epoch_model"


class Checkpointer:
    """The run folder ``out_dir`` (written by rank 0; none: nothing is written and the best weights are kept in
    memory): ``config.json`` at the start, ``last.pt`` after every epoch and at a stop, ``best.pt`` at each
    improvement, ``epoch-XXXX.pt`` for the last ``keep_last`` epochs, and ``log.jsonl``. ``state()`` gives the
    training state a checkpoint holds (every rank calls it: it gathers the ranks' states).

    State: ``events`` (the resumes that changed the configuration, written to ``log.jsonl``)."""

    def __init__(self, out_dir, group: distributed.Dist, mfm, config, stats, state, keep_last: int = 0):
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.writer = group.main and self.out_dir is not None
        self.mfm, self.config, self.stats, self.state, self.keep_last = mfm, config, stats, state, keep_last
        self.events: list[dict] = []
        self.best_weights = None

    @property
    def best_file(self) -> Path | None:
        return self.out_dir / "best.pt" if self.out_dir is not None else None

    def start(self, history: list) -> None:
        """Write ``config.json``, and ``log.jsonl`` at once when a resume changed the configuration."""
        if not self.writer:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config.to_dict(), indent=2).encode()
        atomic_write(self.out_dir / "config.json", lambda f: f.write(text))
        if self.events:
            self._write_log(history)

    def save_position(self) -> None:
        """``last.pt`` at the current step (a stop inside an epoch)."""
        state = self.state()
        if self.writer:
            save_run(self.out_dir, self.mfm, self.config, self.stats, state)

    def end_epoch(self, epoch: int, improved: bool, history: list) -> None:
        """``last.pt`` (with ``best.pt`` when ``improved``, and ``epoch-XXXX.pt``) and ``log.jsonl``."""
        if self.out_dir is None:
            if improved:
                self.keep_best()
            return
        state = self.state()
        if self.writer:
            names = ([f"epoch-{epoch + 1:04d}.pt"] if self.keep_last else []) + (["best.pt"] if improved else [])
            save_run(self.out_dir, self.mfm, self.config, self.stats, state, names + ["last.pt"], self.keep_last)
            self._write_log(history)

    def keep_best(self) -> None:
        """Make the model as it stands the best one (a copy of ``last.pt``, or of the weights in memory)."""
        if self.writer and not self.best_file.exists():
            raw = (self.out_dir / "last.pt").read_bytes()
            atomic_write(self.best_file, lambda f: f.write(raw))
        elif self.out_dir is None:
            self.best_weights = {k: v.detach().clone() for k, v in self.mfm.state_dict().items()}

    def load_best(self, group: distributed.Dist) -> None:
        """Load the best epoch's weights into the model: rank 0 from ``best.pt`` (where the mean of the weights over
        the patience window replaced them there, from where they were kept beside it), or the copy in memory."""
        if self.best_file is not None and group.main and self.best_file.exists():
            payload = read_checkpoint(self.best_file)
            self.mfm.load_state_dict(payload.get(BEST_EPOCH_WEIGHTS, payload["model"]))
        elif self.best_weights is not None:
            self.mfm.load_state_dict(self.best_weights)

    def replace_best(self) -> None:
        """Make the model's weights as they stand the best ones (``best.pt``'s weights, or the copy in memory),
        keeping the rest of ``best.pt`` (the training state of its epoch)."""
        if self.writer and self.best_file.exists():
            # the best epoch's own weights stay in it: a resumed run that finds no better epoch starts from them
            update_weights(self.best_file, self.mfm, keep_as=BEST_EPOCH_WEIGHTS)
        elif self.out_dir is None:
            self.best_weights = {k: v.detach().clone() for k, v in self.mfm.state_dict().items()}

    def log_event(self, event: dict, history: list) -> None:
        """Add a line to ``log.jsonl`` after the epochs trained so far (an ``"event"`` line, as a resume's)."""
        self.events.append({**event, "at_epoch": len(history)})
        if self.writer:
            self._write_log(history)

    def save_weights(self) -> None:
        """Put the model's weights and buffers as they stand into ``best.pt`` (what ``evaluate`` loads)."""
        if self.writer and self.best_file.exists():
            update_weights(self.best_file, self.mfm)

    def save_calibration(self, calibration: dict) -> None:
        """Put the calibrated weights into ``best.pt`` (what ``evaluate`` loads) and write ``calibration.json``."""
        if not (calibration and self.writer):
            return
        self.save_weights()
        text = json.dumps(strict(calibration), indent=2, allow_nan=False).encode()
        atomic_write(self.out_dir / "calibration.json", lambda f: f.write(text))

    def _write_log(self, history: list) -> None:
        lines = log_lines(history, self.events)
        atomic_write(self.out_dir / "log.jsonl", lambda f: f.write(lines))

    def state_dict(self) -> dict:
        return {"events": self.events}

    def load_state_dict(self, state: dict) -> None:
        self.events = list(state.get("events") or [])
