"""Script form of `pyro-mfm train` (same arguments; see `python inference/train.py --help`)."""

import sys

from pyro_mfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
