"""Robustness to missing modalities and imputation quality."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from ._base import lower_is_better, metric_label, new_axes


def _value(entry: Mapping, metric: str) -> float:
    v = entry.get(metric, math.nan)
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _draw_subsets(ax: Axes, x: np.ndarray, counts: np.ndarray, values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """One point per subset, the mean over subsets per count, and the missing values as grey crosses on the x axis;
    returns the counts drawn (sorted, unique)."""
    ax.scatter(x[ok], values[ok], s=22, alpha=0.65, color="C0", edgecolor="none", label="one observed subset")
    levels = np.unique(counts)
    means = np.array([np.nanmean(values[counts == k]) if np.any(ok & (counts == k)) else np.nan for k in levels])
    if np.any(np.isfinite(means)):
        ax.plot(levels, means, "-o", color="C1", lw=2, ms=6, label="mean over subsets", zorder=3)
    if np.any(~ok):
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(
            x[~ok],
            np.full((~ok).sum(), 0.03),
            marker="x",
            color="0.45",
            transform=trans,
            clip_on=False,
            label=f"missing value (NaN), n = {(~ok).sum()}",
            zorder=4,
        )
    return levels


def _draw_baseline(ax: Axes, baseline: float | Mapping[str, float] | None, baseline_label: str) -> None:
    """A horizontal line for a number; one named marker per single view at x = 1 for a mapping."""
    if isinstance(baseline, Mapping):
        bnames = list(baseline)
        bvals = np.array([_value(baseline, k) for k in bnames])
        bx = 1 + np.linspace(-0.16, 0.16, len(bnames)) if len(bnames) > 1 else np.ones(1)
        ax.scatter(
            bx,
            bvals,
            marker="D",
            s=30,
            facecolor="none",
            edgecolor="C3",
            lw=1.3,
            label=f"{baseline_label} (per single view)",
            zorder=4,
        )
        for xi, yi, n in zip(bx, bvals, bnames):
            if np.isfinite(yi):
                ax.annotate(
                    n,
                    (xi, yi),
                    xytext=(-4, 0),
                    textcoords="offset points",
                    ha="right",
                    va="center",
                    fontsize=7,
                    color="C3",
                )
    elif baseline is not None and np.isfinite(float(baseline)):
        ax.axhline(float(baseline), color="C3", ls="--", lw=1.2, label=f"{baseline_label} = {float(baseline):.3g}")


def _mark_single_views(
    ax: Axes, x: np.ndarray, values: np.ndarray, single: np.ndarray, names: list[str], higher_is_better: bool
) -> None:
    """Annotate the best and the worst of the single-view subsets (indices ``single``, finite values)."""
    if len(single) >= 1:
        order = single[np.argsort(values[single])]
        best, worst = (order[-1], order[0]) if higher_is_better else (order[0], order[-1])
        marks = [(best, "best single view")] + ([(worst, "worst single view")] if worst != best else [])
        for i, what in marks:
            above = values[i] >= values[order[-1]]  # the larger value is labelled above, the smaller below
            ax.annotate(
                f"{what}: {names[i]} ({values[i]:.3g})",
                (x[i], values[i]),
                xytext=(14, 14 if above else -18),
                textcoords="offset points",
                fontsize=8,
                va="center",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.8),
                arrowprops=dict(arrowstyle="-", color="0.4", lw=0.8),
            )


def metric_by_observed(
    results: Sequence[Mapping],
    metric: str = "accuracy",
    baseline: float | Mapping[str, float] | None = None,
    *,
    baseline_label: str = "baseline",
    higher_is_better: bool | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Metric against the number of observed modalities, one point per observed subset.

    Args:
        results: one dict per subset of observed modalities, ``{"observed": ["fou", "kar"], metric: value, ...}``.
            A missing or NaN value is drawn as a grey cross on the x axis (counted as missing), not as a point.
        metric: the key to plot.
        baseline: a number (horizontal line, e.g. chance or a single-view model) or ``{modality: value}``
            (one marker per single view at x = 1, e.g. a unimodal model trained on that view alone).
        baseline_label: legend text of the baseline.
        higher_is_better: which single view is "best"; inferred from the metric's name when None.
        ax: axes to draw on; a new figure otherwise.
    """
    fig, ax = new_axes(ax, figsize=(7.0, 4.6))
    if higher_is_better is None:
        higher_is_better = not lower_is_better(metric)
    counts = np.array([len(r.get("observed", ())) for r in results], dtype=int)
    values = np.array([_value(r, metric) for r in results], dtype=float)
    names = ["+".join(map(str, r.get("observed", ()))) for r in results]
    rng = np.random.default_rng(0)
    x = counts + rng.uniform(-0.16, 0.16, size=len(counts))
    ok = np.isfinite(values)

    levels = _draw_subsets(ax, x, counts, values, ok)
    _draw_baseline(ax, baseline, baseline_label)
    _mark_single_views(ax, x, values, np.flatnonzero((counts == 1) & ok), names, higher_is_better)

    ax.set_xticks(levels if len(levels) else [1])
    ax.set_xlim((levels.min() if len(levels) else 1) - 0.6, (levels.max() if len(levels) else 1) + 0.6)
    ax.set_xlabel("observed modalities at test time (count)")
    ax.set_ylabel(metric_label(metric))
    arrow = "higher is better" if higher_is_better else "lower is better"
    subsets = f"{len(results)} subset" + ("" if len(results) == 1 else "s")
    ax.set_title(
        f"{metric.replace('_', ' ')} against the number of observed modalities ({subsets}; {arrow})", fontsize=10
    )
    ax.margins(y=0.12)  # room for the annotations
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def imputation_error(
    errors: Mapping[str, Mapping[str, float]],
    *,
    log_scale: bool | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Grouped bars of imputation MSE per modality: model vs baseline (e.g. training-mean imputation).

    Args:
        errors: ``{modality: {"mse": float, "baseline_mse": float, "corr": float}}``; ``baseline_mse`` and
            ``corr`` are optional. The correlation of imputed with held-out values is printed above the bar.
        log_scale: force a log y axis; by default used when the positive values span more than 30x.
        ax: axes to draw on; a new figure otherwise.
    """
    mods = list(errors)
    fig, ax = new_axes(ax, figsize=(max(6.0, 1.0 + 1.1 * len(mods)), 4.4))
    mse = np.array([_value(errors[m], "mse") for m in mods])
    base = np.array([_value(errors[m], "baseline_mse") for m in mods])
    corr = np.array([_value(errors[m], "corr") for m in mods])
    pos = np.concatenate([mse, base])
    pos = pos[np.isfinite(pos) & (pos > 0)]
    if log_scale is None:
        log_scale = len(pos) > 1 and pos.max() / pos.min() > 30
    xs = np.arange(len(mods))
    w = 0.38
    has_base = np.any(np.isfinite(base))
    off = w / 2 if has_base else 0.0
    bars = ax.bar(xs - off, np.nan_to_num(mse, nan=0.0), w, color="C0", label="model imputation")
    if has_base:
        ax.bar(xs + off, np.nan_to_num(base, nan=0.0), w, color="0.7", label="baseline (e.g. training mean)")
    for b, v, r in zip(bars, mse, corr):
        text = "n/a" if not np.isfinite(v) else (f"r = {r:.2f}" if np.isfinite(r) else "")
        if text:
            top = b.get_height() if np.isfinite(v) and b.get_height() > 0 else (pos.min() if len(pos) else 0)
            ax.annotate(
                text,
                (b.get_x() + b.get_width() / 2, top),
                xytext=(0, 2),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=8,
            )
    if log_scale and len(pos):
        ax.set_yscale("log")
        ax.set_ylim(pos.min() / 2, pos.max() * 3)
    elif len(pos):
        ax.set_ylim(0, pos.max() * 1.15)
    ax.set_xticks(xs, mods, rotation=30 if max((len(m) for m in mods), default=0) > 6 else 0)
    ax.set_xlabel("imputed modality")
    ax.set_ylabel("MSE (squared feature units)" + (", log scale" if log_scale else ""))
    ax.set_title(
        "Imputation MSE vs held-out values per modality (lower is better)\n"
        "r = correlation of imputed with held-out values",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def against_baseline(
    rows: Sequence[Mapping],
    metric: str,
    *,
    higher_is_better: bool | None = None,
    tolerance: float = 0.0,
    model_label: str = "model",
    baseline_label: str = "baseline",
    ax: Axes | None = None,
) -> Figure:
    """The model against a baseline fitted on each subset of observed modalities alone, one point per subset.

    The baseline's value is on x, the model's on y (with its standard deviation over seeds as an error bar), the
    points coloured by how many modalities the subset observes. The diagonal is parity; with ``tolerance`` the
    dashed line below it (above it for a metric where lower is better) is the baseline's value less that tolerance,
    and the subsets beyond it on the wrong side are named.

    Args:
        rows: one dict per subset, ``{"observed": [...], "model": value, "model_sd": value, "baseline": value}``
            (``model_sd`` optional); a subset whose model or baseline value is missing or NaN is left out and counted
            in the title.
        metric: what the values are (axis labels, and the direction when ``higher_is_better`` is None).
        tolerance: how far behind the baseline a subset may be and still count as level (e.g. 0.005 accuracy).
    """
    fig, ax = new_axes(ax, figsize=(6.6, 5.8))
    if higher_is_better is None:
        higher_is_better = not lower_is_better(metric)
    counts = np.array([len(r.get("observed", ())) for r in rows], dtype=int)
    x = np.array([_value(r, "baseline") for r in rows], dtype=float)
    y = np.array([_value(r, "model") for r in rows], dtype=float)
    sd = np.nan_to_num(np.array([_value(r, "model_sd") for r in rows], dtype=float), nan=0.0)
    names = [" + ".join(map(str, r.get("observed", ()))) for r in rows]
    ok = np.isfinite(x) & np.isfinite(y)
    sign = 1.0 if higher_is_better else -1.0
    behind = ok & (sign * (y - x) < -tolerance)
    if ok.any():
        lo, hi = min(x[ok].min(), (y - sd)[ok].min()), max(x[ok].max(), (y + sd)[ok].max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.05 * max(abs(hi), 1.0)
        lo, hi = lo - pad, hi + pad
        ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, label="parity", zorder=1)
        if tolerance > 0:
            edge = np.array([lo, hi]) - sign * tolerance
            ax.plot([lo, hi], edge, color="C3", ls="--", lw=1, label=f"{baseline_label} - {tolerance:g}", zorder=1)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
    for i, k in enumerate(np.unique(counts[ok])):
        sel = ok & (counts == k)
        ax.errorbar(
            x[sel],
            y[sel],
            yerr=sd[sel],
            fmt="o",
            ms=5,
            alpha=0.8,
            color=f"C{i}",
            elinewidth=0.8,
            label=f"{k} observed ({sel.sum()})",
            zorder=2,
        )
    # the subsets behind the baseline by more than the tolerance are named (red), and every subset where they are few
    for j in np.flatnonzero(behind | (ok & (ok.sum() <= 8)))[:16]:
        color = "C3" if behind[j] else "0.35"
        ax.annotate(names[j], (x[j], y[j]), xytext=(6, -10), textcoords="offset points", fontsize=7, color=color)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel(f"{baseline_label}, fitted on the subset alone: {metric_label(metric)}")
    ax.set_ylabel(f"{model_label}: {metric_label(metric)}")
    arrow = "higher is better" if higher_is_better else "lower is better"
    missing = f"; {(~ok).sum()} without a value" if (~ok).any() else ""
    within = f" by more than {tolerance:g}" if tolerance > 0 else ""
    ax.set_title(
        f"{metric.replace('_', ' ')} per observed subset ({arrow})\n"
        f"{behind.sum()} of {ok.sum()} subsets behind the {baseline_label}{within}{missing}",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right" if higher_is_better else "upper left")
    return fig


def nested_pairs(pairs: Sequence[Mapping], *, metric: str = "", named: int = 6, ax: Axes | None = None) -> Figure:
    """What adding modalities does: one point per nested pair S inside S', the gain of S' over S (positive: better)
    in units of its paired standard error, sorted. The dashed line at -1 marks "worse by more than one paired
    standard error"; the pairs below it are red and the ``named`` worst are named.

    Args:
        pairs: ``{"smaller": [...], "larger": [...], "gain": value, "se": value}`` per pair (``gain`` in the
            metric's units, signed so that positive is better). A pair with a zero standard error stands at 0
            when its gain is 0 and is drawn at the edge otherwise.
        metric: the metric the gains are in, for the title.
    """
    fig, ax = new_axes(ax, figsize=(7.0, 4.4))
    gain = np.array([_value(p, "gain") for p in pairs], dtype=float)
    se = np.array([_value(p, "se") for p in pairs], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, gain / se, np.where(gain == 0, 0.0, np.sign(gain) * np.inf))
    z = np.where(np.isnan(gain) | np.isnan(se), np.nan, z)
    ok = ~np.isnan(z)
    order = np.flatnonzero(ok)[np.argsort(z[ok], kind="stable")]
    shown = z[order]
    finite = shown[np.isfinite(shown)]
    edge = max(3.0, float(np.abs(finite).max()) * 1.05) if len(finite) else 3.0
    shown = np.clip(shown, -edge, edge)
    worse = shown < -1
    pos = np.arange(len(order))
    ax.scatter(pos[~worse], shown[~worse], s=10, color="C0", label="pair (S inside S')")
    ax.scatter(pos[worse], shown[worse], s=14, color="C3", label=f"worse by more than one se ({worse.sum()})")
    ax.axhline(-1, color="C3", ls="--", lw=1)
    ax.axhline(0, color="0.3", lw=0.8)
    lines = []
    for i in order[: min(named, int(worse.sum()))]:  # the worst pairs, listed in a box
        p = pairs[i]
        pair = " + ".join(map(str, p.get("smaller", ()))) + " -> " + " + ".join(map(str, p.get("larger", ())))
        lines.append(f"{pair}: {gain[i]:+.3g} (se {se[i]:.2g})")
    if lines:
        more = int(worse.sum()) - len(lines)
        ax.text(
            0.98,
            0.04,
            "worst:\n" + "\n".join(lines) + (f"\n... and {more} more" if more > 0 else ""),
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
            color="C3",
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="C3", alpha=0.9),
        )
    ax.set_xlabel("nested pairs, sorted by the gain of adding modalities")
    ax.set_ylabel("gain of S' over S / paired se")
    what = f" ({metric})" if metric else ""
    ax.set_title(
        f"Adding modalities{what}: {worse.sum()} of {len(order)} nested pairs (S inside S')\n"
        "worse by more than one paired standard error",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig
