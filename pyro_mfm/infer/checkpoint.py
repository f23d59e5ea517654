"""Checkpoints: a folder that explains itself (weights, optimizer, configuration, data-set schema, log).

``<dir>/last.pt`` after every epoch, ``<dir>/best.pt`` at the best validation score, ``<dir>/config.json``,
``<dir>/schema.json`` and ``<dir>/log.jsonl`` (one line per epoch). Every write goes to a temporary file in the
same folder, is fsynced, then renamed over the old one, so an interrupted write never leaves a broken checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import Config
from ..data.schema import Schema
from ..data.stats import FeatureStats
from ..model import MFM

FORMAT = "pyro-mfm-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint; the message names the file and what was expected."""


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path, obj) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, default=_json_default).encode()))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def save_checkpoint(path, mfm: MFM, config: Config, stats: FeatureStats, state: dict) -> None:
    """Write model weights, configuration, schema, statistics and the training ``state`` (optimizer, RNG, ...)."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": __version__,
        "config": config.to_dict(),
        "schema": mfm.schema.to_dict(),
        "stats": {"mean": stats.mean, "std": stats.std, "label_mean": stats.label_mean, "label_std": stats.label_std},
        "model": mfm.state_dict(),
        "state": state,
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def read_checkpoint(path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "last.pt"
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a pyro-mfm checkpoint (expected format {FORMAT!r})")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {payload.get('version')}, expected {VERSION}")
    payload["path"] = str(path)
    return payload


def load_model(path, device=None) -> tuple[MFM, Config, dict]:
    """Rebuild the trained :class:`MFM` (in eval mode) from a checkpoint file or folder."""
    payload = read_checkpoint(path)
    config = Config.from_dict(payload["config"], where=payload["path"])
    schema = Schema.from_dict(payload["schema"])
    s = payload["stats"]
    stats = FeatureStats(s["mean"], s["std"], s["label_mean"], s["label_std"])
    mfm = MFM(schema, config.model, stats)
    try:
        mfm.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {payload['path']}: weights do not match its configuration ({e})") from None
    mfm.to(device or "cpu").eval()
    return mfm, config, payload
