"""``python -m pyro_mfm``: the same as the ``pyro-mfm`` command."""

import sys

from .cli import main

sys.exit(main())
