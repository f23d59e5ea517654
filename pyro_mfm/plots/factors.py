"""What the factors learned: shared versus modality-specific contributions, generated images, rate sweeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._base import as_float_array, lower_is_better, metric_label, new_axes


def factor_fractions(
    fractions: Mapping[str, Sequence[float]], overall: Mapping[str, float] | None = None, *, ax: Axes | None = None
) -> Figure:
    """Per modality, the fraction of each feature's reconstruction variance driven by the shared factor z_y.

    Args:
        fractions: ``{modality: per-feature shared fractions}`` (values in [0, 1]; NaN ignored), drawn as dots.
        overall: ``{modality: fraction over all features}``, drawn as a bar.
    """
    mods = list(fractions)
    fig, ax = new_axes(ax, figsize=(max(5.5, 1.0 + 0.9 * len(mods)), 4.4))
    xs = np.arange(len(mods))
    if overall is not None:
        ax.bar(xs, [overall.get(m, np.nan) for m in mods], 0.6, color="C0", alpha=0.35, label="over all features")
    rng = np.random.default_rng(0)
    for x, m in zip(xs, mods):
        f = as_float_array(fractions[m], m).reshape(-1)
        f = f[np.isfinite(f)]
        ax.scatter(
            x + rng.uniform(-0.2, 0.2, len(f)), f, s=6, color="C0", alpha=0.6, label="one feature" if x == 0 else None
        )
    ax.axhline(0.5, color="0.4", ls=":", lw=1)
    ax.set_xticks(xs, mods)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("modality")
    ax.set_ylabel("shared fraction = Var from z_y / (Var from z_y + Var from z_a,m)")
    ax.set_title("How much of each reconstruction the shared factor drives\n(1: only z_y, 0: only z_a,m)", fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    return fig


def contributions_over_time(shared_fraction, truth=None, per_feature=None, *, ax: Axes | None = None) -> Figure:
    """Shared fraction of a sequence modality's reconstruction at each step.

    Args:
        shared_fraction: ``(T,)`` fraction per step (features pooled); truth: ``(T,)`` the true fraction where known;
        per_feature: ``(T, d)`` fractions per feature, drawn thin.
    """
    fig, ax = new_axes(ax, figsize=(6.8, 4.2))
    f = as_float_array(shared_fraction, "shared_fraction", 1)
    t = np.arange(len(f))
    if per_feature is not None:
        pf = as_float_array(per_feature, "per_feature", 2)
        for j in range(pf.shape[1]):
            ax.plot(t, pf[:, j], color="C0", lw=0.6, alpha=0.35, label="one feature (model)" if j == 0 else None)
    ax.plot(t, f, "o-", color="C0", lw=2, label="model, features pooled")
    if truth is not None:
        ax.plot(t, as_float_array(truth, "truth", 1), "s--", color="C3", lw=1.5, label="truth (generator)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("step t (position in the sequence)")
    ax.set_ylabel("shared fraction of reconstruction variance")
    ax.set_title("Shared factor's share of the reconstruction over time", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return fig


def image_grid(
    images,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    *,
    title: str | None = None,
    cmap: str = "gray_r",
    same_scale: bool = True,
) -> Figure:
    """A grid of small images ``(R, C, H, W)`` (e.g. generated digits: rows one z_y, columns one z_a,m)."""
    img = as_float_array(images, "images", 4)
    r, c = img.shape[:2]
    fig = Figure(figsize=(1.0 + 0.9 * c, 0.6 + 0.9 * r), layout="constrained")
    axes = fig.subplots(r, c, squeeze=False)
    vmin, vmax = (np.nanmin(img), np.nanmax(img)) if same_scale else (None, None)
    for i in range(r):
        for j in range(c):
            ax = axes[i, j]
            ax.imshow(img[i, j], cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], fontsize=8)
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def metric_vs_rate(
    rates,
    values: Mapping[str, Sequence[float]],
    metric: str = "relative MSE",
    *,
    xlabel: str = "missing rate in training (fraction of modalities hidden)",
    reference: float | None = None,
    reference_label: str = "reference",
    title: str | None = None,
    ax: Axes | None = None,
) -> Figure:
    """One line per series (e.g. per modality) of a metric against a rate, with an optional reference line.
    ``title`` replaces the default "<metric> against the rate" (for an x axis that is not a rate)."""
    fig, ax = new_axes(ax, figsize=(6.6, 4.4))
    x = as_float_array(rates, "rates", 1)
    for i, (name, v) in enumerate(values.items()):
        ax.plot(x, as_float_array(v, name, 1), "o-", color=f"C{i % 10}", label=name)
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1.2, label=reference_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_label(metric))
    arrow = "lower is better" if lower_is_better(metric.replace(" ", "_")) else "higher is better"
    ax.set_title(f"{title or f'{metric} against the rate'} ({arrow})", fontsize=10)
    ax.legend(fontsize=8, loc="best", ncols=2)
    ax.grid(alpha=0.3)
    return fig
