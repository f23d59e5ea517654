"""Shared fixtures."""

from pathlib import Path

import pytest

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    """The real data sets at ``../shared/datasets`` (next to the repository); skips the test when absent."""
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"real data sets not found at {SHARED_DATASETS} (expected ../shared/datasets beside the repository)")
    return SHARED_DATASETS
