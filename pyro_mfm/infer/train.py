"""Stochastic variational inference for the MFM: minibatch SVI with validation, model selection, early stopping,
a progress bar, a JSONL log of every epoch, and checkpoints that ``evaluate``, ``impute`` and ``--resume`` load.

Resuming from ``last.pt`` restores weights, optimizer state, random-number generators and the position inside the
epoch, so that a resumed run takes the same steps as an uninterrupted one (bit for bit on CPU). SIGINT and SIGTERM
stop at the next step boundary after writing ``last.pt``; a non-finite loss or gradient never reaches the
parameters (``train.on_divergence``, :mod:`pyro_mfm.infer.faults`).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm import tqdm

from ..config import Config, ConfigError
from ..data.dataset import Batch, MultimodalData
from ..data.schema import DataError, Schema, schema_differences
from ..data.stats import FeatureStats, feature_statistics
from ..model import MFM
from ..outputs import strict
from . import distributed
from .calibrate import calibrate
from .checkpoint import (CheckpointError, atomic_write, folder_lock, prepare_folder, read_checkpoint, read_resume,
                         rng_state, save_run, set_rng_state, update_weights)
from .faults import DivergenceError, StopRequested, diagnose, divergence_report, grad_norm, is_finite
from .metrics import HIGHER_IS_BETTER, label_metrics
from .objective import Objective
from .predict import predict
from .progress import bars_enabled
from .tensorboard import TrainingLog


@contextmanager
def cpu_threads(n: int):
    """Run a block with ``n`` PyTorch CPU threads (``0``: leave the setting alone), restoring it afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """The device ``train.device`` names; :class:`ConfigError` for a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r}: CUDA is not available on this machine (PyTorch "
                              f"{torch.__version__}); expected 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s); expected 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'")
    return device


def select_metric(config: Config, mfm: MFM) -> str:
    name = config.train.select_metric
    if name != "auto":
        if name not in HIGHER_IS_BETTER:
            raise ValueError(f"train.select_metric = {name!r}: expected 'auto' or one of {sorted(HIGHER_IS_BETTER)}")
        return name
    if mfm.D is None:
        return "loss"
    return "accuracy" if mfm.D.is_discrete else "mae"


def drop_modalities(batch: Batch, rate: float, generator: torch.Generator, rows=None, total=None) -> Batch:
    """Hide each observed modality of each sample with probability ``rate``, keeping at least one observed.

    ``batch`` may be the part ``rows`` of a global batch of ``total`` samples (one rank's shard): the draws are
    made for the whole global batch, so N ranks hide exactly what one process would."""
    if rate <= 0:
        return batch
    names = list(batch.present)
    present = torch.stack([batch.present[m] for m in names], -1)
    draws = torch.rand(present.shape if rows is None else (total, len(names)), generator=generator)
    drop = (draws if rows is None else draws[rows]).to(present.device) < rate
    kept = present & ~drop
    # a sample that would lose every observed modality keeps its first observed one
    first = torch.zeros_like(present)
    first.scatter_(-1, present.float().argmax(-1, keepdim=True), True)
    kept = torch.where(kept.any(-1, keepdim=True), kept, present & first)
    hidden = {m: kept[:, i] for i, m in enumerate(names)}
    return Batch(
        x={m: batch.x[m] * hidden[m].reshape((-1,) + (1,) * (batch.x[m].dim() - 1)) for m in names},
        present=hidden, steps=batch.steps, y=batch.y, y_present=batch.y_present, index=batch.index,
    )


@dataclass
class TrainResult:
    """The trained model (the best by the validation metric, in eval mode) and the run's record.

    ``interrupted`` names the signal (``"SIGTERM"``, ``"SIGINT"``) that stopped training early, after a checkpoint
    that ``--resume`` continues from; ``skipped`` holds the report of every step dropped as non-finite."""

    mfm: MFM
    config: Config
    stats: FeatureStats
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    out_dir: Path | None = None
    interrupted: str = ""
    skipped: list[str] = field(default_factory=list)
    calibration: dict = field(default_factory=dict)
    resumed: dict = field(default_factory=dict)
    """Where a resumed run continued: ``{"from": checkpoint, "epoch": e, "step": s, "changed": {key: [old, new]}}``
    (epoch and step 0-based; empty for a fresh run)."""


@dataclass
class Progress:
    """Where a run is: epoch bookkeeping, and the position inside the current epoch (resumable at any step)."""

    best: dict
    history: list = field(default_factory=list)
    bad_epochs: int = 0
    epoch: int = 0  # the epoch being run (0-based)
    step: int = 0  # the next step of it
    total: float = 0.0  # this rank's sum of per-sample losses over the steps run so far in the epoch
    count: int = 0
    skipped: int = 0
    events: list = field(default_factory=list)  # resumes that changed the configuration, written to log.jsonl


def log_lines(history: list, events: list) -> bytes:
    """``log.jsonl``: one line per epoch; each resume that changed a field outside :data:`RESUME_FREE` is a line
    ``{"event": "resume", "from": ..., "at_epoch": ..., "at_step": ..., "changed": {key: [old, new]}}`` before the
    first epoch it ran."""
    lines, pending = [], sorted(events, key=lambda e: e["at_epoch"])
    for record in history:
        while pending and pending[0]["at_epoch"] <= record["epoch"]:
            lines.append(pending.pop(0))
        lines.append(record)
    return "".join(json.dumps(strict(r), allow_nan=False) + "\n" for r in lines + pending).encode()


def validation_score(mfm: MFM, data, config: Config, metric: str, objective: Objective) -> dict:
    ds = data[config.data.valid_split]
    mfm.eval()
    with torch.no_grad():
        losses = [float(objective(b)) * len(b) for b in ds.loader(config.evaluate.batch_size, device=_dev(mfm))]
    scores = {"loss": sum(losses) / len(ds)}
    if mfm.D is not None and metric != "loss":
        pred = predict(mfm, ds, num_samples=config.train.valid_samples, batch_size=config.evaluate.batch_size,
                       keep_samples=False, interval=config.evaluate.interval)
        scores.update(label_metrics(pred, np.asarray(ds.labels), ds.label_present, ds.schema.label))
    return scores


def _dev(mfm):
    return next(mfm.parameters()).device


RESUME_FREE = frozenset({
    "train.epochs", "train.patience", "train.progress", "train.num_threads", "train.keep_last", "train.device",
    "train.validate", "data.source", "evaluate.num_samples", "evaluate.interval", "evaluate.batch_size",
    "evaluate.seed",
})
"""Configuration fields a resumed run may change freely: how long it runs, where and how it reports, where the data
file lies. Any other change alters the run's result and needs ``allow_config_change``."""


def config_changes(old: dict, new: dict) -> dict:
    """``{"table.key": [old, new]}`` for every field that differs between two ``Config.to_dict()`` results."""
    out = {}
    for table in sorted(set(old) | set(new)):
        a, b = old.get(table, {}), new.get(table, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                out[f"{table}.{key}"] = [a.get(key), b.get(key)]
    return out


def fit(config: Config, data: MultimodalData, out_dir=None, resume: bool = False, overwrite: bool = False,
        allow_config_change: bool = False, on_epoch=None) -> TrainResult:
    """Train an MFM on ``data[config.data.train_split]``, selecting on ``config.data.valid_split``.

    With ``out_dir``, writes ``last.pt``/``best.pt``/``epoch-XXXX.pt``/``log.jsonl``/``config.json``, holding an
    exclusive lock on the folder (a second training into it fails at once); a non-empty folder is refused unless
    ``resume`` or ``overwrite`` (which deletes the old run's files first). With ``resume``, continues from
    ``out_dir/last.pt`` (or the newest readable epoch checkpoint), at the very step where the run stopped; a
    configuration that differs from the run's in a field outside :data:`RESUME_FREE` is refused unless
    ``allow_config_change`` (the change is then recorded in ``log.jsonl``). SIGINT/SIGTERM stop training at the next
    step boundary after a checkpoint. Under ``torchrun``, trains data-parallel (see
    :mod:`pyro_mfm.infer.distributed`). Returns the best model (by the validation metric), in eval mode.
    ``on_epoch(record)``, if given, is called with each epoch's ``log.jsonl`` record (on rank 0), e.g. to report the
    validation metric to a hyperparameter search that may stop the run by raising.
    """
    config.check("configuration")  # a configuration built or changed in Python gets the checks a file gets
    with cpu_threads(config.train.num_threads):
        dist, device = distributed.setup(resolve_device(config.train.device))
        try:
            lock = folder_lock(out_dir) if out_dir is not None and dist.main else nullcontext()
            with lock:
                if out_dir is not None and dist.main:
                    prepare_folder(out_dir, resume, overwrite)
                return _fit(config, data, out_dir, resume, dist, device, allow_config_change, on_epoch)
        finally:
            distributed.shutdown(dist)


def _step(loss_fn, batch: Batch, global_size: int, params, clip_norm: float, dist, device):
    """Forward and backward on one (shard of a) batch: ``(loss, gradient norm, error)``. A batch with non-finite
    inputs on any rank is not run (``nan`` on every rank), so a NaN in the data never reaches PyTorch's kernels
    (some raise on it, e.g. a Cholesky factorisation); an error raised by the objective itself is returned."""
    nan = torch.tensor(float("nan"))
    inputs_ok = all(torch.isfinite(x).all() for x in batch.x.values()) and (
        batch.y is None or not batch.y.is_floating_point() or bool(torch.isfinite(batch.y).all()))
    if distributed.all_sum([not inputs_ok], dist, device)[0]:
        return nan, nan, None
    try:
        loss = loss_fn(batch, global_size)
        (loss * loss_fn.weight(len(batch), global_size)).backward()
    except (RuntimeError, ValueError) as e:  # raised by torch or Pyro on non-finite values
        if dist.enabled:  # the other ranks wait in the gradient all-reduce: nothing to recover
            raise
        return nan, nan, e
    norm = torch.nn.utils.clip_grad_norm_(params, clip_norm) if clip_norm else grad_norm(params)
    bad = distributed.all_sum([not (is_finite(loss) and is_finite(norm))], dist, device)[0]
    return (nan, nan, None) if bad and is_finite(loss) and is_finite(norm) else (loss, norm, None)


def _resume_payload(out_dir, data: MultimodalData, config: Config, allow_config_change: bool) -> dict:
    if out_dir is None:
        raise CheckpointError("resume needs the run folder that holds last.pt")
    payload = read_resume(out_dir)
    if payload["schema"] != data.schema.to_dict():
        found = schema_differences(Schema.from_dict(payload["schema"]), data.schema, strict=True)
        raise CheckpointError(f"checkpoint {payload['path']}: trained on data with another schema than "
                              f"{config.data.source} ({'; '.join(found) or 'other schema metadata'}); expected the "
                              "modalities and label it was trained on")
    try:  # the stored configuration with today's defaults for fields it predates
        stored_config = Config.from_dict(payload["config"], where=payload["path"])
    except ConfigError:  # not valid today: compared as stored, which names every field that differs
        stored_config = None
    if stored_config is not None:
        arch = stored_config.differences(config, tables=("model",))
        if arch:
            raise CheckpointError(f"checkpoint {payload['path']}: trained with another architecture "
                                  f"({'; '.join(arch)}); resuming needs the [model] table it was trained with")
    stored = stored_config.to_dict() if stored_config is not None else payload["config"]
    changed = config_changes(stored, config.to_dict())
    fixed = {k: v for k, v in changed.items() if k not in RESUME_FREE}
    if fixed and not allow_config_change:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
        raise CheckpointError(f"checkpoint {payload['path']}: resuming with another configuration ({listed}) would "
                              f"change the run's result; expected the run's configuration ({Path(out_dir) / 'config.json'})"
                              ", or allow_config_change / --allow-config-change to continue with the new one")
    payload["changed"] = changed
    return payload


def _fit(config: Config, data: MultimodalData, out_dir, resume: bool, dist, device,
         allow_config_change: bool = False, on_epoch=None) -> TrainResult:
    tc = config.train
    train = data[config.data.train_split]
    if len(train) == 0:
        raise DataError(f"{config.data.source}: split {config.data.train_split!r} has no samples; expected at least "
                        "one training sample")
    has_valid = config.data.valid_split in data and len(data[config.data.valid_split]) > 0
    out_dir = Path(out_dir) if out_dir is not None else None
    writer = dist.main and out_dir is not None
    payload = None
    if resume:  # rank 0 reads the run folder; the other ranks need not see it
        payload = distributed.broadcast(
            _resume_payload(out_dir, data, config, allow_config_change) if dist.main else None, dist)
    if payload is not None:
        s = payload["stats"]
        stats = FeatureStats(s["mean"], s["std"], s["label_mean"], s["label_std"])
    else:
        stats = feature_statistics(train)
    pyro.set_rng_seed(tc.seed)
    mfm = MFM(data.schema, config.model, stats).to(device)
    optimizer = (torch.optim.AdamW(mfm.parameters(), lr=tc.lr, weight_decay=tc.weight_decay) if tc.weight_decay
                 else torch.optim.Adam(mfm.parameters(), lr=tc.lr))
    objective = Objective(mfm)
    loss_fn = distributed.DataParallelLoss(mfm, objective, dist)
    if dist.rank:
        torch.manual_seed(tc.seed * 1000003 + dist.rank)  # each rank draws its own noise
    metric = select_metric(config, mfm) if has_valid else "loss"
    if metric != "loss" and not np.asarray(data[config.data.valid_split].label_present).any():
        warnings.warn(f"{config.data.source}: split {config.data.valid_split!r} has no labelled sample; selecting "
                      f"on the validation loss instead of {metric}", RuntimeWarning, stacklevel=3)
        metric = "loss"
    higher = HIGHER_IS_BETTER[metric]
    run = Progress(best={"epoch": -1, metric: -math.inf if higher else math.inf})
    dropper = torch.Generator().manual_seed(tc.seed + 1)
    if payload is not None:
        mfm.load_state_dict(payload["model"])
        st = payload["state"]
        optimizer.load_state_dict(st["optimizer"])
        run.history, run.best, run.bad_epochs, run.epoch = st["history"], st["best"], st["bad_epochs"], st["epoch"] + 1
        pos = st.get("position")
        if pos:
            run.epoch, run.step, run.skipped = pos["epoch"], pos["step"], pos["skipped"]
            if dist.main:
                run.total, run.count = pos["total"], pos["count"]
        ranks = st.get("rng_ranks") or []
        set_rng_state(ranks[dist.rank] if len(ranks) == dist.world else st["rng"])
        dropper.set_state(st["rng"]["dropper"])
        run.events = list(st.get("events") or [])
        resumed = {"from": payload["path"], "epoch": run.epoch, "step": run.step, "changed": payload["changed"]}
        fixed = {k: v for k, v in payload["changed"].items() if k not in RESUME_FREE}
        if fixed:  # allowed by allow_config_change: the log says from where the run is another one
            run.events.append({"event": "resume", "from": payload["path"], "at_epoch": run.epoch,
                               "at_step": run.step, "changed": fixed})
        if dist.main and tc.progress:
            tqdm.write(f"resuming {payload['path']} at epoch {run.epoch + 1}, step {run.step}"
                       + (f"; changed {payload['changed']}" if payload["changed"] else ""), file=sys.stderr)
    if writer:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
        if run.events:  # the log says at once that (and from where) the run continues with another configuration
            atomic_write(out_dir / "log.jsonl", lambda f: f.write(log_lines(run.history, run.events)))

    def state(position: bool) -> dict:
        rng = {**rng_state(), "dropper": dropper.get_state()}
        ranks = distributed.gather(rng, dist)
        total, count = distributed.all_sum([run.total, run.count], dist, device)
        return {"optimizer": optimizer.state_dict(), "epoch": run.epoch - 1, "history": run.history,
                "events": run.events,
                "best": run.best, "bad_epochs": run.bad_epochs, "metric": metric, "rng": rng, "rng_ranks": ranks,
                "world_size": dist.world, "position": {"epoch": run.epoch, "step": run.step, "total": total,
                                                       "count": int(count), "skipped": run.skipped} if position else None}

    def save_position() -> None:
        st = state(position=True)
        if writer:
            save_run(out_dir, mfm, config, stats, st)

    def diverged(report: str, result: TrainResult) -> None:
        """Stop (``on_divergence = "stop"``: checkpoint at this step, then raise) or record the skipped step."""
        if tc.on_divergence == "stop":
            save_position()
            where = f"; the run folder {out_dir} holds the last good state" if out_dir is not None else ""
            raise DivergenceError(report + where + " (train.on_divergence = 'skip' drops such steps instead)")
        warnings.warn(report, RuntimeWarning, stacklevel=3)
        result.skipped.append(report)
        run.skipped += 1

    result = TrainResult(mfm, config, stats, run.history, run.best, out_dir)
    if payload is not None:
        result.resumed = resumed
    n, size = len(train), tc.batch_size
    steps_per_epoch = math.ceil(n / size)
    params, named = list(mfm.parameters()), list(mfm.named_parameters())
    validated = False  # see train.validate
    log = TrainingLog(out_dir if writer else None, start_epoch=run.epoch)  # TensorBoard events
    log_split = data[config.data.valid_split] if has_valid else train  # its first batch shows the loss terms
    log_batch = log_split.batch(np.arange(min(len(log_split), config.evaluate.batch_size)), device) if writer else None
    with StopRequested() as stop:
        while run.epoch < tc.epochs:
            epoch = run.epoch
            mfm.train()
            order = np.random.default_rng(tc.seed * 100003 + epoch).permutation(n)  # depends on (seed, epoch) only
            good = copy.deepcopy((mfm.state_dict(), optimizer.state_dict()))
            bar = tqdm(range(run.step, steps_per_epoch), total=steps_per_epoch, initial=run.step,
                       desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not (bars_enabled(tc.progress) and dist.main),
                       leave=False)
            for step in bar:
                idx = order[step * size:(step + 1) * size]
                if len(idx) >= dist.world:  # (a last global batch smaller than the number of ranks is left out)
                    rows = distributed.shard(np.arange(len(idx)), dist)
                    batch = train.batch(idx[rows], device)
                    if tc.kl_warmup:
                        objective.beta = min(1.0, (epoch + step / steps_per_epoch) / tc.kl_warmup)
                    batch = (drop_modalities(batch, tc.modality_dropout, dropper, torch.as_tensor(rows), len(idx))
                             if dist.enabled else drop_modalities(batch, tc.modality_dropout, dropper))
                    optimizer.zero_grad()
                    with pyro.validation_enabled(tc.validate == "always" or not validated):
                        loss, norm, error = _step(loss_fn, batch, len(idx), params, tc.clip_norm, dist, device)
                    validated = True
                    if error is not None or not (is_finite(loss) and is_finite(norm)):
                        found = ([f"the objective raised {type(error).__name__}: {str(error).splitlines()[0]}"] if error is not None else []) + diagnose(
                            mfm, batch, named)
                        optimizer.zero_grad()
                        diverged(divergence_report(epoch, step, loss, norm, batch, found), result)
                    else:
                        optimizer.step()
                        if not is_finite(torch.stack([p.detach().sum() for p in params])):
                            mfm.load_state_dict(good[0])
                            optimizer.load_state_dict(good[1])
                            diverged(f"non-finite parameters after the optimizer step at epoch {epoch + 1}, step "
                                     f"{step + 1}; rolled back to the start of the epoch", result)
                        else:
                            run.total += loss.item() * len(batch)
                            run.count += len(batch)
                            if run.count:
                                bar.set_postfix(loss=f"{run.total / run.count:.3f}")
                run.step = step + 1
                if distributed.all_sum([stop.signum is not None], dist, device)[0] and run.step < steps_per_epoch:
                    save_position()
                    result.interrupted = stop.name or "signal on another rank"
                    mfm.eval()
                    log.close()
                    return result
            total, count = distributed.all_sum([run.total, run.count], dist, device)
            if count == 0:
                raise DivergenceError(f"every step of epoch {epoch + 1} had a non-finite loss or gradient and was "
                                      f"skipped; expected a finite objective (check the data and train.lr)")
            record = {"epoch": epoch, "train_loss": total / count}
            if run.skipped:
                record["skipped_steps"] = run.skipped
            if has_valid:
                scores = validation_score(mfm, data, config, metric, objective) if dist.main else None
                record.update({f"valid_{k}": v for k, v in distributed.broadcast(scores, dist).items()})
            score = record.get(f"valid_{metric}", record["train_loss"])
            warm = epoch + 1 >= tc.kl_warmup  # scores during the KL warm-up are not those of the final objective
            improved = warm and (score > run.best[metric] if higher else score < run.best[metric])
            if improved:
                run.best = result.best = {"epoch": epoch, metric: score}
                run.bad_epochs = 0
            elif warm:
                run.bad_epochs += 1
            run.history.append(record)
            if dist.main:
                log.epoch(record, mfm, optimizer, log_batch)
                if on_epoch is not None:
                    on_epoch(record)
            run.epoch, run.step, run.total, run.count, run.skipped = epoch + 1, 0, 0.0, 0, 0
            if tc.progress and dist.main:
                tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}"
                           + (f", valid {metric} {score:.4f}" if has_valid else "") + (" *" if improved else ""))
            if out_dir is not None:
                st = state(position=False)
                if writer:
                    names = ([f"epoch-{epoch + 1:04d}.pt"] if tc.keep_last else []) + (["best.pt"] if improved else [])
                    save_run(out_dir, mfm, config, stats, st, names + ["last.pt"], tc.keep_last)
                    atomic_write(out_dir / "log.jsonl", lambda f: f.write(log_lines(run.history, run.events)))
            elif improved:
                best_state = {k: v.detach().clone() for k, v in mfm.state_dict().items()}
            if distributed.all_sum([stop.signum is not None], dist, device)[0]:
                result.interrupted = stop.name or "signal on another rank"
                break
            if tc.patience and run.bad_epochs >= tc.patience:
                break
    log.close()
    # an interrupted run returns the model as it stands (matching last.pt); a finished one, its best epoch
    best_file = out_dir / "best.pt" if out_dir is not None else None
    if not result.interrupted and run.best["epoch"] < 0 and run.history:
        # no epoch after the KL warm-up: the last epoch is the best there is (best.pt is always written)
        last = run.history[-1]
        run.best = result.best = {"epoch": last["epoch"], metric: last.get(f"valid_{metric}", last["train_loss"])}
        warnings.warn(f"training ended after {len(run.history)} epoch(s), within the KL warm-up "
                      f"(train.kl_warmup = {tc.kl_warmup}): no epoch was scored on the final objective; the best "
                      f"model is the last epoch" + (f" ({best_file})" if best_file is not None else ""),
                      RuntimeWarning, stacklevel=3)
        if writer and not best_file.exists():
            raw = (out_dir / "last.pt").read_bytes()
            atomic_write(best_file, lambda f: f.write(raw))
        elif out_dir is None:
            best_state = {k: v.detach().clone() for k, v in mfm.state_dict().items()}
    if not result.interrupted and best_file is not None and dist.main and best_file.exists():
        mfm.load_state_dict(read_checkpoint(best_file)["model"])
    elif not result.interrupted and out_dir is None and run.best["epoch"] >= 0:
        mfm.load_state_dict(best_state)
    mfm.eval()
    if not result.interrupted and tc.calibrate != "none" and has_valid and dist.main:
        result.calibration = calibrate(mfm, data[config.data.valid_split], seed=tc.seed,
                                       batch_size=config.evaluate.batch_size, experts=tc.calibrate == "all")
        if result.calibration and writer and best_file.exists():
            update_weights(best_file, mfm)  # best.pt holds the calibrated model that evaluate loads
        if result.calibration and writer:
            atomic_write(out_dir / "calibration.json", lambda f: f.write(
                json.dumps(strict(result.calibration), indent=2, allow_nan=False).encode()))
    return result
