"""Script form of `pyro-mfm impute` (same arguments; see `python inference/impute.py --help`)."""

import sys

from pyro_mfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["impute", *sys.argv[1:]]))
