"""Shared helpers: figure creation without global pyplot state, atomic PNG writing, metric naming."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..metric_directions import lower_is_better  # noqa: F401  (the plots import it here)
from ..outputs import atomic_write

# Units shown on axis labels.
_METRIC_UNITS = {
    "accuracy": "fraction correct",
    "acc": "fraction correct",
    "acc_2": "fraction correct",
    "acc_5": "fraction correct",
    "acc_7": "fraction correct",
    "f1": "0-1",
    "macro_f1": "0-1",
    "weighted_f1": "0-1",
    "corr": "Pearson r",
    "mae": "label units",
    "mse": "squared label units",
    "rmse": "label units",
    "nll": "nats per example",
    "nlpd": "nats per example",
    "ece": "probability",
    "coverage": "fraction inside interval",
    "loss": "nats",
}


def new_axes(ax: Axes | None = None, figsize: tuple[float, float] = (6.4, 4.4)) -> tuple[Figure, Axes]:
    """Return ``(figure, axes)``: the given axes and its figure, or a new standalone figure.

    New figures are plain :class:`matplotlib.figure.Figure` objects (not registered with pyplot), so nothing
    depends on the interactive backend and nothing leaks when a figure is not closed.
    """
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def metric_label(metric: str) -> str:
    """Axis label for a metric: its name and, where known, its unit."""
    name = metric.lower()
    if name.startswith("valid_"):
        name = name[len("valid_") :]
    unit = _METRIC_UNITS.get(name)
    if unit is None:
        for key, u in _METRIC_UNITS.items():
            if name.endswith("_" + key) or name.startswith(key + "_"):
                unit = u
                break
    pretty = metric.replace("_", " ")
    return f"{pretty} ({unit})" if unit else pretty


def _figure_of(fig_or_ax) -> Figure:
    if isinstance(fig_or_ax, Axes):
        return fig_or_ax.figure
    if isinstance(fig_or_ax, Figure):
        return fig_or_ax
    fig = getattr(fig_or_ax, "figure", None)  # e.g. a SubFigure
    if isinstance(fig, Figure):
        return fig
    raise TypeError(f"save: expected a matplotlib Figure or Axes, got {type(fig_or_ax).__name__}")


def close(fig: Figure) -> None:
    """Release a figure: unregister it from pyplot if pyplot manages it (standalone figures need nothing)."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close(fig)


def save(fig, path, dpi: int = 120) -> Path:
    """Write ``fig`` (a Figure or Axes) as a PNG at ``path`` atomically, then close the figure.

    The image is written to a temporary file in the target directory and moved into place with
    :func:`os.replace`, so ``path`` is either the previous file or the complete new one, never a partial write;
    on failure the temporary file is removed (a failed write is an :class:`~pyro_mfm.outputs.OutputError` naming
    the path). Parent directories are created; the file gets the permissions the umask gives a new file.
    Returns the path written.
    """
    figure = _figure_of(fig)
    path = Path(path)
    try:
        atomic_write(path, lambda fh: figure.savefig(fh, format="png", dpi=dpi))
    finally:
        close(figure)
    return path


def as_float_array(x, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` as a float array, checking its number of dimensions."""
    arr = np.asarray(x, dtype=float)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return arr
