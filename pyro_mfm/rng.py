"""The random-number state of a process: Pyro's helpers (PyTorch's CPU generator, NumPy's, Python's) plus every CUDA
device's, to checkpoint and restore it, and :func:`seeded` to run a block on a seed without moving the caller's
state."""

from __future__ import annotations

import random
from contextlib import contextmanager

import numpy as np
import pyro
import pyro.util
import torch


def get_rng_state() -> dict:
    """Every generator the package draws from: ``torch``, ``random``, ``numpy`` (as :func:`pyro.util.get_rng_state`)
    and ``cuda`` (one state per CUDA device, empty without CUDA)."""
    state = pyro.util.get_rng_state()
    state["cuda"] = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return state


def set_rng_state(state: dict) -> None:
    """Restore a state from :func:`get_rng_state`, also one that names Python's generator ``python`` (as
    checkpoints written before this module did); CUDA states are restored where the machine has as many devices."""
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "random" in state or "python" in state:
        random.setstate(state["random"] if "random" in state else state["python"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@contextmanager
def seeded(seed: int):
    """Run the block with every generator seeded by ``seed`` (:func:`pyro.set_rng_seed`), then restore the previous
    state."""
    state = get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        set_rng_state(state)
