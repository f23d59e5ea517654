"""The compute a run uses: the PyTorch CPU thread count for a block, and the device ``train.device`` names."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..config import ConfigError


@contextmanager
def cpu_threads(n: int):
    """Run a block with ``n`` PyTorch CPU threads (``0``: leave the setting alone), restoring it afterwards."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(name: str) -> torch.device:
    """The device ``train.device`` names; :class:`ConfigError` for a CUDA device this machine does not have."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"train.device = {name!r}: CUDA is not available on this machine (PyTorch "
                f"{torch.__version__}); expected 'cpu' or 'auto'"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"train.device = {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s); expected 'cuda:0' to 'cuda:{torch.cuda.device_count() - 1}'"
            )
    return device
