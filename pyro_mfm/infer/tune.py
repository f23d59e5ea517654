"""Hyperparameter search with Optuna: a search space in TOML, pruning on the validation metric of each epoch, and a
study in SQLite inside the search folder, so that a search resumes after an interruption and several processes can
share it.

The space file has one table per configuration field, named as the field is in ``--set``::

    [train.lr]                 # a float, drawn on a log scale
    low = 1e-4
    high = 1e-2
    log = true

    [model.hidden]             # an integer (low and high are integers), optionally with a step
    low = 16
    high = 128
    step = 16

    [model.fusion]             # one of a list
    choices = ["poe", "mfn"]

``<out>/study.db`` holds the study, ``<out>/trial-XXXX/`` each trial's training run (its TensorBoard events too),
``<out>/best.toml`` the base configuration with the best trial's values, ready for ``pyro-mfm train``, and
``<out>/best.json`` the best trial's number, value and parameters.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

from ..config import Config, ConfigError
from ..metric_directions import HIGHER_IS_BETTER, resolve_select_metric
from ..outputs import atomic_write, write_json

STUDY_FILE = "study.db"
STUDY_NAME = "pyro-mfm"


def load_space(path) -> dict[str, dict]:
    """``{"table.key": spec}`` from a space file; raises :class:`ConfigError` naming the file and key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"search space {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"search space {path}: not valid TOML ({e})") from None
    space = {}
    for table, fields in raw.items():
        if not isinstance(fields, dict) or not all(isinstance(v, dict) for v in fields.values()) or not fields:
            raise ConfigError(
                f"search space {path}: [{table}] must hold one table per field, e.g. [{table}.KEY] "
                "with low/high or choices"
            )
        for key, spec in fields.items():
            name = f"{table}.{key}"
            unknown = set(spec) - {"low", "high", "log", "step", "choices"}
            if unknown:
                raise ConfigError(
                    f"search space {path}: [{name}] has unknown keys {sorted(unknown)}; expected low, "
                    "high, log, step or choices"
                )
            if "choices" in spec:
                if set(spec) != {"choices"} or not isinstance(spec["choices"], list) or not spec["choices"]:
                    raise ConfigError(f"search space {path}: [{name}] choices must be a non-empty list, alone")
            elif not {"low", "high"} <= set(spec):
                raise ConfigError(f"search space {path}: [{name}] needs low and high (or choices)")
            elif (
                not all(isinstance(spec[k], (int, float)) and not isinstance(spec[k], bool) for k in ("low", "high"))
                or spec["low"] > spec["high"]
            ):
                raise ConfigError(
                    f"search space {path}: [{name}] low {spec['low']!r} and high {spec['high']!r}: "
                    "expected numbers with low <= high"
                )
            space[name] = spec
    if not space:
        raise ConfigError(f"search space {path}: no fields; expected tables such as [train.lr] with low and high")
    return space


def suggest(trial, space: dict) -> dict:
    """The trial's value of every field of ``space``."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int) and not isinstance(spec.get("step"), float):
            out[name] = trial.suggest_int(
                name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False)
            )
        else:
            out[name] = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=spec.get("log", False)
            )
    return out


def overrides(values: dict) -> list[str]:
    return [f"{k}={v!r}" for k, v in values.items()]


def selection_metric(config: Config, data) -> str:
    """The validation metric the search optimises: ``train.select_metric``, as training resolves ``auto``."""
    from ..likelihoods import DISCRETE_KINDS, resolve_label_kind

    label = data.schema.label
    kind = None if label is None else resolve_label_kind(label, config.model.label_likelihood)
    return resolve_select_metric(config.train.select_metric, None if kind is None else kind in DISCRETE_KINDS)


def tune(config: Config, space_path, out_dir, trials: int, seed: int = 0, prune_after: int = 5) -> dict:
    """Run the search until the study holds ``trials`` finished (complete or pruned) trials; returns the summary
    written to ``best.json``."""
    import optuna
    import tomli_w  # noqa: F401  (used by _write_best; imported here so that a missing one fails before any trial)

    from ..data.sources import load_data
    from .faults import DivergenceError
    from .train import fit

    space = load_space(space_path)
    for name in space:  # every field must exist in the configuration (checked before any training)
        table, _, key = name.partition(".")
        if not hasattr(getattr(config, table, None), key) or table == "path":
            raise ConfigError(
                f"search space {space_path}: [{name}] is not a configuration field (expected "
                "TABLE.KEY as in --set, e.g. train.lr)"
            )
        if name in ("train.select_metric", "train.select_over"):
            raise ConfigError(f"search space {space_path}: [{name}] cannot be searched (it is the search's metric)")
    if trials < 1:
        raise ConfigError(f"--trials {trials}: expected at least 1")
    out = Path(out_dir)
    db = out / STUDY_FILE
    if out.exists() and any(out.iterdir()) and not db.exists():
        raise ConfigError(
            f"search folder {out}: exists and holds no {STUDY_FILE}; expected a new folder or one "
            "of an earlier search to resume"
        )
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(config)
    metric = selection_metric(config, data)
    direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=f"sqlite:///{db.resolve()}",
        study_name=STUDY_NAME,
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_after, n_warmup_steps=config.train.kl_warmup),
    )
    if study.direction.name.lower() != direction:
        raise ConfigError(f"search folder {out}: its study {direction[:-1]}s another metric; expected a new folder")
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    objective = _trial_objective(fit, config, data, space, metric, out)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < trials:
        study.optimize(
            objective,
            n_trials=trials - done,
            catch=(DivergenceError,),
            callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)],
        )
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise ConfigError(f"search folder {out}: no trial completed (all pruned or failed); expected at least one")
    return _write_best(study, config, out, db, metric, direction)


def _trial_objective(fit, config: Config, data, space: dict, metric: str, out: Path):
    """The study's objective: train with the trial's values into ``out/trial-XXXX`` (reporting each epoch's
    validation ``metric`` so that the pruner may stop it) and return the best epoch's ``metric`` (the last epoch's when
    none was scored)."""
    import optuna

    from .loop import best_name, selection_key

    key = selection_key(metric, config)

    def objective(trial) -> float:
        values = suggest(trial, space)
        # a trial trains one MFM (unless the space searches train.ensemble): the search is over one member's
        # settings, and its pruning reads one run's epochs; best.toml keeps the base configuration's train.ensemble
        cfg = config.override(["train.ensemble=1"] + overrides(values) + ["train.progress=False"])
        trial.set_user_attr("folder", f"trial-{trial.number:04d}")

        def report(record: dict) -> None:
            value = record.get(key, record["train_loss"] if metric == "loss" else None)
            if value is None:
                return
            trial.report(float(value), int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned(f"epoch {record['epoch'] + 1}: valid {metric} {value:.4g}")

        result = fit(cfg, data, out / f"trial-{trial.number:04d}", on_epoch=report)
        if result.best.get("epoch", -1) >= 0:
            return float(result.best[best_name(key)])
        last = result.history[-1] if result.history else {}
        return float(last.get(key, last.get("train_loss", float("nan"))))

    return objective


def _write_best(study, config: Config, out: Path, db: Path, metric: str, direction: str) -> dict:
    """Write ``best.toml`` (``config`` with the best trial's values) and ``best.json`` (the summary, returned)."""
    import optuna
    import tomli_w

    from .loop import selection_key

    best = study.best_trial
    best_config = config.override(overrides(best.params))
    atomic_write(out / "best.toml", lambda f: f.write(tomli_w.dumps(best_config.to_dict()).encode()))
    counts = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in optuna.trial.TrialState}
    summary = {
        "metric": selection_key(metric, config),
        "direction": direction,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "folder": best.user_attrs.get("folder"),
        "trials": {k: v for k, v in counts.items() if v},
        "study": str(db),
        "study_name": STUDY_NAME,
    }
    write_json(out / "best.json", summary)
    return summary


def describe(summary: dict) -> str:
    return (
        f"best trial {summary['best_trial']} ({summary['folder']}): {summary['metric']} "
        f"{summary['best_value']:.4g} with {json.dumps(summary['best_params'])}; trials {summary['trials']}"
    )
