"""Stochastic variational inference for the MFM: minibatch SVI with validation, model selection, early stopping,
a progress bar, a JSONL log of every epoch, and checkpoints that ``evaluate``, ``impute`` and ``--resume`` load.

Resuming from ``last.pt`` restores weights, optimizer state, random-number generators and the position inside the
epoch, so that a resumed run takes the same steps as an uninterrupted one (bit for bit on CPU). SIGINT and SIGTERM
stop at the next step boundary after writing ``last.pt``; a non-finite loss or gradient never reaches the
parameters (``train.on_divergence``, :mod:`pyro_mfm.infer.faults`).
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from contextlib import closing, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyro
import torch
from tqdm import tqdm

from ..config import Config
from ..data.dataset import Batch, MultimodalData, held_out_groups, sample_groups
from ..data.stats import FeatureStats, feature_statistics
from ..ensemble import Ensemble, expert_form, member_expert, member_seed
from ..guide import missing_not_at_random
from ..model import MFM
from ..outputs import write_json
from . import distributed
from .calibrate import calibrate, calibrate_ensemble, calibration_mode
from .checkpoint import folder_lock, prepare_folder, update_weights
from .device import compute, resolve_device
from .faults import DivergenceError, StopRequested, is_finite
from .loop import drop_modalities, validation_score
from .processes import ProcessEnded, run_in_processes, unguarded_main_script
from .progress import bars_enabled
from .refit import refit_subsets
from .resume import RESUME_FREE, config_changes  # noqa: F401  (re-exported)
from .run import Run, prepare
from .tensorboard import TrainingLog


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
    held_out: dict = field(default_factory=dict)
    """Where the data had no validation split: ``{"samples": n, "groups": g, "fraction": f}``, the validation split
    held out of the training split (``data.valid_fraction``; ``g`` whole groups, 0 where single samples were
    drawn); empty otherwise."""
    averaged: dict = field(default_factory=dict)
    """The mean of the weights over the patience window (``train.average_weights``): ``{"epochs": n, "from_epoch":
    e, "score": s, "best_score": b, "median_score": m, "kept": k}``, the n epochs from the best, e (1-based), on,
    the mean's validation score s, the best epoch's b and the window's median m, and whether the mean was kept (the
    returned model and ``best.pt``); empty where there was nothing to average (an interrupted run, no validation
    split, the best epoch the last)."""
    refit_held_out: dict | None = None
    """With ``model.linear_refit``: the refit's held-out means of z_y of the validation split's samples, ``{code:
    (n, k)}`` (:func:`~pyro_mfm.infer.refit.refit_subsets`), with which the validation split calibrates the refitted
    posteriors; ``None`` otherwise."""
    members: list = field(default_factory=list)
    """An ensemble's (``train.ensemble`` > 1) members' own results, in order; ``mfm`` is then their
    :class:`~pyro_mfm.ensemble.Ensemble`, and the other fields are the first member's. Empty for a single MFM."""


def fit(
    config: Config,
    data: MultimodalData,
    out_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    allow_config_change: bool = False,
    on_epoch=None,
    *,
    model: MFM | None = None,
    objective=None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler=None,
) -> TrainResult:
    """Train an MFM on ``data[config.data.train_split]``, selecting on ``config.data.valid_split``; where the data
    have no validation split, on ``config.data.valid_fraction`` of the training split held out as one
    (:meth:`~pyro_mfm.data.MultimodalData.hold_out`, by whole groups where the data name them).

    With ``out_dir``, writes ``last.pt``/``best.pt``/``epoch-XXXX.pt``/``log.jsonl``/``config.json``, holding an
    exclusive lock on the folder (a second training into it fails at once); a non-empty folder is refused unless
    ``resume`` or ``overwrite`` (which deletes the old run's files first). With ``resume``, continues from
    ``out_dir/last.pt`` (or the newest readable epoch checkpoint), at the very step where the run stopped; a
    configuration that differs from the run's in a field outside :data:`~pyro_mfm.infer.resume.RESUME_FREE` is
    refused unless ``allow_config_change`` (the change is then recorded in ``log.jsonl``). SIGINT/SIGTERM stop
    training at the next step boundary after a checkpoint. Under ``torchrun``, trains data-parallel (see
    :mod:`pyro_mfm.infer.distributed`). Returns the best model (by the validation metric), in eval mode.
    ``on_epoch(record)``, if given, is called with each epoch's ``log.jsonl`` record (on rank 0), e.g. to report the
    validation metric to a hyperparameter search that may stop the run by raising.

    ``model``, ``objective``, ``optimizer`` and ``scheduler`` replace what the configuration builds: an :class:`MFM`
    (or a subclass) for ``data.schema``, ``config.model`` and the training split's statistics
    (:func:`~pyro_mfm.data.stats.feature_statistics`, which the checkpoints store so that
    :func:`~pyro_mfm.infer.checkpoint.load_model` rebuilds it), moved to the training device; an objective called as
    ``objective(batch, beta=kl_factor)`` (default :class:`Objective` of the model); an optimizer of the model's
    parameters (default Adam, AdamW with ``train.weight_decay``); a learning-rate scheduler of that optimizer,
    stepped after every epoch (``ReduceLROnPlateau`` with the epoch's score) and stored in the checkpoints. An
    objective or optimizer needs the ``model`` it belongs to, a scheduler its ``optimizer``.
    """
    config.check("configuration")  # a configuration built or changed in Python gets the checks a file gets
    if config.train.ensemble > 1 and any(v is not None for v in (model, objective, optimizer, scheduler)):
        raise ValueError(
            f"fit: model, objective, optimizer and scheduler build one MFM, and train.ensemble = "
            f"{config.train.ensemble}; expected train.ensemble = 1 with them"
        )
    if model is None and (objective is not None or optimizer is not None):
        raise ValueError("fit: an objective or optimizer needs the model it belongs to (model=...)")
    if scheduler is not None and optimizer is None:
        raise ValueError("fit: a scheduler needs the optimizer it schedules (optimizer=...)")
    built = {"model": model, "objective": objective, "optimizer": optimizer, "scheduler": scheduler}
    with compute(config.train):
        group, device = distributed.setup(resolve_device(config.train.device))
        try:
            # what the model takes each missing modality's absence for (a resumed run follows its checkpoint's)
            if group.main and config.train.progress and model is None and not resume:
                for line in missingness_lines(config, data):
                    tqdm.write(line)
            if config.train.ensemble > 1:
                args = (resume, overwrite, group, device, allow_config_change, on_epoch)
                return _fit_ensemble(config, data, out_dir, *args)
            return _fit_in_folder(
                config, data, out_dir, resume, overwrite, group, device, allow_config_change, on_epoch, built
            )
        finally:
            distributed.shutdown(group)


def _fit_in_folder(config, data, out_dir, resume, overwrite, group, device, allow_config_change, on_epoch, built):
    """:func:`_fit` into ``out_dir`` (if any) while holding its lock, after refusing or clearing a non-empty one."""
    lock = folder_lock(out_dir) if out_dir is not None and group.main else nullcontext()
    with lock:
        if out_dir is not None and group.main:
            prepare_folder(out_dir, resume, overwrite)
        return _fit(config, data, out_dir, resume, group, device, allow_config_change, on_epoch, built)


ENSEMBLE_FILES = ("member-*", "ensemble.json", "calibration.json", ".*.tmp")
"""What the folder of an ensemble's training holds (``overwrite`` deletes only these)."""


def _fit_ensemble(config, data, out_dir, resume, overwrite, group, device, allow_config_change, on_epoch):
    """Train ``train.ensemble`` members, member k with :func:`~pyro_mfm.ensemble.member_seed` and into
    ``out_dir/member-k/`` (a run folder of its own: checkpoints, log, calibration), after writing
    ``out_dir/ensemble.json``: ``train.ensemble_processes`` at a time, each in a process of its own
    (:func:`_member_processes`), or one after the other in this one. With ``resume``, members that reached a
    checkpoint continue (finished ones return at once) and the others start. A signal stops the members in training
    and keeps the others from starting; the ensemble of those that trained is returned, interrupted."""
    tc = config.train
    seeds = [member_seed(tc.seed, k) for k in range(tc.ensemble)]
    folders = [f"member-{k}" for k in range(tc.ensemble)]
    out = None if out_dir is None else Path(out_dir)
    lock = folder_lock(out) if out is not None and group.main else nullcontext()
    results: list[TrainResult] = []
    stopped = ""
    with lock:
        if out is not None and group.main:
            prepare_folder(out, resume, overwrite, ENSEMBLE_FILES)
        # one validation split for every member (held out with the ensemble's seed where the data have none), on
        # which the ensemble's mixture is calibrated as a whole
        data, held_out = _hold_out(config, data, group)
        if out is not None and group.main:
            out.mkdir(parents=True, exist_ok=True)
            record = {"members": tc.ensemble, "seed": tc.seed, "seeds": seeds, "folders": folders}
            write_json(out / "ensemble.json", record)
        members = [config.override([f"train.seed={seed}", "train.ensemble=1"]) for seed in seeds]
        if config.model.expert == "both":  # the members take the experts' forms in turn
            members = [c.override([f"model.expert={member_expert(config.model, k)}"]) for k, c in enumerate(members)]
        where = [None if out is None else out / name for name in folders]
        # a member that never reached a checkpoint starts again
        started = [resume and folder is not None and any(folder.glob("*.pt")) for folder in where]
        fresh = [resume and not s for s in started]
        processes, blob = _member_processes(config, data, device, group, on_epoch)
        if processes > 1:
            if tc.progress:
                tqdm.write(
                    f"training the {tc.ensemble} ensemble members {processes} at a time, each in a process of its "
                    f"own (train.ensemble_processes)"
                )
            threads = tc.num_threads or max(1, torch.get_num_threads() // processes)
            calls = [
                (folders[k], (blob, members[k], where[k], started[k], fresh[k], device, allow_config_change, threads))
                for k in range(tc.ensemble)
            ]
            try:
                results, stopped = run_in_processes(_train_member, calls, processes)
            except ProcessEnded as e:
                folder = out if out is not None else "ensemble"
                if not e.ended:  # e.g. a process killed as it started, or top-level work that spawn's start-up ran
                    raise ProcessEnded(
                        f"{folder}: a member process ended before its training began (its error, if any, is printed "
                        'above; a script that trains members in processes needs `if __name__ == "__main__":` around '
                        "what it runs, as multiprocessing's spawn requires)",
                        e.ended,
                    ) from None
                raise ProcessEnded(
                    f"{folder}: the process of {', '.join(e.ended)} ended in the middle of training (killed by a "
                    "signal, e.g. by the out-of-memory killer); the other members stopped after a checkpoint"
                    + (" (continue with --resume)" if out is not None else ""),
                    e.ended,
                ) from None
            results = [r for r in results if r is not None]
        else:
            for k in range(tc.ensemble):
                if tc.progress and group.main:
                    tqdm.write(f"ensemble member {k + 1} of {tc.ensemble} (train.seed = {seeds[k]})")
                args = (started[k], fresh[k], group, device, allow_config_change, on_epoch, _built_by_config())
                result = _fit_in_folder(members[k], data, where[k], *args)
                results.append(result)
                if result.interrupted:
                    break
    if not results:  # a signal before any member began
        raise KeyboardInterrupt("stopped before any ensemble member began training")
    # members that a stop kept from starting leave the ensemble interrupted too
    interrupted = next((r.interrupted for r in results if r.interrupted), stopped if len(results) < tc.ensemble else "")
    ensemble = Ensemble([r.mfm for r in results])
    calibration, valid = {}, config.data.valid_split
    if not interrupted and tc.calibrate != "none" and valid in data and len(data[valid]) and group.main:
        calibration = calibrate_ensemble(
            ensemble,
            data[valid],
            seed=tc.seed,
            batch_size=config.evaluate.batch_size,
            held_out=[r.refit_held_out for r in results],
        )
        if out is not None and calibration:  # the members' best.pt hold their share of it (what loading reads)
            for result in results:
                update_weights(result.out_dir / "best.pt", result.mfm)
            write_json(out / "calibration.json", calibration)
    return replace(
        results[0],
        mfm=ensemble,
        config=config,
        out_dir=out,
        interrupted=interrupted,
        skipped=[s for r in results for s in r.skipped],
        members=results,
        held_out=held_out,
        calibration=calibration or results[0].calibration,
    )


def _member_processes(config: Config, data: MultimodalData, device, group, on_epoch) -> tuple[int, bytes | None]:
    """How many processes train an ensemble's members at once (``train.ensemble_processes``; 1: in this one),
    and the data pickled for them."""
    tc = config.train
    if tc.ensemble_processes:
        processes = tc.ensemble_processes
    elif device.type == "cpu":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        processes = cores // max(1, tc.num_threads)
    else:
        processes = 1
    processes = min(processes, tc.ensemble)
    if processes <= 1 or group.enabled or on_epoch is not None:
        return 1, None
    script = unguarded_main_script()
    if script is not None:
        warnings.warn(
            f'{script}: fit was called from the script\'s top level outside `if __name__ == "__main__":`, which a '
            "member process would run again as it starts (multiprocessing's spawn); the members train one after the "
            "other in this process instead (train.ensemble_processes); put the script's work under that guard to "
            "train them at once",
            RuntimeWarning,
            stacklevel=2,
        )
        return 1, None
    try:
        return processes, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except (TypeError, AttributeError, pickle.PicklingError):  # e.g. an open HDF5 file's datasets (read lazily)
        return 1, None


def _built_by_config() -> dict:
    """What :func:`fit` is given to use instead of building it: nothing (an ensemble's member builds all of it)."""
    return {"model": None, "objective": None, "optimizer": None, "scheduler": None}


def _train_member(data: bytes, config: Config, out_dir, resume, overwrite, device, allow_config_change, threads):
    """One ensemble member trained in a process of its own (:func:`~pyro_mfm.infer.processes.run_in_processes`)."""
    with compute(config.train, threads):
        args = (resume, overwrite, distributed.Dist(), device, allow_config_change, None, _built_by_config())
        return _fit_in_folder(config, pickle.loads(data), out_dir, *args)


def _step(loss_fn, batch: Batch, global_size: int, beta: float, params, clip_norm: float, group, device):
    """Forward and backward on one (shard of a) batch: ``(loss, gradient norm, error)``. A batch with non-finite
    inputs on any rank is not run (``nan`` on every rank), so a NaN in the data never reaches PyTorch's kernels
    (some raise on it, e.g. a Cholesky factorisation); an error raised by the objective itself is returned."""
    nan = torch.tensor(float("nan"))
    inputs_ok = all(torch.isfinite(x).all() for x in batch.x.values()) and (
        batch.y is None or not batch.y.is_floating_point() or bool(torch.isfinite(batch.y).all())
    )
    if distributed.all_sum([not inputs_ok], group, device)[0]:
        return nan, nan, None
    try:
        loss = loss_fn(batch, global_size, beta)
        (loss * loss_fn.weight(len(batch), global_size)).backward()
    except (RuntimeError, ValueError) as e:  # raised by torch or Pyro on non-finite values
        if group.enabled:  # the other ranks wait in the gradient all-reduce: nothing to recover
            raise
        return nan, nan, e
    if clip_norm:
        norm = torch.nn.utils.clip_grad_norm_(params, clip_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
    bad = distributed.all_sum([not (is_finite(loss) and is_finite(norm))], group, device)[0]
    return (nan, nan, None) if bad and is_finite(loss) and is_finite(norm) else (loss, norm, None)


def _fit(
    config: Config,
    data: MultimodalData,
    out_dir,
    resume: bool,
    group,
    device,
    allow_config_change: bool,
    on_epoch,
    built: dict,
) -> TrainResult:
    tc = config.train
    data, held_out = _hold_out(config, data, group)
    run, resumed = prepare(config, data, out_dir, resume, group, device, allow_config_change, built)
    ckpt = run.ckpt
    result = TrainResult(run.mfm, config, run.stats, out_dir=ckpt.out_dir, resumed=resumed, held_out=held_out)
    log_split = data[config.data.valid_split] if run.has_valid else run.train  # its first batch shows the loss terms
    log_batch = (
        log_split.batch(np.arange(min(len(log_split), config.evaluate.batch_size)), device) if ckpt.writer else None
    )
    log = TrainingLog(ckpt.out_dir if ckpt.writer else None, start_epoch=run.progress.epoch)  # TensorBoard events
    with closing(log), StopRequested() as stop:
        while run.progress.epoch < tc.epochs and not run.selection.should_stop:  # a resumed finished run: none
            if _run_epoch(run, stop):  # stopped inside the epoch, after writing last.pt
                result.interrupted = stop.name or "signal on another rank"
                break
            _end_epoch(run, log, log_batch, on_epoch)
            if _stop_requested(run, stop):
                result.interrupted = stop.name or "signal on another rank"
                break
            if run.selection.should_stop:
                break
    # an interrupted run returns the model as it stands (matching last.pt); a finished one, its best epoch, or the
    # mean of the weights from there on where that scores at least as well
    if not result.interrupted:
        _load_best(run)
        result.averaged = _keep_average(run)
    result.history, result.best, result.skipped = run.selection.history, run.selection.best, run.guard.reports
    run.mfm.eval()
    if not result.interrupted and getattr(run.mfm.guide, "subset_posteriors", None) is not None:
        # model.linear_refit, on the training and the validation split's features (the latter out of sample)
        valid = data[config.data.valid_split] if run.has_valid else None
        _, held_out = refit_subsets(run.mfm, [run.train, valid], config.evaluate.batch_size, return_held_out=True)
        result.refit_held_out = held_out[1]
        ckpt.save_weights()
    if not result.interrupted and tc.calibrate != "none" and run.has_valid and group.main:
        mode = calibration_mode(tc.calibrate, run.mfm)
        result.calibration = calibrate(
            run.mfm,
            data[config.data.valid_split],
            seed=tc.seed,
            batch_size=config.evaluate.batch_size,
            experts=mode == "all",
            redundancies=mode in ("all", "pairs"),
            held_out=result.refit_held_out,
        )
        ckpt.save_calibration(result.calibration)
    return result


def _hold_out(config: Config, data: MultimodalData, group) -> tuple[MultimodalData, dict]:
    """``data`` with the validation split held out of the training split where it has none (``data.valid_fraction``,
    seeded by ``train.seed``), and the record of :attr:`TrainResult.held_out`."""
    tc, dc, given = config.train, config.data, data
    data = with_validation(config, data)
    if data is given:
        return data, {}
    valid, n = data[dc.valid_split], len(given[dc.train_split])
    grouped = held_out_groups(given[dc.train_split]) is not None  # else single samples were drawn
    held_out = {
        "samples": len(valid),
        "groups": len(np.unique(sample_groups(valid))) if grouped else 0,
        "fraction": dc.valid_fraction,
    }
    if group.main and tc.progress:
        tqdm.write(
            f"{dc.source}: no validation split {dc.valid_split!r}; holding out {len(valid)} of the {n} "
            f"training samples ({held_out_what(held_out)}) for model selection and calibration"
        )
    return data, held_out


def with_validation(config: Config, data: MultimodalData) -> MultimodalData:
    """``data`` with the validation split that training selects, calibrates and weighs on: the data's own, or
    ``data.valid_fraction`` of the training split held out with ``train.seed`` (the same samples on every call)."""
    dc = config.data
    return data.hold_out(dc.valid_fraction, dc.train_split, dc.valid_split, seed=config.train.seed)


def missingness_record(stats: FeatureStats, observed, names) -> list[dict]:
    """What a model takes a missing modality's absence for (``model.missingness``): per modality that the training
    split of ``stats`` lacks somewhere, ``{"modality", "missing"`` (the fraction of training samples without it),
    ``"absence_p"`` (the p-value of its absence's independence from the label), ``"observed"`` (whether it is in
    ``observed``, the modalities whose absence the model observes)``}``."""
    return [
        {
            "modality": m,
            "missing": stats.missing[m],
            "absence_p": stats.absence_p.get(m, 1.0),
            "observed": m in observed,
        }
        for m in names
        if stats.missing.get(m, 0.0) > 0
    ]


def missingness_lines(config: Config, data: MultimodalData, record: list | None = None) -> list[str]:
    """``record`` (:func:`missingness_record`) as one line per modality; without it, that of the MFM that ``config``
    would train on ``data``, from the training split as training holds the validation split out of it: none where
    the split lacks nothing (which costs no pass over the data) or the model observes no absence (the MFN,
    ``"ignorable"``)."""
    if record is None:
        record = []
        names = data.schema.names
        train = with_validation(config, data)[config.data.train_split] if config.model.observes_absences else None
        if train is not None and not all(np.asarray(train.present[m]).all() for m in names):
            stats = feature_statistics(train)
            record = missingness_record(stats, missing_not_at_random(config.model, stats, names), names)
    return [
        f"{config.data.source}: modality {r['modality']!r} is missing in {r['missing']:.0%} of the training samples "
        f"(independence of its absence and the label: p = {r['absence_p']:.2g}); its absence is "
        f"{'an observation' if r['observed'] else 'missing at random'} "
        f"(model.missingness = {config.model.missingness!r})"
        for r in record
    ]


def held_out_what(held_out: dict) -> str:
    """How :attr:`TrainResult.held_out`'s samples were drawn, for the console and the report."""
    drawn = (
        f"{held_out['groups']} whole groups"
        if held_out["groups"]
        else "single samples: the data name no groups, such as each sample's speaker or video, to hold out whole"
    )
    return f"{drawn}; data.valid_fraction = {held_out['fraction']}"


def averaged_what(averaged: dict) -> str:
    """One sentence on :attr:`TrainResult.averaged`, for the console and the report (empty where nothing was
    averaged)."""
    if not averaged:
        return ""
    last = averaged["from_epoch"] + averaged["epochs"] - 1
    scores = (
        f"validation score {averaged['score']:.4g} against the best epoch's {averaged['best_score']:.4g} and the "
        f"median epoch's {averaged['median_score']:.4g}"
    )
    if averaged["kept"]:
        return f"The model is the mean of the weights of epochs {averaged['from_epoch']}-{last} ({scores})."
    return f"The mean of the weights of epochs {averaged['from_epoch']}-{last} was not kept ({scores})."


def ensemble_what(result: TrainResult) -> str:
    """One sentence on an ensemble's members, for the console and the report (empty for a single MFM)."""
    if not result.members:
        return ""
    epochs = ", ".join(str(r.best.get("epoch", -1) + 1) for r in result.members)
    text = (
        f"An ensemble of {len(result.members)} MFMs (train.ensemble), each from a seed of its own; best epochs "
        f"{epochs}; the best epoch above is the first member's."
    )
    forms = [expert_form(r.mfm.config) for r in result.members]
    if len(set(forms)) > 1 and isinstance(result.mfm, Ensemble):
        names = result.mfm.names
        observed = torch.cat([torch.ones(1, len(names)), torch.eye(len(names))])  # every modality, then each alone
        linear = result.mfm.form_weight(observed, "linear").tolist()
        where = [f"{linear[0]:.2f} with every modality observed"] if len(names) > 1 else []
        where += [f"{linear[1 + i]:.2f} from {m} alone" for i, m in enumerate(names)]
        text += (
            f" The members' experts of z_y take the MLP and the linear form in turn (model.expert = 'both'); the "
            f"label's predictive weighs the linear form's members {', '.join(where)} (fitted on the validation "
            "split)."
        )
    return text


def _stop_requested(run: Run, stop: StopRequested) -> bool:
    """Whether SIGINT or SIGTERM reached any rank."""
    return bool(distributed.all_sum([stop.signum is not None], run.group, run.device)[0])


def _run_epoch(run: Run, stop: StopRequested) -> bool:
    """Run the rest of the current epoch; whether a signal stopped it at a step boundary (after writing last.pt)."""
    tc, p = run.config.train, run.progress
    n, size = len(run.train), tc.batch_size
    steps = math.ceil(n / size)
    run.mfm.train()
    order = np.random.default_rng(tc.seed * 100003 + p.epoch).permutation(n)  # depends on (seed, epoch) only
    run.guard.begin_epoch()
    p.in_epoch = True
    bar = tqdm(
        range(p.step, steps),
        total=steps,
        initial=p.step,
        desc=f"epoch {p.epoch + 1}/{tc.epochs}",
        disable=not (bars_enabled(tc.progress) and run.group.main),
        leave=False,
    )
    for step in bar:
        idx = order[step * size : (step + 1) * size]
        # (a last global batch smaller than the number of ranks is left out)
        if len(idx) >= run.group.world and _train_step(run, step, idx, steps) and p.count:
            bar.set_postfix(loss=f"{p.total / p.count:.3f}")
        p.step = step + 1
        if _stop_requested(run, stop) and p.step < steps:
            run.ckpt.save_position()
            return True
    return False


def _train_step(run: Run, step: int, idx: np.ndarray, steps: int) -> bool:
    """One optimizer step on the global batch ``idx`` (this rank's shard of it); whether it was applied (not
    dropped by the divergence guard)."""
    tc, group, p = run.config.train, run.group, run.progress
    rows = distributed.shard(np.arange(len(idx)), group)
    batch = run.train.batch(idx[rows], run.device)
    beta = run.warmup.at(p.epoch, step, steps)
    shard = (torch.as_tensor(rows), len(idx)) if group.enabled else ()
    batch = drop_modalities(batch, tc.modality_dropout, run.rng.dropper, *shard)
    run.optimizer.zero_grad()
    with pyro.validation_enabled(tc.validate == "always" or not run.validated):
        loss, norm, error = _step(run.loss_fn, batch, len(idx), beta, run.params, tc.clip_norm, group, run.device)
    run.validated = True
    applied = run.guard.gradients_ok(p.epoch, step, loss, norm, error, batch)
    if applied:
        run.optimizer.step()
        applied = run.guard.parameters_ok(p.epoch, step)
    if not applied:
        p.skipped += 1
        return False
    p.add(loss.item(), len(batch))
    return True


def _end_epoch(run: Run, log: TrainingLog, log_batch, on_epoch) -> None:
    """Score the finished epoch, record it, step the scheduler, advance, and write the checkpoints."""
    tc, p, selection, group = run.config.train, run.progress, run.selection, run.group
    epoch = p.epoch
    total, count = p.totals()
    if count == 0:
        raise DivergenceError(
            f"every step of epoch {epoch + 1} had a non-finite loss or gradient and was "
            f"skipped; expected a finite objective (check the data and train.lr)"
        )
    record = {"epoch": epoch, "train_loss": total / count}
    if p.skipped:
        record["skipped_steps"] = p.skipped
    if run.has_valid:
        scores = (
            validation_score(run.mfm, run.data, run.config, selection.metric, run.objective, run.warmup.beta)
            if group.main
            else None
        )
        record.update({f"valid_{k}": v for k, v in distributed.broadcast(scores, group).items()})
    scored = run.warmup.complete(epoch)
    improved = selection.update(record, scored=scored)
    run.average.update(improved, scored)
    if group.main:
        log.epoch(record, run.mfm, run.optimizer, log_batch)
        if on_epoch is not None:
            on_epoch(record)
    p.next_epoch()
    if run.scheduler is not None:
        plateau = isinstance(run.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        if not plateau:
            run.scheduler.step()
        elif scored:  # the score of an epoch within the KL warm-up is not the final objective's
            run.scheduler.step(selection.score(record))
    if tc.progress and group.main:
        tqdm.write(
            f"epoch {epoch + 1}: loss {record['train_loss']:.4f}"
            + (f", {selection.key.replace('_', ' ', 1)} {selection.score(record):.4f}" if run.has_valid else "")
            + (" *" if improved else "")
        )
    run.ckpt.end_epoch(epoch, improved, selection.history)


def _keep_average(run: Run) -> dict:
    """With the best epoch's weights loaded: score the mean of the weights over the patience window
    (:class:`~pyro_mfm.infer.loop.WeightAverage`) on the validation split, and keep it (in the model and in
    ``best.pt``) where it scores at least as well as the median epoch of that window; the record of
    :attr:`TrainResult.averaged`."""
    average, selection, group = run.average, run.selection, run.group
    if average.count < 2:  # nothing trained past the best, or no averaging
        return {}
    best = [p.detach().clone() for p in run.mfm.parameters()]
    with torch.no_grad():
        for p, a in zip(run.mfm.parameters(), average.parameters()):
            p.copy_(a)
    scores = (
        validation_score(run.mfm, run.data, run.config, selection.metric, run.objective, run.warmup.beta)
        if group.main
        else None
    )
    score = float(distributed.broadcast(scores, group)[selection.key.removeprefix("valid_")])
    best_score = selection.best[selection.name]
    # the best epoch's score is the best of the window's noisy scores, and so flatters it: the mean of the weights
    # is kept where it scores at least as well as the window's typical epoch (its median score)
    window = [selection.score(r) for r in selection.history if r["epoch"] >= selection.best["epoch"]]
    median = float(np.median(window))
    kept = bool(score >= median if selection.higher else score <= median)
    if kept:
        run.ckpt.replace_best()
    else:
        with torch.no_grad():
            for p, b in zip(run.mfm.parameters(), best):
                p.copy_(b)
    record = {
        "epochs": average.count,
        "from_epoch": selection.best["epoch"] + 1,
        "score": score,
        "best_score": best_score,
        "median_score": median,
        "kept": kept,
    }
    run.ckpt.log_event({"event": "average_weights", **record}, selection.history)
    if group.main and run.config.train.progress:
        tqdm.write(averaged_what(record))
    return record


def _load_best(run: Run) -> None:
    """Load the best epoch's weights; when no epoch was scored (all within the KL warm-up), the last is the best."""
    if run.selection.settle():
        best_file = run.ckpt.best_file
        warnings.warn(
            f"training ended after {len(run.selection.history)} epoch(s), within the KL warm-up "
            f"(train.kl_warmup = {run.config.train.kl_warmup}): no epoch was scored on the final "
            "objective; the best model is the last epoch" + (f" ({best_file})" if best_file else ""),
            RuntimeWarning,
            stacklevel=4,
        )
        run.ckpt.keep_best()
    run.ckpt.load_best(run.group)
