"""Progress output that suits where it goes: tqdm bars on a terminal, plain lines elsewhere.

A bar redraws itself with carriage returns, which a log file or a notebook cell keeps as thousands of partial
lines; when standard error is not a terminal, the bars are off and training prints one line per epoch instead.
"""

from __future__ import annotations

import sys


def bars_enabled(progress: bool, stream=None) -> bool:
    """Whether to draw tqdm bars: ``progress`` asked for, and ``stream`` (default: standard error) a terminal."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(progress and isatty is not None and isatty())
    except ValueError:  # a closed stream
        return False
