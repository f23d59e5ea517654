"""Probabilistic quality: reliability diagrams, PIT histograms, predictive intervals.

The calibration numbers they show (:func:`calibration_bins`, :func:`expected_calibration_error`,
:func:`interval_coverage`) are :mod:`pyro_mfm.infer.metrics`'s, re-exported here."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..infer.metrics import (
    calibrated_bin_accuracy,
    calibrated_ece_draws,
    calibration_bins,
    expected_calibration_error,
    interval_coverage,
)
from ._base import as_float_array, new_axes

__all__ = [
    "binomial_interval",
    "calibration_bins",
    "expected_calibration_error",
    "interval_coverage",
    "interval_plot",
    "pit_histogram",
    "reliability_diagram",
]


def reliability_diagram(probs, labels, n_bins: int = 10, *, ax: Axes | None = None) -> Figure:
    """Accuracy against mean confidence per confidence bin, with the per-bin example count over each bar, the
    expected calibration error in the title, and the consistency bars of Broecker and Smith (2007): where 90% of a
    calibrated model's bin accuracies fall on this many samples (:func:`calibrated_bin_accuracy`), beside the ECE
    such a model would show. A point outside its bar is a gap that chance on this test set does not explain."""
    fig, ax = new_axes(ax, figsize=(5.6, 5.2))
    b = calibration_bins(probs, labels, n_bins)
    ece = expected_calibration_error(probs, labels, n_bins)
    left, width = b["edges"][:-1], 1.0 / n_bins
    nz = b["count"] > 0
    ax.bar(left[nz], b["accuracy"][nz], width, align="edge", color="C0", edgecolor="white", label="accuracy in bin")
    # Gap between confidence and accuracy, hatched.
    lo = np.minimum(b["accuracy"], b["confidence"])[nz]
    ax.bar(
        left[nz],
        np.abs(b["accuracy"] - b["confidence"])[nz],
        width,
        bottom=lo,
        align="edge",
        facecolor="none",
        edgecolor="C3",
        hatch="///",
        lw=0.6,
        label="gap to mean confidence",
    )
    ax.plot(b["confidence"][nz], b["accuracy"][nz], "o", color="C3", ms=4, label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "--", color="0.3", lw=1, label="perfect calibration")
    if nz.any():
        lo_c, hi_c = np.nanquantile(calibrated_bin_accuracy(probs, n_bins)[:, nz], [0.05, 0.95], axis=0)
        conf = b["confidence"][nz]
        ax.errorbar(
            conf,
            conf,
            yerr=[np.maximum(conf - lo_c, 0), np.maximum(hi_c - conf, 0)],
            fmt="none",
            ecolor="0.2",
            elinewidth=1.2,
            capsize=3,
            label="90% of a calibrated model's accuracies",
        )
    top = np.maximum(b["accuracy"], b["confidence"])[nz]
    for x0, c, a in zip(left[nz], b["count"][nz], top):
        ax.text(
            x0 + width / 2,
            min(a, 1.0) + 0.012,
            f"{int(c)}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="0.25",
            rotation=90 if n_bins > 12 else 0,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("confidence of predicted class (probability)")
    ax.set_ylabel("accuracy (fraction correct)")
    floor = float(np.mean(calibrated_ece_draws(probs, n_bins))) if nz.any() else math.nan
    ax.set_title(
        f"Reliability diagram: ECE = {ece:.3f} ({n_bins} bins, n = {int(b['count'].sum())})\n"
        f"a calibrated model at this n: ECE {floor:.3f}; numbers: examples per bin",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def binomial_interval(n: int, p: float, level: float = 0.95) -> tuple[int, int]:
    """Central interval of Binomial(n, p): the ``(1-level)/2`` and ``(1+level)/2`` quantiles
    (the smallest k whose CDF reaches each level)."""
    if n <= 0:
        return 0, 0
    k = np.arange(n + 1)
    lg = np.vectorize(math.lgamma)
    if p <= 0.0:
        return 0, 0
    if p >= 1.0:
        return n, n
    logpmf = lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0) + k * math.log(p) + (n - k) * math.log1p(-p)
    cdf = np.cumsum(np.exp(logpmf - logpmf.max()))
    cdf /= cdf[-1]
    a = (1.0 - level) / 2.0
    lo = int(np.searchsorted(cdf, a - 1e-12))
    hi = int(np.searchsorted(cdf, 1.0 - a - 1e-12))
    return lo, min(hi, n)


def pit_histogram(pit, n_bins: int = 10, *, ax: Axes | None = None) -> Figure:
    """Histogram of probability integral transform values with the band a uniform PIT would fall in.

    For a calibrated predictive distribution the PIT is Uniform(0, 1), so each bin count is
    Binomial(n, 1/n_bins); the shaded band is that distribution's central 95% interval (per bin).
    Non-finite values are dropped (and counted in the title).
    """
    fig, ax = new_axes(ax, figsize=(6.0, 4.2))
    u = as_float_array(pit, "pit").reshape(-1)
    bad = int((~np.isfinite(u)).sum())
    u = np.clip(u[np.isfinite(u)], 0.0, 1.0)
    n = len(u)
    counts, edges = np.histogram(u, bins=n_bins, range=(0.0, 1.0))
    lo, hi = binomial_interval(n, 1.0 / n_bins, 0.95)
    outside = (counts < lo) | (counts > hi)
    colors = np.where(outside, "C3", "C0")
    ax.bar(
        edges[:-1],
        counts,
        1.0 / n_bins,
        align="edge",
        color=colors,
        edgecolor="white",
        alpha=0.75,
        label="PIT count (red: outside band)",
    )
    ax.axhspan(lo, hi, color="C2", alpha=0.18, zorder=3, label=f"95% band if uniform, per bin [{lo}, {hi}]")
    for level in (lo, hi):
        ax.axhline(level, color="C2", ls="--", lw=1.0, zorder=3)
    ax.axhline(n / n_bins, color="C2", lw=1.4, zorder=3, label=f"uniform expectation ({n / n_bins:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(hi, counts.max() if n else 1) * 1.35 + 1)
    ax.set_xlabel("PIT value = predictive CDF at the held-out label (probability)")
    ax.set_ylabel("examples per bin (count)")
    extra = f"; {bad} non-finite dropped" if bad else ""
    ax.set_title(f"PIT histogram (n = {n}, {int(outside.sum())}/{n_bins} bins outside band{extra})", fontsize=10)
    ax.legend(fontsize=8, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return fig


def interval_plot(
    y_true, mean, lower, upper, max_points: int = 200, *, level: float | None = None, ax: Axes | None = None
) -> Figure:
    """Predictive intervals and held-out labels, examples sorted by predicted mean.

    Coverage (over all examples, not only those drawn) and mean width are in the title; with ``level`` the
    nominal coverage is shown too. At most ``max_points`` examples, evenly spaced in the sorted order, are drawn.
    """
    fig, ax = new_axes(ax, figsize=(7.5, 4.4))
    y, m, lo, hi = (
        as_float_array(a, n).reshape(-1)
        for a, n in ((y_true, "y_true"), (mean, "mean"), (lower, "lower"), (upper, "upper"))
    )
    if not (len(y) == len(m) == len(lo) == len(hi)):
        raise ValueError(f"lengths differ: y_true {len(y)}, mean {len(m)}, lower {len(lo)}, upper {len(hi)}")
    cov = interval_coverage(y, lo, hi)
    ok = np.isfinite(y) & np.isfinite(m) & np.isfinite(lo) & np.isfinite(hi)
    width = float(np.mean(hi[ok] - lo[ok])) if ok.any() else math.nan
    idx = np.flatnonzero(ok)
    idx = idx[np.argsort(m[idx], kind="stable")]
    if len(idx) > max_points:
        idx = idx[np.unique(np.linspace(0, len(idx) - 1, max_points).round().astype(int))]
    r = np.arange(len(idx))
    inside = (y[idx] >= lo[idx]) & (y[idx] <= hi[idx])
    ax.fill_between(r, lo[idx], hi[idx], step="mid", color="C0", alpha=0.25, label="predictive interval")
    ax.plot(r, m[idx], color="C0", lw=1.5, label="predictive mean")
    ax.scatter(r[inside], y[idx][inside], s=10, color="k", label="held-out label (inside)", zorder=3)
    ax.scatter(r[~inside], y[idx][~inside], s=16, color="C3", marker="x", label="held-out label (outside)", zorder=3)
    nominal = f" (nominal {level:.0%})" if level is not None else ""
    shown = f", {len(idx)} of {int(ok.sum())} shown" if len(idx) < ok.sum() else ""
    ax.set_title(f"Predictive intervals: coverage {cov:.1%}{nominal}, mean width {width:.3g}{shown}", fontsize=10)
    ax.set_xlabel("examples sorted by predicted mean (rank)")
    ax.set_ylabel("label (label units)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig
