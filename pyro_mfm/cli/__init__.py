"""The ``pyro-mfm`` command line: one subcommand per module of this package.

Each module listed in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the parser's default. Adding a command is adding its module name here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..config import ConfigError
from ..data.schema import DataError
from ..infer.checkpoint import CheckpointError
from ..infer.processes import ProcessEnded
from ..outputs import OutputError

COMMANDS = (
    "data",
    "train",
    "evaluate",
    "impute",
    "run",
    "predict",
    "tune",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-mfm", description="The Multimodal Factorization Model (Tsai et al., ICLR 2019) in Pyro."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (2 for bad input or an output that cannot be written, 1 for an
    ensemble member's process killed in training, each printed as one line on stderr).

    Output closed early by the reader (``pyro-mfm ... | head``) ends the command quietly, as other command-line
    tools do, with the status 128 + SIGPIPE (141).
    """
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe raises here, inside the handler, not at the interpreter's exit
        return status
    except (DataError, ConfigError, CheckpointError, OutputError) as e:
        print(f"pyro-mfm: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ProcessEnded as e:  # not bad input: a process of the command was killed (exit status 1)
        print(f"pyro-mfm: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        _silence_stdout()
        return 141
    except OSError as e:  # a file system error not raised through the checks above: still one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"pyro-mfm: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split("\n"))


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not raise again on the closed pipe
    (the recipe of the Python documentation, signal module, "Note on SIGPIPE")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (captured)
        pass
