"""Missingness made on purpose: modalities hidden completely at random, and a data set observed only where asked."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .dataset import MultimodalDataset


def hide_at_random(present: np.ndarray, rate: float, rng: np.random.Generator, min_observed: int = 1) -> np.ndarray:
    """``(N, M)`` presence with each True entry of ``present`` also hidden with probability ``rate`` (missing
    completely at random); a sample left with fewer than ``min_observed`` keeps that many of its present
    modalities, drawn at random (all of them if it has fewer)."""
    if not 0 <= rate <= 1:
        raise ValueError(f"rate {rate}: expected a value in [0, 1]")
    present = np.asarray(present, bool)
    kept = present & (rng.random(present.shape) >= rate)
    for i in np.flatnonzero(kept.sum(1) < np.minimum(min_observed, present.sum(1))):
        have = np.flatnonzero(present[i])
        kept[i, rng.choice(have, min(min_observed, len(have)), replace=False)] = True
    return kept


def with_present(ds: MultimodalDataset, present: Mapping[str, np.ndarray]) -> MultimodalDataset:
    """An in-memory copy of ``ds`` observing modality ``m`` only where ``present[m]`` (a subset of
    ``ds.present[m]``) is True; the hidden features are zeroed. Modalities not in ``present`` are kept as they are."""
    features, masks = {}, {}
    for m in ds.schema.names:
        x = np.asarray(ds.features[m])
        masks[m] = np.asarray(present[m], bool) if m in present else np.asarray(ds.present[m], bool)
        features[m] = (x * masks[m].reshape((-1,) + (1,) * (x.ndim - 1))).astype(x.dtype)
    return MultimodalDataset(
        ds.schema, features, masks, ds.steps, ds.labels, ds.label_present, ids=ds.ids, groups=ds.groups, split=ds.split
    )
