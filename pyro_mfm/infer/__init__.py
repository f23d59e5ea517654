"""Inference: SVI training, posterior prediction and imputation, metrics, evaluation over observed subsets."""

from .checkpoint import CheckpointError, load_model
from .metrics import classification_metrics, regression_metrics, sentiment_metrics
from .objective import Objective
from .predict import Imputation, Prediction, impute, predict
from .train import TrainResult, fit

__all__ = [
    "CheckpointError",
    "Imputation",
    "Objective",
    "Prediction",
    "TrainResult",
    "classification_metrics",
    "fit",
    "impute",
    "load_model",
    "predict",
    "regression_metrics",
    "sentiment_metrics",
]
