"""Posterior analysis of a trained MFM: ArviZ conversion, calibration, factor contributions, baselines, the forms of
expert of an ensemble alone.

Everything here works through the model's public surface (the ``model``/``guide`` pair, its sample sites
``z_y``, ``z_a_<m>``, ``x_<m>_mean`` and ``label_distribution``), so it needs no knowledge of the networks inside.
"""

from .baselines import (
    against_linear,
    baseline_possible,
    filled_classifier,
    nested_gains,
    single_view_baselines,
    subset_baselines,
    with_missing,
)
from .calibration import coverage_curve, pit_values, prediction_sets
from .factors import (
    FactorContributions,
    conditional_generation,
    decoder_mean,
    factor_contributions,
    posterior_codes,
    variance_contributions,
)
from .forms import form_scores
from .inference_data import to_arviz
from .notebook import NotebookSetup, notebook_setup

__all__ = [
    "FactorContributions",
    "NotebookSetup",
    "against_linear",
    "baseline_possible",
    "conditional_generation",
    "coverage_curve",
    "decoder_mean",
    "factor_contributions",
    "filled_classifier",
    "form_scores",
    "nested_gains",
    "notebook_setup",
    "pit_values",
    "posterior_codes",
    "prediction_sets",
    "single_view_baselines",
    "subset_baselines",
    "to_arviz",
    "variance_contributions",
    "with_missing",
]
