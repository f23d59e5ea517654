"""Resuming a run: which checkpoint, and whether the data and configuration of the resumed run may continue it."""

from __future__ import annotations

from pathlib import Path

from ..config import Config, ConfigError
from ..data.dataset import MultimodalData
from ..data.schema import Schema, schema_differences
from .checkpoint import CheckpointError, read_resume, stored_config

RESUME_FREE = frozenset(
    {
        "train.epochs",
        "train.patience",
        "train.progress",
        "train.num_threads",
        "train.matmul_precision",
        "train.ensemble_processes",
        "train.keep_last",
        "train.device",
        "train.validate",
        "data.source",
        "evaluate.num_samples",
        "evaluate.interval",
        "evaluate.batch_size",
        "evaluate.seed",
    }
)
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


def resume_payload(out_dir, data: MultimodalData, config: Config, allow_config_change: bool) -> dict:
    """The checkpoint ``read_resume(out_dir)`` finds, checked against the data and the configuration of the resumed
    run; ``payload["changed"]`` holds every configuration field that differs (``{key: [old, new]}``)."""
    if out_dir is None:
        raise CheckpointError("resume needs the run folder that holds last.pt")
    payload = read_resume(out_dir)
    if payload["schema"] != data.schema.to_dict():
        found = schema_differences(Schema.from_dict(payload["schema"]), data.schema, strict=True)
        raise CheckpointError(
            f"checkpoint {payload['path']}: trained on data with another schema than "
            f"{config.data.source} ({'; '.join(found) or 'other schema metadata'}); expected the "
            "modalities and label it was trained on"
        )
    try:  # the stored configuration, fields it predates filled in (checkpoint.stored_config)
        stored = stored_config(payload)
    except ConfigError:  # not valid today: compared as stored, which names every field that differs
        stored = None
    if stored is not None:
        arch = stored.differences(config, tables=("model",))
        if arch:
            raise CheckpointError(
                f"checkpoint {payload['path']}: trained with another architecture "
                f"({'; '.join(arch)}); resuming needs the [model] table it was trained with"
            )
    changed = config_changes(stored.to_dict() if stored is not None else payload["config"], config.to_dict())
    fixed = {k: v for k, v in changed.items() if k not in RESUME_FREE}
    if fixed and not allow_config_change:
        listed = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in fixed.items())
        raise CheckpointError(
            f"checkpoint {payload['path']}: resuming with another configuration ({listed}) would "
            f"change the run's result; expected the run's configuration ({Path(out_dir) / 'config.json'})"
            ", or allow_config_change / --allow-config-change to continue with the new one"
        )
    payload["changed"] = changed
    return payload
