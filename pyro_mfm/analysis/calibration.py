"""Calibration of posterior predictions: probability integral transform (PIT) and coverage of predictive sets.

A predictive distribution F is calibrated when the held-out label behaves like a draw from it. Then the PIT
u = F(y) is Uniform(0, 1) (randomised where y is discrete), and a predictive set of mass a contains y with
probability a. Both functions take a :class:`pyro_mfm.infer.Prediction` and the held-out labels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_REGRESSION = ("normal", "laplace")


def _present(y: np.ndarray, present) -> np.ndarray:
    return np.ones(len(y), bool) if present is None else np.asarray(present, bool)


def pit_values(prediction, y, present=None, seed: int = 0) -> np.ndarray:
    """PIT of the held-out labels ``y`` under ``prediction``; NaN where ``present`` is False.

    * Regression (from the predictive draws ``prediction.samples``, ``(S, N, k)``): u = (r + V (1 + t)) / (S + 1)
      with r the number of draws below y, t the number equal to y and V ~ Uniform(0, 1). If y and the S draws are
      exchangeable (calibration), the rank r is uniform on {0..S}, so u is exactly Uniform(0, 1); the plain
      fraction of draws <= y (= r / S) is that up to a grid of step 1/S. Returns ``(N, k)``.
    * Categorical (from the class probabilities ``prediction.point``): the randomised PIT on the CDF of the classes
      in index order, u = F(y - 1) + V p(y), Uniform(0, 1) under calibration whatever the class order.
      Returns ``(N,)``.
    * Bernoulli (multilabel): the same per label, with p(1) = ``prediction.point``. Returns ``(N, k)``.
    """
    y = np.asarray(y)
    keep = _present(y, present)
    rng = np.random.default_rng(seed)
    if prediction.kind in _REGRESSION:
        draws = np.asarray(prediction.samples, float)
        if draws.ndim < 2 or draws.shape[1] != len(y):
            raise ValueError(
                f"pit_values: predictive draws of shape {draws.shape} (kept with keep_samples=True) do "
                f"not match {len(y)} labels"
            )
        yy = y.reshape((1,) + draws.shape[1:]).astype(float)
        below, ties = (draws < yy).sum(0), (draws == yy).sum(0)
        u = (below + rng.uniform(size=below.shape) * (1 + ties)) / (draws.shape[0] + 1)
    elif prediction.kind == "categorical":
        p = np.asarray(prediction.point, float)
        p = p / p.sum(-1, keepdims=True)
        cls = np.where(keep, y, 0).astype(int)
        below = np.cumsum(p, -1)[np.arange(len(cls)), cls] - p[np.arange(len(cls)), cls]
        u = below + rng.uniform(size=len(cls)) * p[np.arange(len(cls)), cls]
    elif prediction.kind == "bernoulli":
        p1 = np.asarray(prediction.point, float)
        v = rng.uniform(size=p1.shape)
        u = np.where(y.astype(bool), (1 - p1) + v * p1, v * (1 - p1))
    else:
        raise ValueError(f"pit_values: unknown label likelihood {prediction.kind!r}")
    u = np.clip(u, 0.0, 1.0)
    mask = keep.reshape((-1,) + (1,) * (u.ndim - 1))
    return np.where(mask, u, np.nan)


def prediction_sets(probs, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of classes whose probability reaches ``level``, for each row of ``probs`` ``(N, K)``.

    Returns the membership mask ``(N, K)`` and each set's probability mass ``(N,)`` (>= level: classes are
    discrete, so a calibrated model covers the label with probability equal to the mean mass, not ``level``).
    """
    p = np.asarray(probs, float)
    order = np.argsort(-p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, -1)
    cum = np.cumsum(sorted_p, -1)
    size = np.minimum((cum < level - 1e-12).sum(-1) + 1, p.shape[-1])
    in_sorted = np.arange(p.shape[-1])[None, :] < size[:, None]
    member = np.zeros_like(in_sorted)
    np.put_along_axis(member, order, in_sorted, -1)
    return member, cum[np.arange(len(p)), size - 1]


def coverage_curve(prediction, y, levels: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95), present=None) -> dict:
    """Coverage of predictive sets of increasing nominal mass by the held-out labels.

    Regression: central intervals from the predictive draws (every output counts as one check). Categorical: the
    smallest class sets of :func:`prediction_sets`. Returns ``levels``, ``coverage`` (fraction of labels inside),
    ``expected`` (coverage a calibrated model would reach: the level, or the mean mass of the class sets),
    ``size`` (mean interval width, or mean number of classes) and ``n`` (checks per level).
    """
    y = np.asarray(y)
    keep = _present(y, present)
    levels = np.asarray(levels, float)
    cov, exp, size = [], [], []
    if prediction.kind in _REGRESSION:
        draws = np.asarray(prediction.samples, float)[:, keep]
        yy = y[keep].reshape(draws.shape[1:]).astype(float)
        for a in levels:
            lo, hi = np.quantile(draws, [(1 - a) / 2, (1 + a) / 2], axis=0)
            cov.append(np.mean((yy >= lo) & (yy <= hi)))
            exp.append(a)
            size.append(np.mean(hi - lo))
        n = int(yy.size)
    elif prediction.kind == "categorical":
        p, cls = np.asarray(prediction.point, float)[keep], y[keep].astype(int)
        for a in levels:
            member, mass = prediction_sets(p, a)
            cov.append(np.mean(member[np.arange(len(cls)), cls]))
            exp.append(mass.mean())
            size.append(member.sum(-1).mean())
        n = int(len(cls))
    else:
        raise ValueError(f"coverage_curve: not defined for a {prediction.kind!r} label")
    return {"levels": levels, "coverage": np.array(cov), "expected": np.array(exp), "size": np.array(size), "n": n}
