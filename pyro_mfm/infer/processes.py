"""Calls in processes of their own, stopped as one run is: what trains an ensemble's members at once.

The processes are started with ``spawn`` (no state of this one is inherited) and in a session of their own, so a
terminal's Ctrl-C reaches only this process; a SIGINT or SIGTERM here is passed on to them as one SIGTERM each (a
second as a second), where training stops at the next step boundary after a checkpoint as it does in this process
(:class:`~pyro_mfm.infer.faults.StopRequested`), and calls not yet started are not started. A process whose parent
has gone (``kill -9``) stops the same way, leaving checkpoints to resume from. Each call's printed lines are
prefixed with its name, as several run at once.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

from .faults import StopRequested, defer_stop, stop_deferred

POLL_SECONDS = 0.1


class Prefixed(io.TextIOBase):
    """A text stream that writes to ``stream`` with ``prefix`` at the start of every line (not a terminal, so
    progress goes out as lines, not bars)."""

    def __init__(self, stream, prefix: str):
        self.stream, self.prefix, self.line_start = stream, prefix, True

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        out = []
        for line in s.splitlines(keepends=True):
            out.append(self.prefix + line if self.line_start else line)
            self.line_start = line.endswith(("\n", "\r"))
        self.stream.write("".join(out))
        self.stream.flush()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def _watch(parent: int, stops) -> None:
    """Send this process one SIGTERM per stop its parent asked for (``stops``), and one when the parent is gone;
    with the parent gone, end the process once no call is running (nothing would read its results)."""
    sent = 0
    while True:
        orphan = os.getppid() != parent
        if orphan and not _busy:
            os._exit(1)
        wanted = max(stops.value, 1) if orphan else stops.value
        for _ in range(sent, wanted):
            os.kill(os.getpid(), signal.SIGTERM)
        sent = max(sent, wanted)
        time.sleep(POLL_SECONDS)


_stops = None  # in a process of run_in_processes: the stops its parent asked for (shared, passed at its start)
_busy = False  # ... and whether a call is running in it


def _start(parent: int, stops) -> None:
    global _stops
    _stops = stops
    os.setsid()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, defer_stop)
    threading.Thread(target=_watch, args=(parent, stops), daemon=True).start()


def _call(fn, name: str, args: tuple):
    global _busy
    if _stops.value or stop_deferred():  # asked to stop before this call began: it does not begin
        return None
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Prefixed(streams[0], f"{name}: "), Prefixed(streams[1], f"{name}: ")
    _busy = True
    try:
        return fn(*args)
    finally:
        _busy = False
        sys.stdout, sys.stderr = streams


def run_in_processes(fn, calls: list[tuple[str, tuple]], processes: int) -> tuple[list, str]:
    """``fn(*args)`` for each ``(name, args)`` of ``calls``, at most ``processes`` at once, each in a process of its
    own (``fn`` and ``args`` picklable): the results in order, ``None`` for calls that a stop kept from starting,
    and the name of the signal that asked for it (``""`` if none).
    A SIGINT or SIGTERM to this process stops the running calls (passed on as one SIGTERM each); a second passes
    a second on and raises ``KeyboardInterrupt`` here. The first error raised in a call stops the others and is
    raised here once they have returned."""
    context = multiprocessing.get_context("spawn")
    stops = context.Value("i", 0)
    with StopRequested() as stop:
        with ProcessPoolExecutor(
            processes, mp_context=context, initializer=_start, initargs=(os.getpid(), stops)
        ) as pool:
            futures = [pool.submit(_call, fn, name, args) for name, args in calls]
            pending = set(futures)
            try:
                while pending:
                    done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
                    if stop.signum is not None or any(f.exception() is not None for f in done):
                        stops.value = max(stops.value, 1)
            except KeyboardInterrupt:  # a second signal: passed on, and raised once the processes have returned
                stops.value = 2
                wait(pending)
                raise
    for f in futures:
        if f.exception() is not None:
            raise f.exception()
    return [f.result() for f in futures], stop.name
