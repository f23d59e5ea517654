"""Plots for reports and notebooks.

Every function takes plain numpy arrays, lists and dicts (never model objects), draws on the ``ax`` it is
given or on a new standalone :class:`matplotlib.figure.Figure` (no pyplot state, works headless), and returns
the figure. :func:`save` writes a PNG atomically and closes the figure.
"""

from ._base import save
from .calibration import (
    binomial_interval,
    calibration_bins,
    expected_calibration_error,
    interval_coverage,
    interval_plot,
    pit_histogram,
    reliability_diagram,
)
from .diagnostics import confusion_matrix, latent_projection, sequence_imputation, training_curves
from .factors import contributions_over_time, factor_fractions, image_grid, metric_vs_rate
from .posterior import coverage_curve, posterior_ellipses
from .robustness import against_baseline, imputation_error, metric_by_observed, nested_pairs

__all__ = [
    "against_baseline",
    "binomial_interval",
    "calibration_bins",
    "confusion_matrix",
    "contributions_over_time",
    "coverage_curve",
    "expected_calibration_error",
    "factor_fractions",
    "image_grid",
    "imputation_error",
    "interval_coverage",
    "interval_plot",
    "latent_projection",
    "metric_by_observed",
    "metric_vs_rate",
    "nested_pairs",
    "pit_histogram",
    "posterior_ellipses",
    "reliability_diagram",
    "save",
    "sequence_imputation",
    "training_curves",
]
