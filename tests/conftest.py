"""Shared fixtures, and the Hypothesis profiles of the property tests.

The property tests draw the same examples on every run (``derandomize``), so that the suite passes or fails the same
way on every machine; ``HYPOTHESIS_PROFILE=explore`` draws new random examples each run, to look for new faults.
"""

import os
from pathlib import Path

# One thread per test process for the BLAS and OpenMP pools of numpy, scipy and scikit-learn too, in this process
# (threadpool_limits, below) and in the processes the tests start (notebook kernels, CLI runs), which read these
# variables as they load. With two test processes on two cores, each library's default of one thread per core put
# four or more busy threads on two cores: the UCI comparison's 252 logistic regressions took 94 s alone and 153 s
# beside another test process, against 22 s on one thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Each test process (pytest-xdist worker) keeps to its share of the cores, and so do the processes it starts. An
# ensemble trains its members at once in one process per core it may use (train.ensemble_processes = 0): unpinned,
# each of two test processes on two cores started two member processes for its small ensembles, paid their start-up
# and put four processes on two cores (the suite 10.9 minutes against 8.4).
_worker, _workers = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _worker.startswith("gw") and _workers > 1 and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))[int(_worker[2:]) :: _workers]
    if _cores:
        os.sched_setaffinity(0, _cores)

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

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
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)
