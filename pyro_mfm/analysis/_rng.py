"""Seeded sampling that leaves the caller's random-number state untouched (:func:`pyro_mfm.rng.seeded`)."""

from ..rng import seeded

__all__ = ["seeded"]
