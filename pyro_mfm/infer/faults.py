"""Faults during training: a non-finite loss or gradient (divergence), and SIGINT/SIGTERM (a clean stop).

A divergence is caught before the optimizer step, so the parameters and the optimizer state stay those of the last
good step; :func:`diagnose` then traces the guide and the model on the offending batch and names the sample sites
whose log-density is not finite, the samples they come from, and the non-finite inputs and gradients.
"""

from __future__ import annotations

import math
import signal
import threading

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.dataset import Batch


class DivergenceError(RuntimeError):
    """A non-finite loss or gradient with ``train.on_divergence = "stop"``; the message names sites and samples."""


_deferred: int | None = None  # a signal that arrived before any StopRequested block (see defer_stop)


def defer_stop(signum, frame) -> None:
    """A signal handler that keeps ``signum`` for the next :class:`StopRequested` block (which then starts with
    that stop requested): a process that trains one run after another (an ensemble's member process) installs it,
    so that a stop asked for between or just before its runs is not lost."""
    global _deferred
    _deferred = signum


def stop_deferred() -> bool:
    """Whether :func:`defer_stop` has received a signal in this process."""
    return _deferred is not None


class StopRequested:
    """Within ``with StopRequested() as stop:``, SIGINT and SIGTERM set ``stop.signum`` instead of killing the
    process, so training can finish its step, save a checkpoint and return. A second signal interrupts at once
    (``KeyboardInterrupt``); the previous handlers come back on exit. Outside the main thread, a no-op. A signal
    kept by :func:`defer_stop` counts as the first."""

    def __init__(self, signals=(signal.SIGINT, signal.SIGTERM)):
        self.signals = signals
        self.signum = None
        self._before = {}

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt(f"second signal {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def __enter__(self) -> StopRequested:
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._before[s] = signal.signal(s, self._handle)
            if self.signum is None and _deferred in self.signals:
                self.signum = _deferred
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._before.items():
            signal.signal(s, h)
        self._before.clear()


def is_finite(x) -> bool:
    return bool(torch.isfinite(x).all()) if torch.is_tensor(x) else math.isfinite(x)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """Rows (first dimension) of ``t`` with a non-finite entry."""
    bad = ~torch.isfinite(t)
    return bad.reshape(bad.shape[0], -1).any(-1) if t.dim() else bad.reshape(1)


def _samples(idx: list, limit: int = 8) -> str:
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    return f"samples {idx[:limit]}{more}"


def _take(batch: Batch, i: int) -> Batch:
    """Row ``i`` of ``batch`` as a batch of one."""
    return batch.map(lambda t: t[i : i + 1])


def _trace_faults(mfm, batch: Batch) -> list[tuple[str, str]]:
    """``(what, detail)`` for the sites of the guide and of the model (replayed on the guide) with a non-finite value
    or log-density on ``batch``, or where the program raised (named by the last site it completed)."""
    faults = []
    guide = poutine.trace(mfm.guide)
    for where, handler in (("guide", guide), ("model", None)):
        if handler is None:
            handler = poutine.trace(poutine.replay(mfm.model, trace=guide.msngr.trace))
        try:
            tr = handler.get_trace(batch)
            tr.compute_log_prob()
        except Exception as e:  # e.g. a Cholesky factorisation of a non-finite precision
            done = [
                n
                for n, site in handler.msngr.trace.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site)
            ]
            after = f"after site {done[-1]!r}" if done else "before its first site"
            faults.append((f"{where} raised {after}", f"{type(e).__name__}: {str(e).splitlines()[0]}"))
            return faults
        for name, site in tr.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            value = site["value"]
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                faults.append((f"{where} site {name!r}: non-finite value", ""))
            elif not torch.isfinite(site["log_prob"]).all():
                faults.append((f"{where} site {name!r}: non-finite log-density", ""))
    return faults


def diagnose(mfm, batch: Batch, named_params=(), limit: int = 512) -> list[str]:
    """What is not finite on ``batch``, per sample: inputs (observed sites), sample sites of the guide and the
    model (their value and log-density), programs that raised, and parameter gradients. The model and guide are
    traced on each sample alone (the first ``limit``), so every line names the samples it concerns."""
    found = []
    for m, x in batch.x.items():
        if not torch.isfinite(x).all():
            found.append(f"observed site 'x_{m}': non-finite data in {_samples(batch.index[_rows(x)].tolist())}")
    if batch.y is not None and batch.y.is_floating_point() and not torch.isfinite(batch.y).all():
        found.append(f"observed site 'y': non-finite data in {_samples(batch.index[_rows(batch.y)].tolist())}")
    if found:  # the model and guide were not run on these inputs
        return found
    was_training = mfm.training
    by_fault: dict[tuple, list] = {}
    try:
        with torch.no_grad():
            for i in range(min(len(batch), limit)):
                for fault in _trace_faults(mfm, _take(batch, i)):
                    by_fault.setdefault(fault, []).append(int(batch.index[i]))
    finally:
        mfm.train(was_training)
    found += [
        f"{what} in {_samples(idx)}" + (f": {detail}" if detail else "") for (what, detail), idx in by_fault.items()
    ]
    bad = [n for n, p in named_params if p.grad is not None and not torch.isfinite(p.grad).all()]
    if bad:
        found.append(
            f"non-finite gradients of {len(bad)} parameters: {', '.join(bad[:6])}" + (" ..." if len(bad) > 6 else "")
        )
    return found


def divergence_report(epoch: int, step: int, loss, norm, batch: Batch, found: list[str]) -> str:
    what = "loss" if not is_finite(loss) else "gradient norm"
    head = (
        f"non-finite {what} at epoch {epoch + 1}, step {step + 1} (loss {float(loss.detach()):.4g}, "
        f"gradient norm {float(norm):.4g}); batch of {len(batch)} training samples {batch.index[:8].tolist()}"
        + (" ..." if len(batch) > 8 else "")
    )
    return head + "".join(f"\n  - {line}" for line in found or ["no site found non-finite when traced again"])
