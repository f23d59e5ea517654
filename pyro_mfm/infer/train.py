"""Stochastic variational inference for the MFM: minibatch SVI with validation, model selection, early stopping,
a progress bar, a JSONL log of every epoch, and checkpoints that ``evaluate``, ``impute`` and ``--resume`` load.

Resuming from ``last.pt`` restores weights, optimizer state and random-number generators, so that a resumed run
takes the same steps as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from ..config import Config
from ..data.dataset import Batch, MultimodalData
from ..data.stats import FeatureStats, feature_statistics
from ..model import MFM
from .checkpoint import CheckpointError, atomic_write, read_checkpoint, save_checkpoint
from .metrics import HIGHER_IS_BETTER, label_metrics
from .objective import Objective
from .predict import predict


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
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def select_metric(config: Config, mfm: MFM) -> str:
    name = config.train.select_metric
    if name != "auto":
        if name not in HIGHER_IS_BETTER:
            raise ValueError(f"train.select_metric = {name!r}: expected 'auto' or one of {sorted(HIGHER_IS_BETTER)}")
        return name
    if mfm.D is None:
        return "loss"
    return "accuracy" if mfm.D.is_discrete else "mae"


def drop_modalities(batch: Batch, rate: float, generator: torch.Generator) -> Batch:
    """Hide each observed modality of each sample with probability ``rate``, keeping at least one observed."""
    if rate <= 0:
        return batch
    names = list(batch.present)
    present = torch.stack([batch.present[m] for m in names], -1)
    drop = torch.rand(present.shape, generator=generator).to(present.device) < rate
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
    mfm: MFM
    config: Config
    stats: FeatureStats
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    out_dir: Path | None = None


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


def fit(config: Config, data: MultimodalData, out_dir=None, resume: bool = False) -> TrainResult:
    """Train an MFM on ``data[config.data.train_split]``, selecting on ``config.data.valid_split``.

    With ``out_dir``, writes ``last.pt``/``best.pt``/``log.jsonl``/``config.json``; with ``resume``, continues
    from ``out_dir/last.pt``. Returns the best model (by the validation metric), in eval mode.
    """
    with cpu_threads(config.train.num_threads):
        return _fit(config, data, out_dir, resume)


def _fit(config: Config, data: MultimodalData, out_dir, resume: bool) -> TrainResult:
    tc = config.train
    device = resolve_device(tc.device)
    train = data[config.data.train_split]
    has_valid = config.data.valid_split in data
    out_dir = Path(out_dir) if out_dir is not None else None
    payload = None
    if resume:
        if out_dir is None:
            raise CheckpointError("resume needs the run folder that holds last.pt")
        payload = read_checkpoint(out_dir / "last.pt")
        s = payload["stats"]
        stats = FeatureStats(s["mean"], s["std"], s["label_mean"], s["label_std"])
    else:
        stats = feature_statistics(train)
    pyro.set_rng_seed(tc.seed)
    mfm = MFM(data.schema, config.model, stats).to(device)
    optimizer = torch.optim.Adam(mfm.parameters(), lr=tc.lr)
    objective = Objective(mfm)
    metric = select_metric(config, mfm) if has_valid else "loss"
    higher = HIGHER_IS_BETTER[metric]
    history, best, start_epoch = [], {"epoch": -1, metric: -math.inf if higher else math.inf}, 0
    dropper = torch.Generator().manual_seed(tc.seed + 1)
    if payload is not None:
        mfm.load_state_dict(payload["model"])
        st = payload["state"]
        optimizer.load_state_dict(st["optimizer"])
        history, best, start_epoch = st["history"], st["best"], st["epoch"] + 1
        torch.set_rng_state(st["rng"]["torch"])
        dropper.set_state(st["rng"]["dropper"])
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.json", lambda f: f.write(json.dumps(config.to_dict(), indent=2).encode()))
    bad_epochs = st["bad_epochs"] if payload is not None else 0
    steps_per_epoch = math.ceil(len(train) / tc.batch_size)
    for epoch in range(start_epoch, tc.epochs):
        mfm.train()
        total, count = 0.0, 0
        order_seed = tc.seed * 100003 + epoch  # minibatch order depends only on (seed, epoch): resumable
        bar = tqdm(train.loader(tc.batch_size, shuffle=True, seed=order_seed, device=device), total=steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not tc.progress, leave=False)
        for step, batch in enumerate(bar):
            if tc.kl_warmup:
                objective.beta = min(1.0, (epoch + step / steps_per_epoch) / tc.kl_warmup)
            batch = drop_modalities(batch, tc.modality_dropout, dropper)
            loss = objective(batch)
            optimizer.zero_grad()
            loss.backward()
            if tc.clip_norm:
                torch.nn.utils.clip_grad_norm_(mfm.parameters(), tc.clip_norm)
            optimizer.step()
            total += loss.item() * len(batch)
            count += len(batch)
            bar.set_postfix(loss=f"{total / count:.3f}")
        record = {"epoch": epoch, "train_loss": total / count}
        if has_valid:
            scores = validation_score(mfm, data, config, metric, objective)
            record.update({f"valid_{k}": v for k, v in scores.items()})
        score = record.get(f"valid_{metric}", record["train_loss"])
        warm = epoch + 1 >= tc.kl_warmup  # scores during the KL warm-up are not those of the final objective
        improved = warm and (score > best[metric] if higher else score < best[metric])
        if improved:
            best = {"epoch": epoch, metric: score}
            bad_epochs = 0
        elif warm:
            bad_epochs += 1
        history.append(record)
        if tc.progress:
            tqdm.write(f"epoch {epoch + 1}: loss {record['train_loss']:.4f}"
                       + (f", valid {metric} {score:.4f}" if has_valid else "") + (" *" if improved else ""))
        if out_dir is not None:
            state = {
                "optimizer": optimizer.state_dict(), "epoch": epoch, "history": history, "best": best,
                "bad_epochs": bad_epochs, "metric": metric,
                "rng": {"torch": torch.get_rng_state(), "dropper": dropper.get_state()},
            }
            if improved:
                save_checkpoint(out_dir / "best.pt", mfm, config, stats, state)
            save_checkpoint(out_dir / "last.pt", mfm, config, stats, state)
            atomic_write(out_dir / "log.jsonl", lambda f: f.write(
                "".join(json.dumps(r) + "\n" for r in history).encode()))
        elif improved:
            best_state = {k: v.detach().clone() for k, v in mfm.state_dict().items()}
        if tc.patience and bad_epochs >= tc.patience:
            break
    if out_dir is not None and (out_dir / "best.pt").exists():
        mfm.load_state_dict(read_checkpoint(out_dir / "best.pt")["model"])
    elif out_dir is None and best["epoch"] >= 0:
        mfm.load_state_dict(best_state)
    mfm.eval()
    return TrainResult(mfm, config, stats, history, best, out_dir)
