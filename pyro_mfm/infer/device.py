"""The compute a run uses: the PyTorch CPU thread count and float32 matrix products' precision for a block, and the
device ``train.device`` names."""

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


@contextmanager
def matmul_precision(name: str):
    """Run a block with float32 matrix products at ``name``'s internal precision (``"highest"``, ``"high"`` or
    ``"medium"``: :func:`torch.set_float32_matmul_precision`), restoring the setting afterwards."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(name)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@contextmanager
def compute(train, threads: int | None = None):
    """Run a block with the CPU threads (``threads``, else ``train.num_threads``) and the matrix products'
    precision that the training configuration ``train`` asks for."""
    with cpu_threads(train.num_threads if threads is None else threads), matmul_precision(train.matmul_precision):
        yield


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
