"""Script form of `pyro-mfm evaluate` (same arguments; see `python inference/evaluate.py --help`)."""

import sys

from pyro_mfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
