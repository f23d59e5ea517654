"""Seeded sampling that leaves the caller's random-number state untouched."""

from __future__ import annotations

from contextlib import contextmanager

import pyro
from pyro.util import get_rng_state, set_rng_state


@contextmanager
def seeded(seed: int):
    """Run the block with torch/numpy/random seeded by ``seed``, then restore the previous state."""
    state = get_rng_state()
    pyro.set_rng_seed(seed)
    try:
        yield
    finally:
        set_rng_state(state)
