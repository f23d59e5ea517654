"""Calls in processes of their own, stopped as one run is: what trains an ensemble's members at once.

The processes are started with ``spawn`` (no state of this one is inherited) and in a session of their own, so a
terminal's Ctrl-C reaches only this process; a SIGINT or SIGTERM here is passed on to them as one SIGTERM each (a
second as a second), where training stops at the next step boundary after a checkpoint as it does in this process
(:class:`~pyro_mfm.infer.faults.StopRequested`), and calls not yet started are not started. A process whose parent
has gone (``kill -9``) stops the same way, leaving checkpoints to resume from. Each call's printed lines are
prefixed with its name, as several run at once. A process that ends in the middle of a call (``kill -9``, the
out-of-memory killer) stops the others the same way and is reported as :class:`ProcessEnded`, naming its call.
"""

from __future__ import annotations

import ast
import inspect
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from .faults import StopRequested, defer_stop, stop_deferred

POLL_SECONDS = 0.1


class ProcessEnded(RuntimeError):
    """A process of :func:`run_in_processes` ended in the middle of a call (killed by a signal, e.g. by the
    out-of-memory killer); ``ended``: the calls' names, each with how its process ended."""

    def __init__(self, message: str, ended: list[str]):
        super().__init__(message)
        self.ended = ended


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


def _watch(parent: int, stops, abandon) -> None:
    """Send this process one SIGTERM per stop its parent asked for (``stops``), and one when the parent is gone;
    with the parent gone, or its pool broken (``abandon``: another process ended), end the process once no call is
    running (nothing would read its results)."""
    sent = 0
    while True:
        orphan = os.getppid() != parent
        if (orphan or abandon.value) and not _busy:
            os._exit(1)
        wanted = max(stops.value, 1) if orphan else stops.value
        for _ in range(sent, wanted):
            os.kill(os.getpid(), signal.SIGTERM)
        sent = max(sent, wanted)
        time.sleep(POLL_SECONDS)


# in a process of run_in_processes, what its parent passed at its start: the stops asked for, whether the pool is
# abandoned, which process runs which call and which calls have returned; and whether a call is running
_stops = _abandon = _pids = _returned = None
_busy = False


def _start(parent: int, stops, abandon, pids, returned) -> None:
    global _stops, _abandon, _pids, _returned
    _stops, _abandon, _pids, _returned = stops, abandon, pids, returned
    os.setsid()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, defer_stop)
    threading.Thread(target=_watch, args=(parent, stops, abandon), daemon=True).start()


def _call(fn, index: int, name: str, args: tuple):
    global _busy
    if _stops.value or _abandon.value or stop_deferred():  # asked to stop before this call began: it does not begin
        return None
    _pids[index] = os.getpid()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Prefixed(streams[0], f"{name}: "), Prefixed(streams[1], f"{name}: ")
    _busy = True
    try:
        return fn(*args)
    finally:
        _returned[index] = 1
        _busy = False
        sys.stdout, sys.stderr = streams


def unguarded_main_script() -> str | None:
    """The main script's path where this call comes from its top-level code outside ``if __name__ ==
    "__main__":`` (a spawned process starts by running that code again, as ``__mp_main__``, and would call this
    again); ``None`` where spawn would not run it (an interactive session or notebook, a package's ``__main__``)
    or the call is under the guard."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    path = getattr(main, "__file__", None)
    if main is None or path is None or (name is not None and (name == "__main__" or name.endswith(".__main__"))):
        return None
    line, frame = None, inspect.currentframe()
    while frame is not None:  # the outermost line of the main module's top-level code on the stack
        if frame.f_globals is vars(main) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return None
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            return None if _is_main_guard(node) else path
    return None


def _is_main_guard(node) -> bool:
    """Whether ``node`` is ``if __name__ == "__main__":`` (either side of the ``==``)."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)):
        return False
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    values = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and values == ["__main__"]


def _how(process) -> str:
    """How a process ended: the signal that killed it, or its exit code."""
    code = None if process is None else process.exitcode
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            pass
    return f"exit code {code}" if code is not None else "ended"


def run_in_processes(fn, calls: list[tuple[str, tuple]], processes: int) -> tuple[list, str]:
    """``fn(*args)`` for each ``(name, args)`` of ``calls``, at most ``processes`` at once, each in a process of its
    own (``fn`` and ``args`` picklable; they go through the pool's queue, not the processes' start, where a process
    that fails to start would leave a large start-up message unread and this one waiting on it): the results in
    order, ``None`` for calls that a stop kept from starting, and the name of the signal that asked for it (``""``
    if none).
    A SIGINT or SIGTERM to this process stops the running calls (passed on as one SIGTERM each); a second passes
    a second on and raises ``KeyboardInterrupt`` here. The first error raised in a call stops the others and is
    raised here once they have returned. A process that ends in the middle of a call stops the others as one
    signal does, and raises :class:`ProcessEnded` here, naming its call, once they have ended."""
    context = multiprocessing.get_context("spawn")
    # no locks: a process killed while holding one would leave it held for every other
    stops, abandon = context.Value("i", 0, lock=False), context.Value("i", 0, lock=False)
    pids, returned = context.Array("q", len(calls), lock=False), context.Array("b", len(calls), lock=False)
    with StopRequested() as stop:
        pool = ProcessPoolExecutor(
            processes,
            mp_context=context,
            initializer=_start,
            initargs=(os.getpid(), stops, abandon, pids, returned),
        )
        futures, pending, workers = [], set(), {}  # workers: the processes seen alive, by pid
        try:
            futures = [pool.submit(_call, fn, i, name, args) for i, (name, args) in enumerate(calls)]
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=POLL_SECONDS, return_when=FIRST_EXCEPTION)
                broken = any(isinstance(f.exception(), BrokenProcessPool) for f in done)
                alive = {p.pid: p for p in multiprocessing.active_children()}
                workers.update(alive)
                # the pool stops the other processes with a SIGTERM once it sees one end, but it watches the
                # processes it knew of when it last woke, which may not include that one: then they are stopped
                # from here, once; either way each ends once its call has returned (its result would not be read)
                gone = any(pids[i] and not returned[i] and pids[i] not in alive for i in range(len(calls)))
                if broken or gone:
                    if not broken:
                        stops.value = max(stops.value, 1)
                    abandon.value = 1
                    break
                if stop.signum is not None or any(f.exception() is not None for f in done):
                    stops.value = max(stops.value, 1)
            while abandon.value and any(p.pid in workers for p in multiprocessing.active_children()):
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # a second signal: passed on, and raised once the processes have returned
            stops.value = 2
            wait(pending)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    if abandon.value:
        ended = [
            f"{calls[i][0]} ({_how(workers.get(pids[i]))})" for i in range(len(calls)) if pids[i] and not returned[i]
        ]
        raise ProcessEnded(
            f"{', '.join(ended) or 'a call'}: its process ended in the middle of the call (killed by a signal, e.g. "
            "by the out-of-memory killer); the other calls were stopped",
            ended,
        )
    for f in futures:
        if f.exception() is not None:
            raise f.exception()
    return [f.result() for f in futures], stop.name
