"""Options shared by the model commands."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..config import Config, ConfigError
from ..data.schema import DataError, schema_differences


def add_set_argument(p: argparse.ArgumentParser, help: str) -> None:
    """``--set TABLE.KEY=VALUE`` (repeatable), collected in ``args.overrides``."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE", help=help)


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model configuration file (TOML), e.g. models/uci_mfeat.toml")
    add_set_argument(p, "override one configuration field, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="data source overriding data.source (a native HDF5 file or embedded:NAME)")
    p.add_argument(
        "--nan-as-missing",
        action="store_true",
        help="mark samples with NaN features missing for that modality instead of failing (data.nan_as_missing)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def config_from_args(args) -> Config:
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source={args.data!r}")
    if args.nan_as_missing:
        overrides.append("data.nan_as_missing=True")
    if args.quiet:
        overrides.append("train.progress=False")
    return Config.load(args.config, overrides)


def add_run_folder_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in a non-empty OUT (deletes the files a run writes there first)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue with a configuration that changes the run's result (e.g. train.lr); "
        "the change is recorded in log.jsonl",
    )


def signal_status(name: str) -> int:
    """The exit status of a command stopped by the signal ``name`` (e.g. ``"SIGTERM"``): 128 + its number, else 1."""
    sig = getattr(signal, name, None) if name.startswith("SIG") else None
    return 128 + int(sig) if sig else 1


def diverged(error) -> int:
    """Report a :class:`~pyro_mfm.infer.faults.DivergenceError` on stderr; the exit status of a diverged training."""
    print(f"pyro-mfm: training diverged: {error}", file=sys.stderr)
    return 3


def parse_observed(text: str | None):
    return None if text in (None, "", "all") else [t.strip() for t in text.split(",") if t.strip()]


def add_checkpoint_arguments(
    p: argparse.ArgumentParser, what: str, default_split: str = "the configuration's test split"
) -> None:
    p.add_argument(
        "checkpoint", metavar="RUN", help="checkpoint file, training folder (best.pt is used) or `run` report folder"
    )
    p.add_argument("--data", help="data source (default: the one the model was trained on)")
    p.add_argument("--split", default=None, help=f"split to {what} (default: {default_split})")
    p.add_argument("--num-samples", type=int, default=None, help=f"posterior samples per {what} draw")
    p.add_argument(
        "--nan-as-missing",
        action="store_true",
        help="mark samples with NaN features missing for that modality instead of failing",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the posterior draws (default: evaluate.seed of the run's configuration)",
    )


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` is a training folder: of one MFM (``best.pt`` or ``last.pt``) or of an ensemble."""
    return any((folder / name).exists() for name in ("best.pt", "last.pt", "ensemble.json"))


def checkpoint_path(run: str) -> Path:
    """The checkpoint named by RUN: a file, a training folder (of one MFM or an ensemble), or the ``checkpoint/``
    folder of a report folder."""
    path = Path(run)
    if path.is_dir() and not holds_run(path) and (path / "checkpoint").is_dir():
        return path / "checkpoint"
    return path


def load_for_inference(args, only_split: bool = False):
    """The trained model, its configuration, the split that ``args`` names, and the checkpoint's payload. With
    ``only_split``, a file without the configuration's test split but with a single split gives that split."""
    from ..data.sources import load_data
    from ..infer.checkpoint import load_model

    mfm, config, payload = load_model(checkpoint_path(args.checkpoint))
    overrides = getattr(args, "overrides", [])
    for item in overrides:  # a trained model's architecture and training are fixed; how it is evaluated is not
        key = item.split("=", 1)[0].strip()
        if not (key.startswith(("data.", "evaluate.")) or key in ("train.num_threads", "train.matmul_precision")):
            raise ConfigError(
                f"--set {item}: only [data] and [evaluate] fields, train.num_threads and train.matmul_precision apply "
                "to a trained model; expected e.g. --set evaluate.num_samples=50"
            )
    if overrides:  # before the data are loaded: --set data.test_split=valid applies
        config = config.override(overrides)
    if args.num_samples is not None:
        config.evaluate.num_samples = args.num_samples
        config.evaluate.check("--num-samples")
    if args.seed is not None:
        config.evaluate.seed = args.seed
        config.evaluate.check("--seed")
    if args.data:
        config.data.source = args.data
    if args.nan_as_missing:
        config.data.nan_as_missing = True
    data = load_data(config)
    split = args.split or config.data.test_split
    if not args.split and only_split and split not in data and len(data.splits) == 1:
        split = next(iter(data.splits))
    if split not in data:
        raise DataError(f"{data.source}: no split {split!r}; the data set has {list(data)}")
    found = schema_differences(mfm.schema, data.schema)
    if found:
        raise DataError(
            f"{data.source}: not the schema the model {args.checkpoint} was trained on: " + "; ".join(found)
        )
    return mfm, config, data[split], payload
