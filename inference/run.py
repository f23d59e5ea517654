"""Script form of `pyro-mfm run`, the main job: train, evaluate every observed subset, impute, report.

python inference/run.py models/uci_mfeat.toml --out reports/uci_mfeat
"""

import sys

from pyro_mfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
