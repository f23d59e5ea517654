"""Which way each metric is better: the one table that model selection, hyperparameter search and plots read.

It sits below every layer (configuration, inference, plots) so that each can read it without importing the others.
"""

from __future__ import annotations

# The validation metrics model selection knows (``train.select_metric``): True when larger is better.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "macro_f1": True,
    "weighted_f1": True,
    "corr": True,
    "acc2_has0": True,
    "acc2_non0": True,
    "f1_has0": True,
    "f1_non0": True,
    "acc5": True,
    "acc7": True,
    "mae": False,
    "mse": False,
    "nlpd": False,
    "ece": False,
    "loss": False,
}

# Names of smaller-is-better metrics, recognised also as a prefix or suffix of a longer name (``valid_mae``,
# ``elbo_loss``): those of the table, and others that plots meet.
LOWER_IS_BETTER = tuple(k for k, higher in HIGHER_IS_BETTER.items() if not higher) + (
    "rmse",
    "nll",
    "error",
    "err",
    "elbo_loss",
    "brier",
)


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of the metric named ``metric`` are better (by its name; unknown names: larger)."""
    name = metric.lower()
    if name.startswith("valid_"):
        name = name[len("valid_") :]
    return any(name == k or name.endswith("_" + k) or name.startswith(k + "_") for k in LOWER_IS_BETTER)


def resolve_select_metric(name: str, discrete: bool | None) -> str:
    """``train.select_metric`` as training and the hyperparameter search read it: ``name`` itself, or for
    ``"auto"`` accuracy for a discrete label (``discrete``), MAE for a continuous one and the loss without a label
    (``discrete = None``)."""
    if name != "auto":
        if name not in HIGHER_IS_BETTER:
            raise ValueError(f"train.select_metric = {name!r}: expected 'auto' or one of {sorted(HIGHER_IS_BETTER)}")
        return name
    if discrete is None:
        return "loss"
    return "accuracy" if discrete else "mae"
