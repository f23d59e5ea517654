"""Checkpoints: a folder that explains itself (weights, optimizer, configuration, data-set schema, log).

``<dir>/last.pt`` after every epoch (and at the step where SIGINT/SIGTERM stopped training), ``<dir>/best.pt`` at
the best validation score, ``<dir>/epoch-XXXX.pt`` for the last ``train.keep_last`` epochs, ``<dir>/config.json``
and ``<dir>/log.jsonl`` (one line per epoch). Every write goes to a temporary file in the same folder, is fsynced,
then renamed over the old one, so an interrupted write never leaves a broken checkpoint; a checkpoint broken some
other way (a full disk, a bad copy) is detected on reading, and :func:`read_resume` falls back to the newest epoch
checkpoint that reads.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import Config
from ..data.schema import Schema
from ..data.stats import FeatureStats
from ..model import MFM
from ..outputs import atomic_write, write_json  # noqa: F401  (re-exported: checkpoint writers import them here)

FORMAT = "pyro-mfm-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint; the message names the file and what was expected."""


def save_checkpoint(path, mfm: MFM, config: Config, stats: FeatureStats, state: dict) -> None:
    """Write model weights, configuration, schema, statistics and the training ``state`` (optimizer, RNG, ...)."""
    save_run(Path(path).parent, mfm, config, stats, state, names=[Path(path).name])


EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")


def epoch_checkpoints(out_dir) -> list[Path]:
    """The ``epoch-XXXX.pt`` files of a run folder, oldest first."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("epoch-*.pt") if (m := EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_run(out_dir, mfm: MFM, config: Config, stats: FeatureStats, state: dict, names=("last.pt",),
             keep_last: int = 0) -> None:
    """Serialise one checkpoint once and write it (atomically) under each of ``names`` in ``out_dir``; with
    ``keep_last``, delete all but the newest ``keep_last`` epoch checkpoints."""
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
    buf = io.BytesIO()
    torch.save(payload, buf)
    for name in names:
        atomic_write(Path(out_dir) / name, lambda f: f.write(buf.getbuffer()))
    if keep_last:
        for old in epoch_checkpoints(out_dir)[:-keep_last]:
            old.unlink(missing_ok=True)


def update_weights(path, mfm: MFM) -> None:
    """Replace the weights (and buffers) stored in checkpoint ``path`` by ``mfm``'s, keeping everything else."""
    payload = read_checkpoint(path)
    payload.pop("path")
    payload["model"] = mfm.state_dict()
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def read_resume(out_dir) -> dict:
    """The checkpoint to resume a run from: ``out_dir/last.pt``, or, when that is missing or unreadable, the newest
    readable ``epoch-XXXX.pt`` (with a warning naming the bad file). Raises :class:`CheckpointError` listing every
    file tried when none reads."""
    out_dir = Path(out_dir)
    errors = []
    for path in [out_dir / "last.pt"] + epoch_checkpoints(out_dir)[::-1]:
        if not path.exists() and path.name == "last.pt":
            errors.append(f"{path} does not exist")
            continue
        try:
            payload = read_checkpoint(path)
            if not isinstance(payload.get("state"), dict) or "epoch" not in payload["state"]:
                raise CheckpointError(f"checkpoint {path}: no training state (expected a 'state' with an 'epoch')")
        except CheckpointError as e:
            errors.append(str(e))
            continue
        if errors:
            warnings.warn(f"resuming from {path}: " + "; ".join(errors), RuntimeWarning, stacklevel=2)
        return payload
    raise CheckpointError(f"no checkpoint to resume from in {out_dir}: " + "; ".join(errors))


def rng_state() -> dict:
    """Every random-number generator training draws from: PyTorch (CPU and each CUDA device), NumPy, Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    if st.get("cuda") and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])
    if "numpy" in st:
        np.random.set_state(st["numpy"])
    if "python" in st:
        random.setstate(st["python"])


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
    except RuntimeError:
        raise CheckpointError(f"checkpoint {payload['path']}: weights do not match its configuration "
                              f"({weights_mismatch(mfm, payload['model'])})") from None
    mfm.to(device or "cpu").eval()
    return mfm, config, payload


def weights_mismatch(module: torch.nn.Module, state: dict) -> str:
    """One line on how the weights ``state`` differ from what ``module`` holds (missing, unexpected, resized)."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [k for k in own
               if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if resized:
        k = resized[0]
        parts.append(f"{len(resized)} of another shape, e.g. {k}: {list(state[k].shape)} stored, "
                     f"{list(own[k].shape)} expected")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts) or "the weights do not load"
