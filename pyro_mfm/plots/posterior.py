"""Posterior summaries: coverage of predictive sets against their nominal mass, posterior ellipses of z_y."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse

from ._base import as_float_array, new_axes
from .calibration import binomial_interval


def coverage_curve(
    levels,
    coverage,
    expected=None,
    n: int | None = None,
    size=None,
    *,
    size_label: str = "size",
    ax: Axes | None = None,
) -> Figure:
    """Observed coverage of predictive sets (intervals or class sets) against their nominal mass.

    Args:
        levels: nominal masses; coverage: fraction of held-out labels inside each set.
        expected: coverage a calibrated model would reach (default: the levels themselves); with ``n``, the
            95% binomial band around it is shaded (where a calibrated model's coverage falls).
        size: mean set size per level (interval width or number of classes), printed beside each point.
    """
    fig, ax = new_axes(ax, figsize=(5.6, 5.0))
    lv, cov = as_float_array(levels, "levels", 1), as_float_array(coverage, "coverage", 1)
    exp = lv if expected is None else as_float_array(expected, "expected", 1)
    if n:
        band = np.array([binomial_interval(int(n), float(e), 0.95) for e in exp]) / n
        ax.fill_between(lv, band[:, 0], band[:, 1], color="C2", alpha=0.2, label=f"95% band if calibrated (n = {n})")
    ax.plot([0, 1], [0, 1], "--", color="0.4", lw=1, label="coverage = nominal mass")
    if expected is not None:
        ax.plot(lv, exp, "-", color="C2", lw=1.2, label="expected if calibrated (mean set mass)")
    ax.plot(lv, cov, "o-", color="C0", label="observed coverage")
    if size is not None:
        for x, y, s in zip(lv, cov, as_float_array(size, "size", 1)):
            ax.annotate(f"{s:.2g}", (x, y), xytext=(4, -10), textcoords="offset points", fontsize=7, color="C0")
    lo = min(lv.min(), cov.min()) - 0.05
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(lo, 1.02)
    ax.set_xlabel("nominal mass of the predictive set (probability)")
    ax.set_ylabel("coverage (fraction of held-out labels inside)")
    extra = f"; numbers: mean {size_label}" if size is not None else ""
    ax.set_title(f"Coverage of predictive sets{extra}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return fig


def _basis(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre, the two leading principal directions ``(2, k)`` and their share of variance."""
    centre = points.mean(0)
    _, s, vt = np.linalg.svd(points - centre, full_matrices=False)
    var = s**2 / max(np.sum(s**2), 1e-300)
    return centre, vt[:2], var[:2]


def posterior_ellipses(
    means, covariances, names: Sequence[str], background=None, background_labels=None, *, ax: Axes | None = None
) -> Figure:
    """Posterior means and 2-standard-deviation ellipses of z_y, projected on a 2-D plane.

    Args:
        means: ``(n, k)`` posterior means; covariances: ``(n, k, k)``; names: legend text of each (e.g. the sample
            and the modalities it was conditioned on).
        background: ``(N, k)`` posterior means of many samples, drawn as grey/coloured dots; the plane is their two
            principal directions (otherwise those of ``means``; ``k == 2`` is drawn as is).
        background_labels: ``(N,)`` class labels colouring the background.
    """
    fig, ax = new_axes(ax, figsize=(6.6, 5.6))
    mu, cov = as_float_array(means, "means", 2), as_float_array(covariances, "covariances", 3)
    ref = mu if background is None else as_float_array(background, "background", 2)
    if mu.shape[1] == 2:
        centre, basis, share = np.zeros(2), np.eye(2), None
    else:
        centre, basis, share = _basis(ref)
    if background is not None:
        xy = (ref - centre) @ basis.T
        if background_labels is not None:
            lab = np.asarray(background_labels)
            for c in np.unique(lab):
                ax.scatter(*xy[lab == c].T, s=6, alpha=0.35, label=f"class {c}" if len(np.unique(lab)) <= 12 else None)
        else:
            ax.scatter(*xy.T, s=6, alpha=0.3, color="0.6", label="posterior means (all samples)")
    for i, (m, c) in enumerate(zip(mu, cov)):
        p = (m - centre) @ basis.T
        c2 = basis @ c @ basis.T
        vals, vecs = np.linalg.eigh(c2)
        angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
        w, h = 4 * np.sqrt(np.maximum(vals[::-1], 0))
        color = f"C{i % 10}"
        ax.add_patch(Ellipse(p, w, h, angle=angle, facecolor="none", edgecolor="k", lw=2.2))
        ax.add_patch(Ellipse(p, w, h, angle=angle, facecolor="none", edgecolor=color, lw=1.4))
        ax.plot(*p, marker="*", ms=12, color=color, mec="k", mew=0.6, label=names[i], ls="none")
    if share is None:
        ax.set_xlabel("z_y[0] (latent units)")
        ax.set_ylabel("z_y[1] (latent units)")
    else:
        ax.set_xlabel(f"principal direction 1 of z_y ({share[0]:.0%} of variance)")
        ax.set_ylabel(f"principal direction 2 of z_y ({share[1]:.0%} of variance)")
    ax.set_title("Posterior of z_y: means (stars) and 2-sd ellipses, projected", fontsize=10)
    ax.legend(fontsize=7, loc="best", markerscale=1.0, ncols=2)
    ax.autoscale_view()
    ax.grid(alpha=0.3)
    return fig
