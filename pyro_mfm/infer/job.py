"""The main job: train, evaluate on every subset of observed modalities, impute, and write a report folder.

``<out>/`` receives ``checkpoint/`` (the training run), ``metrics.json`` (every metric for every observed subset,
baselines, the training log), ``report.md`` (readable tables), ``imputed_<modality>.h5`` (the test split with that
modality imputed from all others, in the native format) and ``plots/*.png``. The job holds a lock on ``<out>``;
a non-empty ``<out>`` is refused unless resuming or overwriting. SIGINT or SIGTERM stops it (training at the next
step, after a checkpoint; the evaluation between its stages) before ``metrics.json`` and ``report.md`` are written,
so a folder with a report holds a finished job.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import plots
from ..config import Config
from ..data import native
from ..data.builtin import load_embedded
from ..data.dataset import MultimodalData, MultimodalDataset
from ..data.schema import DataError
from ..model import MFM
from .checkpoint import atomic_write, folder_lock, prepare_folder, write_json
from .evaluate import evaluate, format_cell, mean_imputation_baseline, table
from .faults import StopRequested
from .predict import impute, imputed_data, predict
from .train import cpu_threads, fit


def load_data(config: Config) -> MultimodalData:
    """The data set named by ``config.data.source``: ``embedded:NAME``, a native HDF5 path, or a folder in the
    Memory Fusion Network release layout (``<modality>_<split>.h5`` and ``y_<split>.h5``, e.g. POM)."""
    src = config.data.source
    if src.startswith("embedded:"):
        return load_embedded(src.split(":", 1)[1])
    if Path(src).is_dir():
        from ..data.importers.mfn import load_mfn

        return load_mfn(src, nan_as_missing=config.data.nan_as_missing)
    return native.load(Path(src), nan_as_missing=config.data.nan_as_missing)


def single_view_baselines(data: MultimodalData, config: Config) -> dict:
    """Per modality: a logistic (classes) or ridge (regression) model trained on that modality alone."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train, test = data[config.data.train_split], data[config.data.test_split]
    lab = data.schema.label
    out = {}
    for s in data.schema.modalities:
        m = s.name
        tr = train.present[m] & train.label_present
        te = test.present[m] & test.label_present
        flat = lambda ds, idx: np.asarray(ds.features[m])[idx].reshape(idx.sum(), -1)  # noqa: E731
        if not baseline_possible(lab, np.asarray(train.labels)[tr] if tr.any() else [], te.sum()):
            continue  # too few labelled samples with this modality (see the report's note)
        if lab.kind == "categorical":
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
            clf.fit(flat(train, tr), np.asarray(train.labels)[tr])
            out[m] = {"accuracy": float(clf.score(flat(test, te), np.asarray(test.labels)[te]))}
        elif lab.kind == "regression":
            reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
            reg.fit(flat(train, tr), np.asarray(train.labels)[tr])
            out[m] = {"mae": float(np.abs(reg.predict(flat(test, te)) - np.asarray(test.labels)[te]).mean())}
    return out


def baseline_possible(label, train_labels, n_test: int) -> bool:
    """Whether a one-view baseline can be fitted and scored: a labelled test sample with the view, and training
    samples with it of at least two classes (classes) or at least one (regression)."""
    if n_test == 0 or len(train_labels) == 0:
        return False
    return label.kind != "categorical" or len(np.unique(train_labels)) >= 2


def _subtitle(fig, text: str) -> None:
    """Append a line to the title of the figure's first axes."""
    import textwrap

    ax = fig.axes[0]
    width = max(40, int(fig.get_figwidth() * 11))  # characters of a 9-point line across the figure
    ax.set_title(f"{ax.get_title()}\n" + textwrap.fill(text, width), fontsize=9)


def write_plots(out: Path, mfm: MFM, test: MultimodalDataset, records: list, history: list, baselines: dict,
                mean_baseline: dict, metric: str, seed: int | None = 0, predictions: dict | None = None,
                config: Config | None = None) -> list[str]:
    """The report's plots. ``predictions``: the evaluation's predictions by observed subset; the calibration and
    confusion plots use the one of all modalities, so that they show the table's numbers. ``seed`` seeds the draws
    of a prediction made here."""
    pdir = out / "plots"
    written = []
    flat = [{"observed": r["observed"], **r.get("label", {})} for r in records]
    if any("label" in r for r in records):
        single = {m: v[metric] for m, v in baselines.items() if metric in v}
        written.append(plots.save(plots.metric_by_observed(flat, metric, baseline=single or None,
                                                           baseline_label="linear model on one view"),
                                  pdir / f"{metric}_by_observed.png"))
    # imputation error of each modality when it alone is hidden (imputed from all others)
    errors = {}
    for r in records:
        hidden = [m for m in mfm.schema.names if m not in r["observed"]]
        if len(hidden) == 1 and hidden[0] in r.get("imputation", {}):
            m = hidden[0]
            errors[m] = {**r["imputation"][m], "baseline_mse": mean_baseline[m]["mse"]}
    if errors:
        fig = plots.imputation_error(errors)
        _subtitle(fig, "each modality imputed from all the others; baseline: the training mean of each feature")
        written.append(plots.save(fig, pdir / "imputation_error.png"))
    if mfm.D is not None:
        full = tuple(mfm.schema.names)
        pred = (predictions or {}).get(full) or predict(mfm, test, num_samples=50, keep_samples=False, seed=seed)
        shown = f"observed: all modalities ({'+'.join(full)}), as in the table's last row"
        keep = test.label_present
        names = list(mfm.schema.label.names) if mfm.schema.label.names else None
        y = np.asarray(test.labels)
        written.append(plots.save(plots.latent_projection(pred.z_y[keep], y[keep] if y.ndim == 1 else y[keep, 0],
                                                          class_names=names if mfm.D.kind == "categorical" else None),
                                  pdir / "z_y_projection.png"))
        if mfm.D.kind == "categorical":
            for fig, name in ((plots.reliability_diagram(pred.point[keep], y[keep]), "reliability"),
                              (plots.confusion_matrix(y[keep], pred.label[keep], names), "confusion")):
                _subtitle(fig, shown)
                written.append(plots.save(fig, pdir / f"{name}.png"))
        elif mfm.D.kind in ("normal", "laplace"):
            fig = plots.interval_plot(y[keep][:, 0], pred.point[keep][:, 0], pred.lower[keep][:, 0],
                                      pred.upper[keep][:, 0], level=pred.interval)
            _subtitle(fig, shown)
            written.append(plots.save(fig, pdir / "intervals.png"))
    if history:
        # epochs counted from 1, as the console counts them
        fig = plots.training_curves([{**r, "epoch": r["epoch"] + 1} for r in history])
        if config is not None:
            _subtitle(fig, f"training loss: with modality dropout (p = {config.train.modality_dropout:g}) and the KL "
                           f"warm-up ({config.train.kl_warmup} epochs); validation: every observed modality")
        written.append(plots.save(fig, pdir / "training_curves.png"))
    return [str(p) for p in written]


REPORT_FILES = ("checkpoint", "metrics.json", "report.md", "imputed_*.h5", "plots", ".*.tmp")
"""What a report folder holds (``overwrite`` deletes only these)."""


METRIC_NOTES = "\n".join([
    "- Label metrics are on the test samples with a label, predicted from the observed modalities alone.",
    "- ECE (expected calibration error): the gap between confidence and accuracy, averaged over confidence bins "
    "(0 is perfectly calibrated).",
    "- NLPD (negative log predictive density): -log p(true label | observed modalities), averaged over samples, "
    "in nats (lower is better).",
    "- Imputation MSE: squared error of the imputed posterior mean, in the squared units of the data's features; "
    "the ratio divides it by the MSE of imputing each feature's training mean (below 1 beats that baseline).",
])


def best_epoch_line(result) -> str:
    """The best epoch counted from 1, as the console counts it, with its validation score."""
    best = result.best
    if not best or best.get("epoch", -1) < 0:
        return "No epoch was selected (no validation score after the KL warm-up)."
    scores = ", ".join(f"valid {k} {format_cell(v, '.4g')}" for k, v in best.items() if k != "epoch")
    return f"Best epoch {best['epoch'] + 1} of {len(result.history)} ({scores})."


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived during the evaluation stages of the job."""


def run(config: Config, out_dir, resume: bool = False, overwrite: bool = False,
        allow_config_change: bool = False) -> dict:
    """Train, evaluate every observed subset on the test split, impute, write the report. Returns the metrics, or
    ``{"interrupted": "SIGTERM", "checkpoint": ...}`` when a signal stopped the job (no report is written then).
    ``resume``, ``overwrite`` and ``allow_config_change`` as in :func:`pyro_mfm.infer.train.fit`."""
    out = Path(out_dir)
    with cpu_threads(config.train.num_threads), folder_lock(out, "report folder"):
        prepare_folder(out, resume, overwrite, REPORT_FILES, "report folder")
        for name in ("report.md", "metrics.json"):  # a report of the run being continued is no longer true
            (out / name).unlink(missing_ok=True)
        try:
            return _run(config, out, resume, allow_config_change)
        except Interrupted as e:
            return {"interrupted": str(e), "checkpoint": str(out / "checkpoint")}


def _run(config: Config, out: Path, resume: bool, allow_config_change: bool) -> dict:
    t0 = time.time()
    data = load_data(config)
    if config.data.test_split not in data:
        raise DataError(f"{data.source}: no test split {config.data.test_split!r}; the data set has {list(data)}")
    result = fit(config, data, out / "checkpoint", resume=resume, allow_config_change=allow_config_change)
    if result.interrupted:
        raise Interrupted(result.interrupted)
    with StopRequested() as stop:
        return _report(config, out, data, result, t0, stop)


def _report(config: Config, out: Path, data: MultimodalData, result, t0: float, stop: StopRequested) -> dict:
    def check() -> None:
        if stop.signum is not None:
            raise Interrupted(stop.name)

    t_train = time.time() - t0
    mfm, test = result.mfm, data[config.data.test_split]
    ev = config.evaluate
    predictions: dict = {}
    records = evaluate(mfm, test, num_samples=ev.num_samples, interval=ev.interval, batch_size=ev.batch_size,
                       progress=config.train.progress, seed=ev.seed, predictions=predictions)
    check()
    baselines = single_view_baselines(data, config) if data.schema.label is not None else {}
    mean_baseline = mean_imputation_baseline(data[config.data.train_split], test)
    for m in mfm.schema.names:  # each modality imputed from all the others, written in the native format
        others = [n for n in mfm.schema.names if n != m]
        if others:
            imp = impute(mfm, test, others, num_samples=ev.num_samples, batch_size=ev.batch_size, seed=ev.seed)
            native.save(imputed_data(test, imp, checkpoint=out / "checkpoint" / "best.pt", num_samples=ev.num_samples,
                                     seed=ev.seed), out / f"imputed_{m}.h5", overwrite=True)
            check()
    # the headline label metric of the robustness plot, whatever metric model selection used
    metric = ("accuracy" if mfm.D.is_discrete else "mae") if mfm.D is not None else None
    written = write_plots(out, mfm, test, records, result.history, baselines, mean_baseline, metric, ev.seed,
                          predictions=predictions, config=config)
    check()
    report = {
        "data": data.schema.name or data.source, "attribution": data.schema.attribution,
        "test_samples": len(test), "best": result.best, "train_seconds": t_train,
        "total_seconds": time.time() - t0, "subsets": records, "single_view_baselines": baselines,
        "mean_imputation_baseline": mean_baseline, "history": result.history, "plots": written,
        "config": config.to_dict(),
    }
    write_json(out / "metrics.json", report)
    md = [f"# MFM report: {report['data']}\n", f"Test samples: {len(test)}. {best_epoch_line(result)}",
          f"Training {t_train:.0f} s, total {report['total_seconds']:.0f} s.\n",
          "## Every subset of observed modalities (test split)\n", METRIC_NOTES + "\n",
          table(records, baseline=mean_baseline)]
    if baselines:
        md += ["\n## Linear model trained on one modality alone (test split)\n",
               "| modality | " + " | ".join(next(iter(baselines.values()))) + " |",
               "|---|" + "---|" * len(next(iter(baselines.values())))]
        md += [f"| {m} | " + " | ".join(format_cell(x, ".4g") for x in v.values()) + " |" for m, v in baselines.items()]
    unscored = [m for m in data.schema.names if m not in baselines]
    if data.schema.label is not None and data.schema.label.kind in ("categorical", "regression") and unscored:
        md += [f"\nNo one-view baseline for {', '.join(unscored)}: too few labelled samples with the modality "
               "(a training sample of two classes at least, or of the regression label, and a test sample)."]
    md += ["\n## Training-mean imputation baseline (MSE, squared feature units)\n",
           ", ".join(f"{m} {format_cell(v['mse'], '.4g')}" for m, v in mean_baseline.items()),
           "\n## Plots\n"] + [f"![{Path(p).stem}](plots/{Path(p).name})" for p in written]
    if data.schema.attribution:
        md += ["\n## Data attribution\n", data.schema.attribution]
    atomic_write(out / "report.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    return report
