"""Rebuild the embedded default data set from the UCI "Multiple Features" CSVs.

    python inference/convert_uci_mfeat.py [CSV_FOLDER] [OUT]

Defaults: ``../shared/datasets/uci_mfeat`` (relative to the repository) and
``pyro_mfm/data/embedded/uci_mfeat.h5``. The same as
``pyro-mfm data convert --from uci-mfeat CSV_FOLDER --out OUT --overwrite``.
"""

import sys
from pathlib import Path

from pyro_mfm.cli import main

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    src = sys.argv[1] if len(sys.argv) > 1 else str(ROOT.parent / "shared" / "datasets" / "uci_mfeat")
    out = sys.argv[2] if len(sys.argv) > 2 else str(ROOT / "pyro_mfm" / "data" / "embedded" / "uci_mfeat.h5")
    sys.exit(main(["data", "convert", "--from", "uci-mfeat", src, "--out", out, "--overwrite"]))
