"""The main job's report: ``metrics.json``, ``report.md`` and ``plots/*.png`` of a report folder.

:func:`write_report` takes what the job computed (the evaluation of every observed subset, the training-mean
imputation baseline, the training run), adds a linear model per subset of observed modalities, the nested pairs
of subsets and the plots, and writes the files.
It sits above inference, analysis and plots, which it reads; :mod:`pyro_mfm.infer.job` imports it only when it
writes a report.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import plots
from .analysis.baselines import against_linear, nested_gains, subset_baselines
from .analysis.forms import OPPOSITE_SE, form_scores, has_both_forms
from .config import Config
from .data.dataset import MultimodalData, MultimodalDataset
from .ensemble import members_of
from .infer.evaluate import format_cell, output_table, table
from .infer.metrics import output_metrics
from .infer.predict import predict
from .infer.train import (
    averaged_what,
    ensemble_what,
    held_out_what,
    missingness_lines,
    missingness_record,
    with_validation,
)
from .model import MFM
from .outputs import atomic_write, write_json


def _subtitle(fig, text: str) -> None:
    """Append a line to the title of the figure's first axes."""
    import textwrap

    ax = fig.axes[0]
    width = max(40, int(fig.get_figwidth() * 11))  # characters of a 9-point line across the figure
    ax.set_title(f"{ax.get_title()}\n" + textwrap.fill(text, width), fontsize=9)


def _robustness_plot(pdir: Path, records: list, baselines: dict, metric: str) -> list:
    """The label metric against the number of observed modalities, the one-view baselines marked."""
    flat = [{"observed": r["observed"], **r.get("label", {})} for r in records]
    if not any("label" in r for r in records):
        return []
    single = {m: v[metric] for m, v in baselines.items() if metric in v}
    fig = plots.metric_by_observed(flat, metric, baseline=single or None, baseline_label="linear model on one view")
    return [plots.save(fig, pdir / f"{metric}_by_observed.png")]


def _linear_plots(pdir: Path, linear: list, pairs: list, metric: str | None) -> list:
    """The MFM against the linear model fitted on each subset alone, and what adding modalities does."""
    written = []
    if linear:
        rows = [
            {"observed": r["observed"], "model": r[metric]["mfm"], "baseline": r[metric]["linear"]}
            for r in linear
            if metric in r
        ]
        fig = plots.against_baseline(rows, metric, model_label="MFM", baseline_label="linear model")
        _subtitle(
            fig, "each subset's linear model fitted on its modalities alone; both scored on the same test samples"
        )
        written.append(plots.save(fig, pdir / f"{metric}_against_linear.png"))
    if pairs:
        what = "accuracy" if metric == "accuracy" else "minus the MAE"
        written.append(plots.save(plots.nested_pairs(pairs, metric=what), pdir / "nested_pairs.png"))
    return written


def _imputation_plot(pdir: Path, mfm: MFM, records: list, mean_baseline: dict) -> list:
    """The imputation error of each modality when it alone is hidden (imputed from all others)."""
    errors = {}
    for r in records:
        hidden = [m for m in mfm.schema.names if m not in r["observed"]]
        if len(hidden) == 1 and hidden[0] in r.get("imputation", {}):
            m = hidden[0]
            errors[m] = {**r["imputation"][m], "baseline_mse": mean_baseline[m]["mse"]}
    if not errors:
        return []
    fig = plots.imputation_error(errors)
    _subtitle(fig, "each modality imputed from all the others; baseline: the training mean of each feature")
    return [plots.save(fig, pdir / "imputation_error.png")]


def _label_plots(pdir: Path, mfm: MFM, test: MultimodalDataset, predictions: dict | None, seed: int | None) -> list:
    """The shared factor's projection and, from all modalities, the calibration and confusion plots (categorical
    label) or the predictive intervals (normal or Laplace label)."""
    written = []
    full = tuple(mfm.schema.names)
    pred = (predictions or {}).get(full) or predict(mfm, test, num_samples=50, keep_samples=False, seed=seed)
    shown = f"observed: all modalities ({'+'.join(full)}), as in the table's last row"
    keep = test.label_present
    names = list(mfm.schema.label.names) if mfm.schema.label.names else None
    y = np.asarray(test.labels)
    written.append(
        plots.save(
            plots.latent_projection(
                pred.z_y[keep],
                y[keep] if y.ndim == 1 else y[keep, 0],
                class_names=names if mfm.D.kind == "categorical" else None,
            ),
            pdir / "z_y_projection.png",
        )
    )
    if mfm.D.kind == "categorical":
        for fig, name in (
            (plots.reliability_diagram(pred.point[keep], y[keep]), "reliability"),
            (plots.confusion_matrix(y[keep], pred.label[keep], names), "confusion"),
        ):
            _subtitle(fig, shown)
            written.append(plots.save(fig, pdir / f"{name}.png"))
    elif mfm.D.kind in ("normal", "laplace"):
        fig = plots.interval_plot(
            y[keep][:, 0],
            pred.point[keep][:, 0],
            pred.lower[keep][:, 0],
            pred.upper[keep][:, 0],
            level=pred.interval,
        )
        _subtitle(fig, shown)
        written.append(plots.save(fig, pdir / "intervals.png"))
    return written


def _training_plot(pdir: Path, history: list, config: Config | None) -> list:
    """The training curves, epochs counted from 1 as the console counts them."""
    if not history:
        return []
    # the validation metric model selection read: over all modalities and each alone (train.select_over), or all
    selected = next((k for k in history[-1] if k.startswith("valid_") and k.endswith("_subsets")), None)
    fig = plots.training_curves([{**r, "epoch": r["epoch"] + 1} for r in history], metric=selected)
    if config is not None:
        _subtitle(
            fig,
            ("the first of the ensemble's members; " if config.train.ensemble > 1 else "")
            + f"training loss: with modality dropout (p = {config.train.modality_dropout:g}) and the KL "
            f"warm-up ({config.train.kl_warmup} epochs); validation: "
            + ("the mean over all modalities and each alone" if selected else "every observed modality"),
        )
    return [plots.save(fig, pdir / "training_curves.png")]


def write_plots(
    out: Path,
    mfm: MFM,
    test: MultimodalDataset,
    records: list,
    history: list,
    baselines: dict,
    mean_baseline: dict,
    metric: str,
    seed: int | None = 0,
    predictions: dict | None = None,
    config: Config | None = None,
    linear: list | None = None,
    pairs: list | None = None,
) -> list[str]:
    """The report's plots. ``predictions``: the evaluation's predictions by observed subset; the calibration and
    confusion plots use the one of all modalities, so that they show the table's numbers. ``seed`` seeds the draws
    of a prediction made here. ``linear`` and ``pairs``: the MFM against a linear model per subset
    (:func:`~pyro_mfm.analysis.baselines.against_linear`) and the nested pairs of subsets
    (:func:`~pyro_mfm.analysis.baselines.nested_gains`)."""
    pdir = out / "plots"
    written = _robustness_plot(pdir, records, baselines, metric)
    written += _linear_plots(pdir, linear or [], pairs or [], metric)
    written += _imputation_plot(pdir, mfm, records, mean_baseline)
    if mfm.D is not None:
        written += _label_plots(pdir, mfm, test, predictions, seed)
    written += _training_plot(pdir, history, config)
    return [str(p) for p in written]


METRIC_NOTES = "\n".join(
    [
        "- Label metrics are on the test samples with a label, predicted from the observed modalities alone.",
        "- ECE (expected calibration error): the gap between confidence and accuracy, averaged over confidence bins "
        "(0 is perfectly calibrated; of a multilabel target, each label's own, averaged over the labels). On a "
        "finite test set a calibrated model's ECE is not 0: ece_floor is the mean "
        "ECE of labels drawn from the model's own probabilities (consistency resampling), calibration_p the fraction "
        "of those draws at or above the observed ECE (small: more miscalibration than the sample size explains).",
        "- NLPD (negative log predictive density): -log p(true label | observed modalities), averaged over samples, "
        "in nats (lower is better).",
        "- Imputation MSE: squared error of the imputed posterior mean, in the squared units of the data's features; "
        "the ratio divides it by the MSE of imputing each feature's training mean (below 1 beats that baseline).",
    ]
)


def best_epoch_line(result) -> str:
    """The best epoch counted from 1, as the console counts it, with its validation score."""
    best, held = result.best, result.held_out
    where = (
        f" The data have no validation split: {held['samples']} training samples ({held_out_what(held)}) were held "
        "out as one."
        if held
        else ""
    )
    if not best or best.get("epoch", -1) < 0:
        return "No epoch was selected (no validation score after the KL warm-up)." + where
    scores = ", ".join(f"valid {k} {format_cell(v, '.4g')}" for k, v in best.items() if k != "epoch")
    averaged = averaged_what(getattr(result, "averaged", {}))
    averaged = " " + averaged if averaged else ""
    ensemble = ensemble_what(result) if getattr(result, "members", None) else ""
    ensemble = " " + ensemble if ensemble else ""
    return f"Best epoch {best['epoch'] + 1} of {len(result.history)} ({scores}).{averaged}{ensemble}{where}"


LINEAR_NOTES = (
    "A linear model fitted on each subset's modalities alone (logistic regression for classes, one per label of a "
    "multilabel target, ridge regression otherwise; features standardised with the training moments, a sequence "
    "averaged over its real steps; trained on the labelled training samples that have every modality of the subset, "
    "its penalty chosen on the validation split's), and the MFM, both scored on the labelled test samples that have "
    "every modality of the subset (n). Gain: the MFM's accuracy (of a multilabel target, the share of its labels "
    "that are right) minus the linear model's, or the linear model's MAE minus the MFM's (positive: the MFM is "
    "better), with its paired standard error over those samples."
)


def _baseline_lines(data: MultimodalData, linear: list, pairs: list) -> list[str]:
    """The table of the MFM against a linear model per subset, the subsets without one, and the nested pairs where
    adding modalities makes the MFM worse by more than one paired standard error."""
    md = []
    if linear:
        metric = "accuracy" if "accuracy" in linear[0] else "mae"
        behind, beyond = sum(r["gain"] < 0 for r in linear), sum(r["gain"] < -r["se"] for r in linear)
        md += [
            "\n## The MFM against a linear model per subset (test split)\n",
            LINEAR_NOTES + "\n",
            f"The MFM is behind the linear model on {behind} of {len(linear)} subsets, by more than one standard "
            f"error on {beyond}.\n",
            f"| observed | n | MFM {metric} | linear {metric} | gain | se | C or alpha (chosen on) |",
            "|---|---|---|---|---|---|---|",
        ]
        md += [
            f"| {'+'.join(r['observed'])} | {r['n']} | {format_cell(r[metric]['mfm'], '.4g')} | "
            f"{format_cell(r[metric]['linear'], '.4g')} | {r['gain']:+.4f} | {r['se']:.4f} | "
            f"{r['penalty']:g} ({r['chosen_on']}) |"
            for r in linear
        ]
    scored = {"+".join(r["observed"]) for r in linear}
    singles = [m for m in data.schema.names if m not in scored]
    if data.schema.label is not None and singles:
        md += [
            f"\nNo linear model for {', '.join(singles)} alone: too few labelled samples with the modality "
            "(a training sample of two classes at least, of both values of every label of a multilabel target, or "
            "of the regression label, and a test sample)."
        ]
    if pairs:
        worse = sorted((p for p in pairs if p["worse"]), key=lambda p: p["gain"] / max(p["se"], 1e-12))
        md += [
            "\n## Adding modalities (test split)\n",
            f"Of {len(pairs)} nested pairs of subsets (S inside S'; accuracy, or minus the MAE, on the labelled test "
            f"samples), the MFM's prediction from S' is worse than from S by more than one paired standard error on "
            f"{len(worse)}" + (":" if worse else "."),
        ]
        md += [
            f"- {'+'.join(p['smaller'])} -> {'+'.join(p['larger'])}: {p['gain']:+.4f} (se {p['se']:.4f})"
            for p in worse[:20]
        ]
        if len(worse) > 20:
            md.append(f"- ... and {len(worse) - 20} more (`metrics.json`, `nested_pairs`)")
    return md


FORMS_NOTES = (
    'The ensemble\'s members take two forms of expert of z_y (`model.expert = "both"`), whose predictives of the '
    "label it weighs for each observed subset by how well each predicts the validation split's labels. Each form's "
    "members alone, on the labelled samples of the validation and the test split that observe every modality of the "
    "subset (accuracy, or MAE), with the linear form's score minus the MLP form's per sample (accuracy, or minus the "
    "absolute error: positive where the linear form is better) and its paired standard error, and the linear form's "
    "weight in the mixture."
)


def _form_splits(config: Config, data: MultimodalData) -> dict:
    """The validation split that training weighed the forms on (held out of the training split with the run's
    seed where the data have none, as training held it out) and the test split; ``{}`` without a validation split."""
    dc = config.data
    held = with_validation(config, data)
    if dc.valid_split not in held:
        return {}
    return {"validation": held[dc.valid_split], "test": data[dc.test_split]}


def _forms_lines(forms: list) -> list[str]:
    """The table of each form of expert alone on the validation and the test split, and whether the validation split
    ranks the forms as the test split does."""
    if not forms:
        return []
    metric = {"mae": "MAE"}.get(forms[0]["metric"], forms[0]["metric"])

    def cell(r: dict | None) -> str:  # None: no labelled sample of the split observes the subset
        return "n/a" if r is None else f"{r['mlp']:.4f} / {r['linear']:.4f} ({r['difference']:+.4f} ± {r['se']:.4f})"

    opposite = [r for r in forms if r["opposite"]]
    md = [
        "\n## Each form of expert alone (validation and test split)\n",
        FORMS_NOTES + "\n",
        f"| observed | validation {metric}: MLP / linear (difference ± se) | test {metric}: MLP / linear (difference "
        "± se) | linear form's weight |",
        "|---|---|---|---|",
    ]
    md += [
        f"| {'+'.join(r['observed'])} | {cell(r.get('validation'))} | {cell(r.get('test'))} | "
        f"{r['linear_weight']:.2f} |"
        for r in forms
    ]
    if opposite:
        md.append(
            f"\nOn {', '.join('+'.join(r['observed']) for r in opposite)} the validation split ranks the two forms, "
            f"each split by more than {OPPOSITE_SE:g} standard errors, the other way round from the test split: the "
            "weights follow the validation split. Where its samples share groups with the training samples "
            "(segments of the same speakers or videos) and the test samples do not, it rewards what the networks "
            "learnt of the training groups; `from_arrays(groups=...)`, or ids that name the groups, holds the "
            "validation split out by whole groups."
        )
    else:
        md.append(
            "\nThe validation split ranks the two forms as the test split does, or one of them cannot tell them "
            f"apart (within {OPPOSITE_SE:g} standard errors), on every subset."
        )
    return md


def _markdown(report: dict, data: MultimodalData, result, config: Config) -> list[str]:
    """The lines of ``report.md``: the metrics of ``report`` (the content of ``metrics.json``) as text and tables."""
    mean_baseline, written = report["mean_imputation_baseline"], report["plots"]
    md = [
        f"# MFM report: {report['data']}\n",
        f"Test samples: {report['test_samples']}. {best_epoch_line(result)}",
        f"Training {report['train_seconds']:.0f} s, total {report['total_seconds']:.0f} s.\n",
        "## Every subset of observed modalities (test split)\n",
        METRIC_NOTES + "\n",
        table(report["subsets"], baseline=mean_baseline),
    ]
    if report.get("missingness"):
        md += ["\n## Missing modalities (training split)\n"]
        md += [f"- {line}" for line in missingness_lines(config, data, report["missingness"])]
    md += output_table(report["label_outputs"]) if report.get("label_outputs") else []
    md += _baseline_lines(data, report["linear_baselines"], report["nested_pairs"])
    md += _forms_lines(report.get("forms", []))
    md += [
        "\n## Training-mean imputation baseline (MSE, squared feature units)\n",
        ", ".join(f"{m} {format_cell(v['mse'], '.4g')}" for m, v in mean_baseline.items()),
        "\n## Plots\n",
    ] + [f"![{Path(p).stem}](plots/{Path(p).name})" for p in written]
    if data.schema.attribution:
        md += ["\n## Data attribution\n", data.schema.attribution]
    return md


def write_report(
    config: Config,
    out: Path,
    data: MultimodalData,
    result,
    records: list,
    predictions: dict,
    mean_baseline: dict,
    t0: float,
    t_train: float,
    check=lambda: None,
) -> dict:
    """Write the report of a finished job to ``out`` and return its metrics (the content of ``metrics.json``).

    ``result``: the :class:`~pyro_mfm.infer.train.TrainResult`; ``records`` and ``predictions``: those of
    :func:`~pyro_mfm.infer.evaluate.evaluate` on the test split; ``mean_baseline``: its
    :func:`~pyro_mfm.infer.evaluate.mean_imputation_baseline`; ``t0``: when the job started, ``t_train``: the
    seconds training took. ``check()`` is called between stages (it raises to stop before anything is written)."""
    mfm, test = result.mfm, data[config.data.test_split]
    ev = config.evaluate
    by_subset = subset_baselines(data, config, [r["observed"] for r in records]) if mfm.D is not None else {}
    linear = against_linear(by_subset, predictions or {}, test)
    pairs = nested_gains(predictions or {}, test) if mfm.D is not None else []
    # an ensemble of both forms of expert: each form alone on the split that weighed them and on the test split
    forms = []
    if has_both_forms(mfm):
        observed = [r["observed"] for r in records]
        forms = form_scores(mfm, _form_splits(config, data), observed, ev.num_samples, ev.batch_size, ev.seed)
        check()
    # the linear models of one modality alone, marked on the robustness plot
    baselines = {
        obs[0]: {k: v for k, v in b.items() if k in ("accuracy", "mae")}
        for obs, b in by_subset.items()
        if len(obs) == 1
    }
    # which modalities the training split lacks, and whether the trained model observes their absence
    # (model.missingness): from the statistics training kept, with no pass over the data
    missingness = []
    if config.model.observes_absences:
        missingness = missingness_record(result.stats, members_of(mfm)[0].guide.absent_names, mfm.schema.names)
    # a label of several outputs: each output from every modality, as the field reports POM's traits and
    # IEMOCAP's emotions
    everything = tuple(mfm.schema.names)
    outputs = []
    if mfm.D is not None and everything in (predictions or {}):
        outputs = output_metrics(
            predictions[everything], np.asarray(test.labels), test.label_present, test.schema.label
        )
    # the headline label metric of the robustness plot, whatever metric model selection used
    metric = ("accuracy" if mfm.D.is_discrete else "mae") if mfm.D is not None else None
    written = write_plots(
        out,
        mfm,
        test,
        records,
        result.history,
        baselines,
        mean_baseline,
        metric,
        ev.seed,
        predictions=predictions,
        config=config,
        linear=linear,
        pairs=pairs,
    )
    check()
    report = {
        "data": data.schema.name or data.source,
        "attribution": data.schema.attribution,
        "test_samples": len(test),
        "best": result.best,
        "averaged": result.averaged,
        **(
            {
                "members": [
                    {"best": r.best, "averaged": r.averaged, "expert": r.mfm.config.expert} for r in result.members
                ]
            }
            if result.members
            else {}
        ),
        # the forms' log weights in the label's mixture (model.expert = "both"), [a, b_1 .. b_M] per form
        **(
            {"mixture_log_weight": result.calibration["mixture_log_weight"]}
            if "mixture_log_weight" in result.calibration
            else {}
        ),
        "train_seconds": t_train,
        "total_seconds": time.time() - t0,
        "subsets": records,
        "single_view_baselines": baselines,
        "linear_baselines": linear,
        "nested_pairs": pairs,
        **({"forms": forms} if forms else {}),
        **({"missingness": missingness} if missingness else {}),
        **({"label_outputs": {"observed": list(everything), "outputs": outputs}} if outputs else {}),
        "mean_imputation_baseline": mean_baseline,
        "history": result.history,
        "plots": written,
        "config": config.to_dict(),
    }
    write_json(out / "metrics.json", report)
    md = _markdown(report, data, result, config)
    atomic_write(out / "report.md", lambda f: f.write(("\n".join(md) + "\n").encode()))
    return report
