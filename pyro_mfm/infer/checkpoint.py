"""Checkpoints: a folder that explains itself (weights, optimizer, configuration, data-set schema, log).

``<dir>/last.pt`` after every epoch (and at the step where SIGINT/SIGTERM stopped training), ``<dir>/best.pt`` at
the best validation score, ``<dir>/epoch-XXXX.pt`` for the last ``train.keep_last`` epochs, ``<dir>/config.json``
and ``<dir>/log.jsonl`` (one line per epoch). Every write goes to a temporary file in the same folder, is fsynced,
then renamed over the old one, so an interrupted write never leaves a broken checkpoint; a checkpoint broken some
other way (a full disk, a bad copy, flipped bits) is detected on reading, and :func:`read_resume` falls back to the
newest epoch checkpoint that reads. Each checkpoint stores the SHA-256 of its content (every tensor's bytes, dtype and
shape, and every other value; :func:`payload_digest`), which :func:`read_checkpoint` verifies, so damage that leaves
the file loadable (a bit flipped inside the weights) is found as well.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import re
import shutil
import warnings
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import Config
from ..data.schema import Schema
from ..data.stats import FeatureStats
from ..ensemble import Ensemble
from ..model import MFM, upgrade_state_dict
from ..outputs import atomic_write, write_json  # noqa: F401  (re-exported: checkpoint writers import them here)

FORMAT = "pyro-mfm-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint; the message names the file and what was expected."""


LOCK_FILE = ".lock"
RUN_FILES = (
    "last.pt",
    "best.pt",
    "epoch-*.pt",
    "log.jsonl",
    "config.json",
    "calibration.json",
    "tensorboard",
    ".*.tmp",
)
"""What a training run folder holds (``--overwrite`` deletes only these)."""


@contextmanager
def folder_lock(folder, what: str = "run folder"):
    """Hold an exclusive lock (``fcntl.flock`` on ``folder/.lock``) for the block, creating ``folder``; a second
    holder, in this process or another, gets a :class:`CheckpointError` at once instead of waiting."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CheckpointError(f"{what} {folder}: a file is in the way; expected a folder") from None
    f = open(folder / LOCK_FILE, "a+b")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CheckpointError(
            f"{what} {folder} is in use by another process (it holds the lock {folder / LOCK_FILE}); "
            "expected one process writing to it at a time"
        ) from None
    try:
        yield folder
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def prepare_folder(folder, resume: bool, overwrite: bool, owned=RUN_FILES, what: str = "run folder") -> None:
    """Refuse to write a new run into a non-empty ``folder`` unless ``resume`` (continue the run in it) or
    ``overwrite`` (delete what it holds first: only the files a run writes, matched by the patterns ``owned``)."""
    folder = Path(folder)
    if resume and overwrite:
        raise CheckpointError(f"{what} {folder}: resume and overwrite exclude each other; expected one of them")
    entries = sorted(p for p in folder.iterdir() if p.name != LOCK_FILE) if folder.is_dir() else []
    if resume or not entries:
        return
    names = [p.name + ("/" if p.is_dir() else "") for p in entries]
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    if not overwrite:
        raise CheckpointError(
            f"{what} {folder} is not empty (it holds {listed}); expected a new or empty folder, "
            "--resume to continue the run in it, or --overwrite to replace it"
        )
    foreign = [n for p, n in zip(entries, names) if not any(fnmatch(p.name, pat) for pat in owned)]
    if foreign:
        raise CheckpointError(
            f"{what} {folder}: --overwrite deletes only what pyro-mfm writes, and it also holds "
            f"{', '.join(foreign[:5])}; expected a folder of a run (move those files first)"
        )
    for p in entries:
        shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def payload_digest(payload: dict) -> str:
    """SHA-256 (hex) of a checkpoint's content: every key and value except ``checksum`` and ``path``, tensors and
    arrays by dtype, shape and bytes, so that it is the same for a payload in memory and the one read back."""
    h = hashlib.sha256()

    def feed(tag: str, data: bytes = b"") -> None:
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    def walk(v) -> None:
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            feed("tensor", f"{t.dtype}{tuple(t.shape)}".encode())
            feed("data", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, np.ndarray):
            a = np.ascontiguousarray(v)
            feed("array", f"{a.dtype.str}{a.shape}".encode())
            feed("data", a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
        elif isinstance(v, dict):
            keys = sorted((k for k in v if not (v is payload and k in ("checksum", "path"))), key=repr)
            feed("dict", str(len(keys)).encode())
            for k in keys:
                feed("key", repr(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            feed(type(v).__name__, str(len(v)).encode())
            for x in v:
                walk(x)
        elif isinstance(v, (bytes, bytearray)):
            feed("bytes", bytes(v))
        elif v is None or isinstance(v, (bool, int, float, str, np.generic)):
            feed(type(v).__name__, repr(v.item() if isinstance(v, np.generic) else v).encode())
        else:
            raise TypeError(f"checkpoint payload: cannot checksum a value of type {type(v).__name__}")

    walk(payload)
    return h.hexdigest()


def _serialise(payload: dict) -> io.BytesIO:
    payload = {k: v for k, v in payload.items() if k not in ("checksum", "path")}
    payload["checksum"] = payload_digest(payload)
    buf = io.BytesIO()
    torch.save(payload, buf)
    return buf


def save_checkpoint(path, mfm: MFM, config: Config, stats: FeatureStats, state: dict) -> None:
    """Write model weights, configuration, schema, statistics and the training ``state`` (optimizer, RNG, ...)."""
    save_run(Path(path).parent, mfm, config, stats, state, names=[Path(path).name])


EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")


def epoch_checkpoints(out_dir) -> list[Path]:
    """The ``epoch-XXXX.pt`` files of a run folder, oldest first."""
    out_dir = Path(out_dir)
    found = [(int(m.group(1)), p) for p in out_dir.glob("epoch-*.pt") if (m := EPOCH_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def save_run(
    out_dir, mfm: MFM, config: Config, stats: FeatureStats, state: dict, names=("last.pt",), keep_last: int = 0
) -> None:
    """Serialise one checkpoint once and write it (atomically) under each of ``names`` in ``out_dir``; with
    ``keep_last``, delete all but the newest ``keep_last`` epoch checkpoints."""
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "library_version": __version__,
        "config": config.to_dict(),
        "schema": mfm.schema.to_dict(),
        "stats": stats.to_dict(),
        "model": mfm.state_dict(),
        "state": state,
    }
    buf = _serialise(payload)
    for name in names:
        atomic_write(Path(out_dir) / name, lambda f: f.write(buf.getbuffer()))
    if keep_last:
        for old in epoch_checkpoints(out_dir)[:-keep_last]:
            old.unlink(missing_ok=True)


def update_weights(path, mfm: MFM, keep_as: str | None = None) -> None:
    """Replace the weights (and buffers) stored in checkpoint ``path`` by ``mfm``'s, keeping everything else; with
    ``keep_as``, the weights they replace stay in the payload under that key (unless it holds some already)."""
    payload = read_checkpoint(path)
    if keep_as is not None:
        payload.setdefault(keep_as, payload["model"])
    payload["model"] = mfm.state_dict()
    buf = _serialise(payload)
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


def read_checkpoint(path) -> dict:
    path = Path(path)
    if path.is_dir():
        if not (path / "best.pt").exists() and (path / "last.pt").exists():
            warnings.warn(
                f"run folder {path} has no best.pt (training did not finish?); using last.pt",
                RuntimeWarning,
                stacklevel=2,
            )
            path = path / "last.pt"
        else:
            path = path / "best.pt"
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
    try:
        digest = payload_digest(payload)
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} is corrupt ({e})") from None
    if payload.get("checksum") != digest:
        what = "has no checksum" if "checksum" not in payload else "does not match its checksum"
        raise CheckpointError(
            f"checkpoint {path} is corrupt: its content {what} (expected SHA-256 {digest}; "
            "damaged on disk or in a copy?)"
        )
    payload["path"] = str(path)
    return payload


# fields added after checkpoints were first written, with the value that rebuilds the networks of a checkpoint
# written before them, or resumes its model selection on the record it kept (a stored configuration holds every
# field of its day, so a missing one predates it)
PREDATED = {
    "model": {"sequence_mean": False, "label_weight": "fixed"},
    "train": {"select_over": "observed", "ensemble": 1},
}


def stored_config(payload: dict) -> Config:
    """The configuration a checkpoint was trained with: its stored tables, a field it predates at the value of
    :data:`PREDATED` where that changes the networks or the selection, at today's default otherwise."""
    tables = {t: dict(v) if isinstance(v, dict) else v for t, v in payload["config"].items()}
    for table, fields in PREDATED.items():
        if isinstance(tables.get(table), dict):
            tables[table] = {**fields, **tables[table]}
    return Config.from_dict(tables, where=payload["path"])


def load_model(path, device=None) -> tuple[MFM | Ensemble, Config, dict]:
    """Rebuild the trained :class:`MFM` (in eval mode) from a checkpoint file or folder, or the
    :class:`~pyro_mfm.ensemble.Ensemble` from the folder of an ensemble's training (its ``ensemble.json`` and
    ``member-K/`` folders; the configuration is then the first member's with ``train.ensemble`` = K, and the payload's
    ``path`` is the folder and its ``checksum`` the SHA-256 of the members' checksums)."""
    if Path(path).is_dir() and (Path(path) / "ensemble.json").exists():
        return _load_ensemble(Path(path), device)
    payload = read_checkpoint(path)
    config = stored_config(payload)
    schema = Schema.from_dict(payload["schema"])
    stats = FeatureStats.from_dict(payload["stats"])
    mfm = MFM(schema, config.model, stats)
    try:
        mfm.load_state_dict(payload["model"])
    except RuntimeError:
        raise CheckpointError(
            f"checkpoint {payload['path']}: weights do not match its configuration "
            f"({weights_mismatch(mfm, payload['model'])})"
        ) from None
    mfm.to(device or "cpu").eval()
    return mfm, config, payload


def _load_ensemble(folder: Path, device=None) -> tuple[Ensemble, Config, dict]:
    where = folder / "ensemble.json"
    try:
        info = json.loads(where.read_text())
        names = [str(n) for n in info["folders"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{where}: not an ensemble's record ({type(e).__name__}: {e}); expected the 'folders' of its members"
        ) from None
    missing = [n for n in names if not (folder / n / "best.pt").exists()]
    if missing:
        raise CheckpointError(
            f"ensemble {folder}: member {', '.join(missing)} has no best.pt (training did not finish?); expected all "
            f"{len(names)} members trained (--resume continues the training)"
        )
    loaded = [load_model(folder / n, device) for n in names]
    config = loaded[0][1].override([f"train.ensemble={len(names)}"])  # member 0 trained from the ensemble's seed
    digest = hashlib.sha256("".join(str(p.get("checksum")) for _, _, p in loaded).encode()).hexdigest()
    payload = {"path": str(folder), "checksum": digest, "members": [p["path"] for _, _, p in loaded]}
    return Ensemble([m for m, _, _ in loaded]).eval(), config, payload


def weights_mismatch(module: torch.nn.Module, state: dict) -> str:
    """One line on how the weights ``state`` differ from what ``module`` holds (missing, unexpected, resized)."""
    if isinstance(module, MFM):
        state = upgrade_state_dict(state)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    resized = [
        k for k in own if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    parts = []
    if resized:
        k = resized[0]
        parts.append(
            f"{len(resized)} of another shape, e.g. {k}: {list(state[k].shape)} stored, {list(own[k].shape)} expected"
        )
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
    return "; ".join(parts) or "the weights do not load"
