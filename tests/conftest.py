"""Shared fixtures, and the Hypothesis profiles of the property tests.

The property tests draw the same examples on every run (``derandomize``), so that the suite passes or fails the same
way on every machine; ``HYPOTHESIS_PROFILE=explore`` draws new random examples each run, to look for new faults.
"""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import settings

settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real data sets at ``../shared/datasets`` (next to the repository); skips the test when absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(
            f"real data sets not found at {SHARED_DATASETS} (expected ../shared/datasets beside the repository)"
        )
    return SHARED_DATASETS


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test runs PyTorch on one CPU thread, as training does by default: reproducible, and fast on a shared
    2-core machine (several threads on small networks are slower there, not faster)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
