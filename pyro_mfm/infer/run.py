"""One training run of :func:`pyro_mfm.infer.train.fit`: its model, objective, optimizer and the parts of the loop
(:mod:`pyro_mfm.infer.loop`), built from the configuration and, when resuming, restored from a checkpoint."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pyro
import torch
from tqdm import tqdm

from ..config import Config
from ..data.dataset import MultimodalData
from ..data.schema import DataError
from ..data.stats import FeatureStats, feature_statistics
from ..metric_directions import HIGHER_IS_BETTER
from ..model import MFM
from . import distributed
from .loop import (
    Checkpointer,
    DivergenceGuard,
    KLWarmup,
    ModelSelection,
    Progress,
    RandomState,
    WeightAverage,
    select_metric,
    selection_key,
)
from .objective import Objective
from .resume import RESUME_FREE, resume_payload

# lr_schedule = "plateau" halves the learning rate after more than this many scored epochs without a better score
PLATEAU_EPOCHS = 5


class Run:
    """One training run: the model, its objective and optimizer, and the parts of the loop
    (:mod:`pyro_mfm.infer.loop`). Its ``state_dict`` is the ``state`` of a checkpoint."""

    def __init__(
        self,
        config: Config,
        data: MultimodalData,
        out_dir,
        group,
        device,
        stats: FeatureStats,
        mfm: MFM,
        objective,
        optimizer,
        scheduler,
        loss_fn,
        metric: str,
        has_valid: bool,
    ):
        tc = config.train
        self.config, self.data, self.train = config, data, data[config.data.train_split]
        self.group, self.device, self.stats, self.has_valid = group, device, stats, has_valid
        self.mfm, self.objective, self.optimizer, self.scheduler, self.loss_fn = (
            mfm,
            objective,
            optimizer,
            scheduler,
            loss_fn,
        )
        self.params = list(mfm.parameters())
        self.validated = False  # Pyro's checks ran on a step (see train.validate)
        self.progress = Progress(group, device)
        self.selection = ModelSelection(metric, tc.patience, selection_key(metric, config))
        self.rng = RandomState(tc.seed, group)
        self.warmup = KLWarmup(tc.kl_warmup)
        self.average = WeightAverage(mfm, tc.average_weights and has_valid)
        self.ckpt = Checkpointer(out_dir, group, mfm, config, stats, self.state_dict, tc.keep_last)
        self.guard = DivergenceGuard(tc.on_divergence, mfm, optimizer, self.ckpt.save_position, self.ckpt.out_dir)

    def state_dict(self) -> dict:
        state = {"optimizer": self.optimizer.state_dict()}
        for part in (self.rng, self.progress, self.selection, self.average, self.ckpt):
            state.update(part.state_dict())
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(split_decay_state(state["optimizer"], self.optimizer, self.mfm))
        for part in (self.rng, self.progress, self.selection, self.average, self.ckpt):
            part.load_state_dict(state)
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])


def decay_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The optimizer's parameter groups for decoupled weight decay (AdamW): the networks' weight matrices (linear and
    recurrent, every parameter of two or more dimensions) decay; biases and per-feature parameters (the learned
    scales of x_m, which a decay would pull towards a fixed value, not towards a simpler network) do not."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def default_optimizer(mfm: torch.nn.Module, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam, or AdamW with ``weight_decay`` on the weight matrices (:func:`decay_groups`), in torch's fused form on
    CPU and CUDA: one kernel over every parameter instead of a few small ones per parameter (the UCI model's 164
    tensors: 6.0 -> 1.5 ms a step on one CPU thread)."""
    fused = {"fused": True} if all(p.device.type in ("cpu", "cuda") for p in mfm.parameters()) else {}
    if weight_decay:
        return torch.optim.AdamW(decay_groups(mfm, weight_decay), lr=lr, **fused)
    return torch.optim.Adam(mfm.parameters(), lr=lr, **fused)


def split_decay_state(state: dict, optimizer: torch.optim.Optimizer, module: torch.nn.Module) -> dict:
    """An AdamW state written when weight decay took one group of every parameter (module order), as the two groups
    of :func:`decay_groups` (each parameter's moments kept); any other state as it is."""
    if len(state["param_groups"]) != 1 or len(optimizer.param_groups) != 2:
        return state
    params = [p for p in module.parameters() if p.requires_grad]
    if len(state["param_groups"][0]["params"]) != len(params):
        return state
    old = state["param_groups"][0]["params"]
    order = [i for i, p in enumerate(params) if p.dim() >= 2] + [i for i, p in enumerate(params) if p.dim() < 2]
    groups, start = [], 0
    for group in optimizer.param_groups:
        n = len(group["params"])
        groups.append(
            {**state["param_groups"][0], "weight_decay": group["weight_decay"], "params": list(range(start, start + n))}
        )
        start += n
    moments = {new: state["state"][old[i]] for new, i in enumerate(order) if old[i] in state["state"]}
    return {"state": moments, "param_groups": groups}


def prepare(
    config: Config, data: MultimodalData, out_dir, resume: bool, group, device, allow_config_change: bool, built: dict
) -> tuple[Run, dict]:
    """The run, built from the configuration (or ``built``) and, with ``resume``, restored from its checkpoint;
    and where it resumed (empty for a fresh run)."""
    tc = config.train
    train = data[config.data.train_split]
    if len(train) == 0:
        raise DataError(
            f"{config.data.source}: split {config.data.train_split!r} has no samples; expected at least "
            "one training sample"
        )
    has_valid = config.data.valid_split in data and len(data[config.data.valid_split]) > 0
    payload = None
    if resume:  # rank 0 reads the run folder; the other ranks need not see it
        payload = distributed.broadcast(
            resume_payload(out_dir, data, config, allow_config_change) if group.main else None, group
        )
    if payload is not None:
        stats = FeatureStats.from_dict(payload["stats"])
    else:
        stats = feature_statistics(train)
    pyro.set_rng_seed(tc.seed)
    mfm = (built["model"] if built["model"] is not None else MFM(data.schema, config.model, stats)).to(device)
    optimizer = built["optimizer"]
    if optimizer is None:
        optimizer = default_optimizer(mfm, tc.lr, tc.weight_decay)
    scheduler = built["scheduler"]
    if scheduler is None and built["optimizer"] is None and tc.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    objective = built["objective"] if built["objective"] is not None else Objective(mfm)
    loss_fn = distributed.DataParallelLoss(mfm, objective, group)
    if group.rank:
        torch.manual_seed(tc.seed * 1000003 + group.rank)  # each rank draws its own noise
    metric = select_metric(config, mfm) if has_valid else "loss"
    if metric != "loss" and not np.asarray(data[config.data.valid_split].label_present).any():
        warnings.warn(
            f"{config.data.source}: split {config.data.valid_split!r} has no labelled sample; selecting "
            f"on the validation loss instead of {metric}",
            RuntimeWarning,
            stacklevel=4,
        )
        metric = "loss"
    if scheduler is None and built["optimizer"] is None and tc.lr_schedule == "plateau":
        # halve the rate after more than PLATEAU_EPOCHS scored epochs without a better selection score (train.py
        # steps it on the scored epochs)
        higher = HIGHER_IS_BETTER[metric]
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if higher else "min", factor=0.5, patience=PLATEAU_EPOCHS
        )
    run = Run(
        config,
        data,
        out_dir,
        group,
        device,
        stats,
        mfm,
        objective,
        optimizer,
        scheduler,
        loss_fn,
        metric,
        has_valid,
    )
    resumed = restore(run, payload) if payload is not None else {}
    run.ckpt.start(run.selection.history)
    return run, resumed


def restore(run: Run, payload: dict) -> dict:
    """Load a checkpoint's weights and training state into ``run``; where it resumes (``TrainResult.resumed``)."""
    run.mfm.load_state_dict(payload["model"])
    run.load_state_dict(payload["state"])
    epoch, step, changed = run.progress.epoch, run.progress.step, payload["changed"]
    fixed = {k: v for k, v in changed.items() if k not in RESUME_FREE}
    if fixed:  # allowed by allow_config_change: the log says from where the run is another one
        run.ckpt.events.append(
            {"event": "resume", "from": payload["path"], "at_epoch": epoch, "at_step": step, "changed": fixed}
        )
    if run.group.main and run.config.train.progress:
        tqdm.write(
            f"resuming {payload['path']} at epoch {epoch + 1}, step {step}"
            + (f"; changed {changed}" if changed else ""),
            file=sys.stderr,
        )
    return {"from": payload["path"], "epoch": epoch, "step": step, "changed": changed}
