"""The ``pyro-mfm`` command line: one subcommand per module of this package.

Each module listed in :data:`COMMANDS` exposes ``register(subparsers)``, which adds its parser and sets
``func(args) -> int`` as the parser's default. Adding a command is adding its module name here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..config import ConfigError
from ..data.schema import DataError
from ..infer.checkpoint import CheckpointError

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
    """Run the command line; returns the exit status (2 for bad input, printed as one line on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (DataError, ConfigError, CheckpointError) as e:
        print(f"pyro-mfm: error: {e}", file=sys.stderr)
        return 2
