"""Latent space, training curves, confusion matrix and sequence imputation."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ._base import as_float_array, lower_is_better, metric_label, new_axes

_MAX_LEGEND_CLASSES = 20


def _is_categorical(labels: np.ndarray, class_names) -> bool:
    if class_names is not None:
        return True
    if labels.dtype.kind in "iubUSO":
        return True
    finite = labels[np.isfinite(labels)] if labels.dtype.kind == "f" else labels
    return len(finite) > 0 and np.all(finite == np.round(finite)) and len(np.unique(finite)) <= 20


def _finite_subset(z, labels, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``z`` (as ``(N, d)``) and ``labels`` with finite codes, at most ``max_points`` of them (a fixed
    random subset)."""
    z = as_float_array(z, "z")
    if z.ndim == 1:
        z = z[:, None]
    lab = np.asarray(labels).reshape(-1)
    if z.shape[0] != lab.shape[0]:
        raise ValueError(f"z has {z.shape[0]} rows but labels has {lab.shape[0]}")
    keep = np.all(np.isfinite(z), axis=1)
    idx = np.flatnonzero(keep)
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(0).choice(idx, max_points, replace=False))
    return z[idx], lab[idx]


def _project_2d(z: np.ndarray, method: str) -> tuple[np.ndarray, str, str, str]:
    """Two coordinates per row of ``z``, with the axis labels and the name of the projection."""
    n, d = z.shape
    xlabel, ylabel, how = "z_y[0] (latent units)", "z_y[1] (latent units)", "raw coordinates"
    if d == 1:
        xy = np.column_stack([z[:, 0], np.random.default_rng(0).uniform(-1, 1, n)])
        ylabel, how = "jitter (no meaning)", "1-D latent"
    elif d == 2:
        xy = z
    elif method == "pca" or n < 5:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=0).fit(z)
        xy = pca.transform(z)
        ev = pca.explained_variance_ratio_
        xlabel, ylabel = f"PC 1 ({ev[0]:.0%} of variance)", f"PC 2 ({ev[1]:.0%} of variance)"
        how = "PCA"
    else:
        from sklearn.manifold import TSNE

        xy = TSNE(
            n_components=2,
            perplexity=min(30.0, (n - 1) / 3.0),
            init="pca",
            random_state=0,
            method="exact" if n <= 1000 else "barnes_hut",
        ).fit_transform(z)  # exact is faster when small
        xlabel, ylabel, how = "t-SNE 1 (arbitrary units)", "t-SNE 2 (arbitrary units)", "t-SNE"
    return xy, xlabel, ylabel, how


def _scatter_classes(ax: Axes, xy: np.ndarray, lab: np.ndarray, class_names) -> None:
    """One colour per class, named from ``class_names`` where the labels index them; a legend if few classes."""
    import matplotlib as mpl

    numeric = lab.dtype.kind in "iuf"
    classes = np.unique(lab[np.isfinite(lab)] if lab.dtype.kind == "f" else lab)
    n_colors = max(len(classes), len(class_names) if class_names is not None else 0)
    palette = mpl.colormaps["tab10" if n_colors <= 10 else "tab20"]
    for i, c in enumerate(classes):
        sel = lab == c
        ci = int(c) if numeric and class_names is not None else i
        name = class_names[ci] if numeric and class_names is not None and 0 <= ci < len(class_names) else str(c)
        ax.scatter(
            xy[sel, 0],
            xy[sel, 1],
            s=10,
            alpha=0.7,
            color=palette(ci % palette.N),
            label=f"{name} (n={int(sel.sum())})",
            edgecolor="none",
        )
    if len(classes) <= _MAX_LEGEND_CLASSES:
        ax.legend(fontsize=7, markerscale=1.5, loc="best", title="class", title_fontsize=8)


def _scatter_values(fig: Figure, ax: Axes, xy: np.ndarray, lab: np.ndarray) -> None:
    """Points coloured by a real-valued label, with a colorbar."""
    vals = lab.astype(float)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=vals, cmap="coolwarm", s=10, alpha=0.8, edgecolor="none", plotnonfinite=True)
    fig.colorbar(sc, ax=ax, label="label (label units)")


def latent_projection(
    z,
    labels,
    method: str = "pca",
    class_names: Sequence[str] | None = None,
    *,
    max_points: int = 3000,
    ax: Axes | None = None,
) -> Figure:
    """2-D projection of the shared factor z_y, coloured by label.

    Args:
        z: ``(N, d)`` latent codes; drawn directly if ``d == 2`` (``d == 1`` is drawn against a jittered axis).
        labels: ``(N,)`` class indices (categorical colours + legend) or real values (colormap + colorbar);
            labels are treated as classes when integer-valued with at most 20 distinct values, or when
            ``class_names`` is given.
        method: ``"pca"`` (sklearn PCA, axes labelled with explained variance) or ``"tsne"`` (sklearn t-SNE).
        max_points: at most this many examples (a fixed random subset) are projected and drawn.
    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    fig, ax = new_axes(ax, figsize=(6.2, 5.2))
    z, lab = _finite_subset(z, labels, max_points)
    n, d = z.shape
    xy, xlabel, ylabel, how = _project_2d(z, method)
    if _is_categorical(lab, class_names):
        _scatter_classes(ax, xy, lab, class_names)
    else:
        _scatter_values(fig, ax, xy, lab)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"Shared factor z_y (d = {d}), {how}, n = {n}")
    ax.grid(alpha=0.3)
    return fig


def training_curves(
    log: Sequence[Mapping], metric: str | None = None, *, higher_is_better: bool | None = None, ax: Axes | None = None
) -> Figure:
    """Training loss (left axis) and a validation metric (right axis) per epoch, best epoch marked.

    Args:
        log: one dict per epoch, ``{"epoch": int, "train_loss": float, "valid_<metric>": float, ...}``; entries
            may lack keys (e.g. validation every k epochs); a ``valid_loss`` is drawn on the loss axis.
        metric: the validation key to draw (default: the first ``valid_*`` key other than ``valid_loss``, else
            ``valid_loss``); the best epoch is its maximum, or minimum for losses and errors.
    """
    fig, ax = new_axes(ax, figsize=(7.0, 4.4))

    def col(key):
        return np.array([float(e[key]) if e.get(key) is not None else math.nan for e in log], dtype=float)

    epochs = np.array([e.get("epoch", i) for i, e in enumerate(log)], dtype=float)
    keys = [k for e in log for k in e]
    valid_keys = list(dict.fromkeys(k for k in keys if k.startswith("valid_")))
    if metric is None:
        others = [k for k in valid_keys if k != "valid_loss"]
        metric = others[0] if others else ("valid_loss" if "valid_loss" in valid_keys else None)
    handles = []
    for key, style in (("train_loss", "-"), ("valid_loss", "--")):
        if key in keys:
            v = col(key)
            ok = np.isfinite(v)
            handles += ax.plot(epochs[ok], v[ok], style, color="C0", lw=1.6, label=key.replace("_", " "))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (nats per example)", color="C0")
    title = "Training curves"
    if metric is not None:
        mv = col(metric)
        ok = np.isfinite(mv)
        target = ax if metric == "valid_loss" else ax.twinx()
        if target is not ax:
            handles += target.plot(epochs[ok], mv[ok], "-o", color="C1", ms=3, lw=1.4, label=metric.replace("_", " "))
            target.set_ylabel(metric_label(metric), color="C1")
        if ok.any():
            hib = (not lower_is_better(metric)) if higher_is_better is None else higher_is_better
            best = int(np.nanargmax(mv) if hib else np.nanargmin(mv))
            handles.append(ax.axvline(epochs[best], color="C2", ls=":", lw=1.5, label=f"best epoch {epochs[best]:g}"))
            handles += target.plot(
                epochs[best],
                mv[best],
                "*",
                color="C2",
                ms=14,
                label=f"best {metric.replace('_', ' ')} = {mv[best]:.4g}",
            )
            title += f": best {metric.replace('_', ' ')} {mv[best]:.4g} at epoch {epochs[best]:g}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="center right")
    return fig


def confusion_matrix(
    y_true, y_pred, class_names: Sequence[str] | None = None, *, normalize: bool = True, ax: Axes | None = None
) -> Figure:
    """Confusion matrix: rows are true classes, columns predictions; cells coloured by row fraction
    (``normalize``) or count, annotated with counts. Accuracy in the title."""
    yt = np.asarray(y_true).reshape(-1)
    yp = np.asarray(y_pred).reshape(-1)
    if yt.shape != yp.shape:
        raise ValueError(f"y_true has {yt.size} entries but y_pred has {yp.size}")
    if class_names is not None:
        classes = np.arange(len(class_names))
        names = [str(c) for c in class_names]
    else:
        classes = np.unique(np.concatenate([yt, yp]))
        names = [str(c) for c in classes]
    k = len(classes)
    fig, ax = new_axes(ax, figsize=(max(4.0, 1.2 + 0.55 * k), max(3.6, 1.0 + 0.5 * k)))
    pos = {c: i for i, c in enumerate(classes.tolist())}
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(yt.tolist(), yp.tolist()):
        if t in pos and p in pos:
            cm[pos[t], pos[p]] += 1
    rows = cm.sum(axis=1, keepdims=True)
    shown = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0) if normalize else cm
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(1, cm.max()))
    fig.colorbar(im, ax=ax, label="fraction of true class" if normalize else "examples (count)")
    if k <= 25:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8 if k <= 12 else 6,
                    color="white" if shown[i, j] > 0.6 * (1 if normalize else cm.max()) else "black",
                )
    ax.set_xticks(
        range(k),
        names,
        rotation=45 if max(map(len, names), default=0) > 3 else 0,
        ha="right" if max(map(len, names), default=0) > 3 else "center",
    )
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    acc = np.trace(cm) / cm.sum() if cm.sum() else math.nan
    ax.set_title(f"Confusion matrix (accuracy {acc:.1%}, n = {int(cm.sum())})", fontsize=10)
    return fig


def _runs(mask: np.ndarray):
    """Start and end (exclusive) of each run of True in a 1-D boolean array."""
    m = np.concatenate([[False], mask, [False]]).astype(int)
    d = np.diff(m)
    return zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1))


def sequence_imputation(
    x_true,
    x_imputed,
    steps_mask,
    features: Sequence[int] = (0, 1, 2),
    *,
    feature_names: Sequence[str] | None = None,
    ax=None,
) -> Figure:
    """True against imputed trajectories of a sequence modality for a few features, padded steps shaded.

    Args:
        x_true, x_imputed: ``(T, F)`` one example's held-out and imputed sequence.
        steps_mask: ``(T,)`` True at real steps, False at padding.
        features: feature indices to draw (those out of range are skipped).
        ax: None (one stacked panel per feature), one Axes (all features overlaid) or a sequence of Axes.
    """
    xt = as_float_array(x_true, "x_true")
    xi = as_float_array(x_imputed, "x_imputed")
    if xt.ndim == 1:
        xt, xi = xt[:, None], xi.reshape(-1, 1)
    if xt.shape != xi.shape or xt.ndim != 2:
        raise ValueError(f"x_true {xt.shape} and x_imputed {xi.shape} must both be (T, F)")
    mask = np.asarray(steps_mask, dtype=bool).reshape(-1)
    if mask.shape[0] != xt.shape[0]:
        raise ValueError(f"steps_mask has {mask.shape[0]} steps, sequences have {xt.shape[0]}")
    feats = [int(f) for f in features if 0 <= int(f) < xt.shape[1]] or [0]
    if ax is None:
        fig = Figure(figsize=(7.5, 1.0 + 1.8 * len(feats)), layout="constrained")
        axes = list(np.atleast_1d(fig.subplots(len(feats), 1, sharex=True)))
    elif isinstance(ax, Axes):
        fig, axes = ax.figure, [ax] * len(feats)
    else:
        axes = list(ax)
        fig = axes[0].figure
    t = np.arange(xt.shape[0])
    overlaid = len(set(map(id, axes))) == 1
    shaded = set()
    for n, (a, f) in enumerate(zip(axes, feats)):
        name = feature_names[f] if feature_names is not None else f"feature {f}"
        c_true, c_imp = (f"C{n % 10}", f"C{n % 10}") if overlaid else ("C0", "C1")
        a.plot(t[mask], xt[mask, f], "-", color=c_true, lw=1.6, label=f"{name}: held out")
        a.plot(t[mask], xi[mask, f], "--", color=c_imp, lw=1.6, label=f"{name}: imputed")
        if id(a) not in shaded:
            shaded.add(id(a))
            for s, e in _runs(~mask):
                a.axvspan(s - 0.5, e - 0.5, color="0.85", zorder=0, lw=0)
        err = np.mean((xt[mask, f] - xi[mask, f]) ** 2) if mask.any() else math.nan
        if not overlaid:
            a.set_ylabel(f"{name}\n(feature units)", fontsize=9)
            a.set_title(f"{name}: MSE over real steps {err:.3g}", fontsize=9)
        a.grid(alpha=0.3)
        a.legend(fontsize=7, loc="upper right")
    if overlaid:
        axes[0].set_ylabel("value (feature units)")
    axes[-1].set_xlabel("time step (index; grey = padding)")
    n_pad = int((~mask).sum())
    head = f"Sequence imputation: {int(mask.sum())} real steps, {n_pad} padded (shaded)"
    (axes[0].set_title if overlaid else fig.suptitle)(head, fontsize=10)
    return fig
