"""Timing on CPU or CUDA: medians of repeated, interleaved runs after warm-up, with their spread and peak memory.

On CUDA every timed call is bracketed by ``torch.cuda.Event``s and synchronised, so the figure is the device's time,
not the launch time; on CPU it is ``time.perf_counter``. Variants compared with each other are run interleaved
(A, B, A, B, ...) so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass

import torch


@dataclass
class Timing:
    """Seconds per call: the median and the interquartile range over the repetitions."""

    median: float
    q1: float
    q3: float
    reps: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def ms(self) -> str:
        return f"{1e3 * self.median:.2f} ({1e3 * self.q1:.2f}-{1e3 * self.q3:.2f})"


def summarise(seconds: list[float]) -> Timing:
    if len(seconds) == 1:
        return Timing(seconds[0], seconds[0], seconds[0], 1)
    q = statistics.quantiles(seconds, n=4, method="inclusive")
    return Timing(statistics.median(seconds), q[0], q[2], len(seconds))


class Clock:
    """Time one call of ``fn`` on ``device``: CUDA events (synchronised) on a GPU, ``perf_counter`` on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def __call__(self, fn) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t


def interleaved(fns: dict, device, reps: int, warmup: int) -> dict[str, Timing]:
    """Time every ``fns[name]()`` ``reps`` times after ``warmup`` calls each, in the order A, B, C, A, B, C, ..."""
    clock = Clock(device)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(reps):
            for name, fn in fns.items():
                times[name].append(clock(fn))
    finally:
        if gc_was:
            gc.enable()
    return {name: summarise(t) for name, t in times.items()}


def peak_memory(fn, device) -> str:
    """The peak memory of one call of ``fn``: allocated GPU memory on CUDA; on CPU the process's peak resident set
    (a high-water mark over the whole process, so an upper bound for this call)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
        return f"{(peak - before) / 2**20:.1f} MiB GPU (+{before / 2**20:.0f} resident)"
    fn()
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB RSS (process peak)"


# the kernels of matrix products: plain and batched products, and the CPU's fused LSTM layers (whose work is the
# input and recurrent products, with the gate nonlinearities folded in)
MATMUL_KERNELS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::mkldnn_rnn_layer",
    "aten::mkldnn_rnn_layer_backward",
)


def matmul_ms(fn, reps: int = 5) -> float:
    """CPU milliseconds per call spent in matrix-product kernels (``torch.profiler``, self time, after one warm-up
    call): work that any implementation of the same networks does, so a bound on what removing the rest can gain."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_KERNELS) / reps / 1e3
