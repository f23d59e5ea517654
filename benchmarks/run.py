"""Benchmarks of pyro-mfm, printed as one Markdown report.

    .venv/bin/python benchmarks/run.py [--device cpu|cuda] [--quick] [--threads N] [--reps R]

1. Pyro overhead: one training step (forward, backward, Adam) of the library's objective against a hand-written
   plain-PyTorch loss of the same networks and terms (asserted equal first), on UCI-sized vectors and on MOSI-shaped
   sequences (batch 64, T = 20, dims 300/5/20, the paper's network sizes).
2. Training throughput on MOSI-shaped sequences: the library's ``wae`` step against the reference implementation's
   way (a Python loop over time steps for every LSTM and the memory), asserted equal first.
3. Prediction and imputation throughput from subsets of observed modalities, and peak memory.
4. Scaling of the step time with batch size, sequence length and number of modalities.

Every figure is the median over repeated timings after warm-up, variants interleaved, with the interquartile range
in brackets; on CUDA, timed with CUDA events after synchronising.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import sections  # noqa: E402
from benchmarks.setups import to_device  # noqa: E402


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--quick", action="store_true", help="tiny networks and few repeats (a smoke test)")
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1)")
    p.add_argument("--reps", type=int, default=0, help="timed repetitions per variant (default 30; quick: 3)")
    p.add_argument("--only", default="1234", help="which sections to run, e.g. 12")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = to_device(args.device)
    reps, warmup = (args.reps or 3, 1) if args.quick else (args.reps or 30, 3)
    print(
        f"# pyro-mfm benchmarks\n\n{datetime.date.today()}, {describe(device)}, torch {torch.__version__}, "
        f"{reps} timed repetitions after {warmup} warm-up"
        + (" (quick: tiny networks)" if args.quick else "")
        + "\n\nTimes in ms: median (interquartile range).\n"
    )
    checks: list[str] = []
    if "1" in args.only:
        rows = sections.overhead(device, reps, warmup, args.quick, checks)
        print("## 1. Pyro overhead: one training step\n")
        print(table(["setup", "variant", "step ms", "ratio to plain", "note"], rows) + "\n")
    if "2" in args.only:
        print("## 2. Training throughput, MOSI-shaped sequences (`wae`), samples/s\n")
        print("Parameters: the public MFM code's network (the authors' and MMSA's) at each configuration's widths, and")
        print("the library's (the MFN's own output head, which the MFM never reads, is not counted)\n")
        head = ["configuration", "part", "public code", "library", "ratio"]
        print(table(head, sections.parameters(args.quick)) + "\n")
        rows = sections.throughput(device, reps, warmup, args.quick, checks)
        last = "peak GPU memory" if device.type == "cuda" else "bound: reference / library's matrix products"
        head = ["configuration", "batch", "step-by-step reference", "library", "speed-up", last]
        print(table(head, rows) + "\n")
    if "3" in args.only:
        rows = sections.inference(device, reps, warmup, args.quick)
        print("## 3. Prediction and imputation, samples/s\n")
        print(table(["data", "task", "samples/s", "ms per pass", "peak memory"], rows) + "\n")
    if "4" in args.only:
        rows = sections.scaling(device, reps, warmup, args.quick)
        print("## 4. Scaling of the training step (MOSI-shaped, `wae`)\n")
        print(table(["axis", "size", "step ms", "ms per unit", "marginal ms per unit"], rows) + "\n")
    if checks:
        print("## Equality checks (same parameters, same random draws)\n")
        print("\n".join(f"- {c}" for c in checks) + "\n")
        print("ALL EQUALITY CHECKS PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
