"""Writing outputs: atomic files with the usual permissions, strict JSON, and output paths checked before the work.

Every file the package writes goes to a temporary file in the target folder, is fsynced, given the permissions of
the file it replaces or else those a new file gets under the process's umask (``0o666 & ~umask``, as ``open``
would; a temporary file starts at 0600), then renamed over the target, so ``path`` is either the previous file or
the complete new one. A write that fails (a full disk, a folder that is a file, no permission) is an
:class:`OutputError` naming the path.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class OutputError(OSError):
    """An output path that cannot be written; the message names the path and why (an :class:`OSError`, as the
    failure of the write it reports)."""


def new_file_mode() -> int:
    """The permissions ``open`` gives a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_mode(path: Path) -> int:
    """Permissions for a file written at ``path``: those of the file it replaces, else :func:`new_file_mode`."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return new_file_mode()


def _reason(e: OSError) -> str:
    return e.strerror or str(e)


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` that is not a folder (so nothing can be created under it)."""
    for parent in reversed(path.absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def _check_parent(path: Path, what: str) -> None:
    blocker = _blocking_file(path)
    if blocker is not None:
        raise OutputError(f"{what} {path}: {blocker} is a file, not a folder; expected a path in a folder")
    existing = next(p for p in [path.absolute().parent, *path.absolute().parents] if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: folder {existing} is not writable")


def check_output_dir(path, what: str = "output folder") -> Path:
    """Raise :class:`OutputError` unless ``path`` is a folder or can be created as one (before any work)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file; expected a folder (or a path that does not exist yet)")
    _check_parent(path, what)
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable")
    return path


def check_output_file(path, what: str = "output file") -> Path:
    """Raise :class:`OutputError` unless a file can be written at ``path`` (before any work)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; expected a file name")
    _check_parent(path, what)
    return path


@contextmanager
def atomic_path(path) -> Iterator[str]:
    """A temporary file beside ``path`` for the caller to write by name; on leaving the block it is fsynced and
    renamed to ``path`` (with :func:`file_mode`'s permissions), or removed if the block raised."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; expected a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {_reason(e)}") from None
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {_reason(e)}") from None
        raise


def atomic_write(path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, fsync, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)


def strict(obj):
    """``obj`` with NaN and infinities replaced by None (JSON's null) and NumPy scalars and arrays as Python ones."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return strict(obj.tolist())
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path, obj) -> None:
    """Write ``obj`` as strict JSON (no ``NaN`` or ``Infinity`` tokens: those values are written as null)."""
    text = json.dumps(strict(obj), indent=2, allow_nan=False)
    atomic_write(path, lambda f: f.write(text.encode()))
