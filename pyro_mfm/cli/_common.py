"""Options shared by the model commands."""

from __future__ import annotations

import argparse

from ..config import Config
from ..data.schema import DataError, schema_differences


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="model configuration file (TOML), e.g. models/uci_mfeat.toml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override one configuration field, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--data", help="data source overriding data.source (a native HDF5 file or embedded:NAME)")
    p.add_argument("--nan-as-missing", action="store_true",
                   help="mark samples with NaN features missing for that modality instead of failing "
                        "(data.nan_as_missing)")
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in a non-empty OUT (deletes the files a run writes there first)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue with a configuration that changes the run's result (e.g. train.lr); "
                        "the change is recorded in log.jsonl")


def parse_observed(text: str | None):
    return None if text in (None, "", "all") else [t.strip() for t in text.split(",") if t.strip()]


def add_checkpoint_arguments(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("checkpoint", help="checkpoint file or run folder (best.pt is used)")
    p.add_argument("--data", help="data source (default: the one the model was trained on)")
    p.add_argument("--split", default=None, help=f"split to {what} (default: the configuration's test split)")
    p.add_argument("--num-samples", type=int, default=None, help=f"posterior samples per {what} draw")
    p.add_argument("--nan-as-missing", action="store_true",
                   help="mark samples with NaN features missing for that modality instead of failing")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the posterior draws (default: evaluate.seed of the run's configuration)")


def load_for_inference(args):
    """The trained model, its configuration, the split that ``args`` names, and the checkpoint's payload."""
    from ..infer.checkpoint import load_model
    from ..infer.job import load_data

    mfm, config, payload = load_model(args.checkpoint)
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
    if split not in data:
        raise DataError(f"{data.source}: no split {split!r}; the data set has {list(data)}")
    found = schema_differences(mfm.schema, data.schema)
    if found:
        raise DataError(f"{data.source}: not the schema the model {args.checkpoint} was trained on: "
                        + "; ".join(found))
    return mfm, config, data[split], payload
