"""The MFM against per-subset linear baselines on the team's real data, over several seeds.

    python inference/real_data_comparison.py [--data uci,uci-defaults,pom-vectors,pom-sequences,pom-sequences-defaults,
                                              pom-one-rating,pom-binary]
                                             [--seeds 0,1,2] [--train-size 220] [--no-valid] [--mlp] [--forms]
                                             [--datasets ../shared/datasets] [--out comparison.json]
                                             [--plots FOLDER] [--set table.key=value ...]

* **UCI Multiple Features** (``models/uci_mfeat.toml``, the embedded data): test accuracy and ECE on each of the
  63 subsets of observed views, next to a logistic regression fitted on that subset alone (standardised features,
  its C chosen on the validation split).
* **UCI, library defaults** (``uci-defaults``: ``Config`` with nothing but the data, as a new user with their own
  class-labelled vectors gets), the same tables.
* **POM, time-averaged vectors**: the library's defaults (``Config`` with nothing but the data, as a new user
  with their own vectors gets), on each modality averaged over its real steps; test MAE, correlation (means over
  the 17 ratings) and coverage of the 90% interval for audio + video, audio and video, next to a ridge regression
  per subset on the same vectors (its penalty chosen on validation MAE).
* **POM, sequences** (``models/mfm-pom.toml``: LSTM encoders and decoders, the Memory Fusion Network, ``wae``), next
  to the same ridge.
* **POM, sequences, library defaults** (``pom-sequences-defaults``: ``Config`` with nothing but the data, as a new
  user with their own sequences gets: LSTM encoders and decoders, product of experts, ELBO), next to the same ridge.
* **POM, one rating at a time** (``pom-one-rating``: each of the 17 ratings a regression label of its own on the
  time-averaged vectors, as CMU-MOSI's one sentiment score; ``pom-binary``: each rating above its training median a
  binary label on the sequences, as ICT-MMMO's positive/negative videos), the library's defaults against the ridge
  or logistic regression per subset, paired over the 17 tasks. Not in the default ``--data``: 17 trainings a seed.

``--train-size N`` trains every model on N of POM's 600 training videos (drawn once; ICT-MMMO has 220), to see
how the comparison holds on a small data set. ``--no-valid`` gives the MFM the training and validation samples as
one training split with no validation split, as a user's data with a training and a test split only (training then
holds ``data.valid_fraction`` of it out; the linear baselines keep choosing their penalty on the validation split).
``--mlp`` adds to POM's three subsets a plain MLP regressor on the ridge's time-averaged features
(:func:`mlp_baseline`: scikit-learn's, with its default L2 penalty and with the one its held-out split picks).
``--forms`` scores, on POM's three subsets, each form of expert's members of the default ensemble (``model.expert =
"both"``) alone on the validation split that weighed them and on the test split, beside the linear form's weight
(:func:`forms_hook`, :func:`form_lines`).

Every MFM metric is a mean and standard deviation over the seeds. For each pair of nested subsets S inside S', the
paired difference of S' against S (accuracy, or MAE) is averaged over the seeds per test sample; "worse" means worse
by more than one standard error of that per-sample paired difference. ``--set`` overrides apply to every MFM.
Prints Markdown tables; ``--out`` writes every number as JSON, each seed's too; ``--plots`` draws, for each data
set but the one-rating-at-a-time ones, the MFM against the linear baseline per subset and the nested pairs
(:func:`write_plots`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyro_mfm import analysis
from pyro_mfm.analysis.baselines import nested_differences, sample_scores, with_missing
from pyro_mfm.config import Config
from pyro_mfm.data import MultimodalData, from_arrays, load_data
from pyro_mfm.infer import fit
from pyro_mfm.infer.evaluate import observed_subsets
from pyro_mfm.infer.metrics import calibrated_ece_draws, label_metrics, multilabel_metrics, regression_metrics
from pyro_mfm.infer.predict import predict
from pyro_mfm.infer.train import with_validation
from pyro_mfm.nets import step_mean
from pyro_mfm.outputs import atomic_write

ROOT = Path(__file__).resolve().parents[1]


def standardised(train, names):
    """A function ``ds -> (N, sum d)`` of the named modalities, standardised with the training split's moments."""
    cat = lambda ds: np.concatenate([np.asarray(ds.features[m], float).reshape(len(ds), -1) for m in names], 1)  # noqa: E731
    x = cat(train)
    mu, sd = x.mean(0), x.std(0) + 1e-8
    return lambda ds: (cat(ds) - mu) / sd


def logistic_baseline(data, names, column: int | None = None):
    """Test probabilities of a logistic regression on ``names``, C chosen on validation; of a multilabel target's
    label ``column`` alone, where given."""
    from sklearn.linear_model import LogisticRegression

    tr, va, te = data["train"], data["valid"], data["test"]
    z = standardised(tr, names)
    y = lambda ds: np.asarray(ds.labels) if column is None else np.asarray(ds.labels)[:, column]  # noqa: E731
    fits = [LogisticRegression(C=c, max_iter=3000).fit(z(tr), y(tr)) for c in (0.01, 0.1, 1.0, 10.0)]
    best = max(fits, key=lambda f: f.score(z(va), y(va)))
    return best.predict_proba(z(te))


def ridge_baseline(data, names):
    """Test predictions of a ridge regression on ``names``, its penalty chosen on validation MAE."""
    from sklearn.linear_model import Ridge

    tr, va, te = data["train"], data["valid"], data["test"]
    z = standardised(tr, names)
    y = lambda ds: np.asarray(ds.labels)  # noqa: E731
    fits = [Ridge(alpha=a).fit(z(tr), y(tr)) for a in (0.1, 1, 10, 100, 1000, 10000)]
    best = min(fits, key=lambda f: np.abs(f.predict(z(va)) - y(va)).mean())
    return best.predict(z(te))


# the L2 penalties (scikit-learn's alpha) among which the MLP baseline picks the one its own held-out split scores best
MLP_ALPHAS = (1e-4, 1.0, 3.0, 10.0, 30.0)


def mlp_baseline(features, y, split, names, seeds, alphas=MLP_ALPHAS, hidden=(128, 128), max_iter=500):
    """Test MAE of a plain MLP regressor on ``names`` (scikit-learn's, two hidden layers as wide as the MFM's
    default, Adam, early stopping on a tenth of the training split), averaged over ``seeds``: with scikit-learn's
    default penalty (``alphas[0]``), and with the penalty whose held-out score (R^2, on the early-stopping split,
    averaged over the seeds) is the best. ``features``: ``{m: (N, d)}``; ``y``: ``(N,)`` or ``(N, k)`` (the MAE is
    then the mean over the k labels); ``split``: ``(N,)`` of ``"train"`` and ``"test"``. Returns ``(plain MAE,
    chosen MAE, chosen alpha)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    x = np.concatenate([features[m] for m in names], 1).astype(float)
    train, test = split == "train", split == "test"
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-8
    x = (x - mu) / sd
    maes, scores = {}, {}
    for alpha in alphas:
        runs = []
        for seed in seeds:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                net = MLPRegressor(
                    hidden_layer_sizes=hidden, alpha=alpha, early_stopping=True, random_state=seed, max_iter=max_iter
                ).fit(x[train], y[train])
            runs.append((float(np.abs(net.predict(x[test]) - y[test]).mean()), float(net.best_validation_score_)))
        maes[alpha], scores[alpha] = np.mean([r[0] for r in runs]), np.mean([r[1] for r in runs])
    best = max(alphas, key=lambda a: scores[a])
    return float(maes[alphas[0]]), float(maes[best]), float(best)


# the MLP baseline's two columns, appended to a table's header and rows (empty without the baseline)
MLP_HEADER = " MLP MAE | MLP MAE, L2 on held-out (alpha) |"


def mlp_cells(result) -> str:
    """A row's two MLP cells from :func:`mlp_baseline`'s ``(plain MAE, chosen MAE, chosen alpha)``."""
    return f" {result[0]:.4f} | {result[1]:.4f} ({result[2]:g}) |"


def mlp_record(mlps: dict) -> dict:
    """The JSON record of :func:`mlp_baseline`'s results per subset."""
    return {name(o): dict(zip(("plain", "chosen", "alpha"), v)) for o, v in mlps.items()}


def time_averaged(seq):
    """A sequence data set as vectors: each modality averaged over its real steps (zero where missing)."""
    feats, labels, split = {m: [] for m in seq.schema.names}, [], []
    for name in ("train", "valid", "test"):
        ds = seq[name]
        for m in feats:
            x, s = torch.as_tensor(np.asarray(ds.features[m], float)), ds.steps[m] & ds.present[m][:, None]
            feats[m].append(step_mean(x, torch.as_tensor(s)).numpy())  # what the encoders' step means read
        labels.append(np.asarray(ds.labels))
        split += [name] * len(ds)
    return from_arrays(
        {m: np.concatenate(v) for m, v in feats.items()},
        np.concatenate(labels),
        split=np.array(split),
        name=f"{seq.schema.name} (time-averaged)",
    )


def without_validation(data):
    """``data`` with its validation samples moved into the training split: a user's data with a training and a test
    split only, as the MFM gets it with ``--no-valid`` (the linear baselines keep choosing their penalty on the
    validation split, so that the reference stays the same)."""
    j = joined(data)
    split = np.concatenate([[s] * n for s, n in zip(j["splits"], j["sizes"])])
    return from_arrays(
        j["features"],
        j["labels"],
        present=j["present"],
        steps=j["steps"],
        split=np.where(split == "valid", "train", split),
        name=f"{data.schema.name} (no validation split)",
    )


def run_mfm(config: Config, data, subsets, seeds, num_samples: int, no_valid: bool = False, after_fit=None):
    """Per seed and subset: the label metrics and the per-sample scores (correct, or absolute error); with
    ``no_valid``, the MFM trains on :func:`without_validation`'s data. ``after_fit(seed, result, data)`` is called
    with each seed's :class:`TrainResult` and the data it trained on."""
    test = data["test"]
    if no_valid:
        data = without_validation(data)
    y, keep = np.asarray(test.labels), np.asarray(test.label_present)
    out = []
    for seed in seeds:
        start = time.time()
        result = fit(config.override([f"train.seed={seed}", "train.progress=False"]), data)
        if after_fit is not None:
            after_fit(seed, result, data)
        per = {}
        for obs in subsets:
            torch.manual_seed(seed)
            pred = predict(
                result.mfm, test, obs, num_samples=num_samples, interval=config.evaluate.interval, keep_samples=False
            )
            metrics = label_metrics(pred, y, keep, data.schema.label)
            # right (a class), the share of the labels right (multilabel), or the absolute error (regression)
            score = sample_scores(pred, y) if pred.kind in ("categorical", "bernoulli") else -sample_scores(pred, y)
            per[obs] = {"metrics": metrics, "score": score[keep]}
            if pred.kind == "categorical":  # the same draws for every seed: the seeds share the test labels
                per[obs]["ece_draws"] = calibrated_ece_draws(pred.point[keep])
            elif pred.lower is not None:  # whether each sample's interval holds its label (over a label's outputs)
                inside = (y >= pred.lower) & (y <= pred.upper)
                per[obs]["covered"] = inside.reshape(len(y), -1).mean(-1)[keep]
        out.append(per)
        a = result.averaged
        average = f", mean of epochs {a['from_epoch']}-{a['from_epoch'] + a['epochs'] - 1} " if a else ""
        average += ("kept" if a["kept"] else "not kept") if a else ""
        print(
            f"  seed {seed}: trained and evaluated in {time.time() - start:.0f} s (best epoch "
            f"{result.best.get('epoch', -1) + 1}{average}, calibration "
            f"{result.calibration.get('nlpd_before', float('nan')):.4f}"
            f" -> {result.calibration.get('nlpd_after', float('nan')):.4f})",
            file=sys.stderr,
            flush=True,
        )
    return out


def forms_hook(per_form: list, num_samples: int):
    """An ``after_fit`` for :func:`run_mfm` that appends to ``per_form``, for each seed, each form of expert's
    members alone (:func:`pyro_mfm.analysis.form_scores`, keyed by subset) on the validation split that selected,
    calibrated and weighed them (the data's, or the one training held out of the training split, drawn again with
    the run's seed) and on the test split."""

    def after(seed, result, data):
        dc = result.config.data
        splits = {"held_out": with_validation(result.config, data)[dc.valid_split], "test": data[dc.test_split]}
        records = analysis.form_scores(result.mfm, splits, num_samples=num_samples, seed=result.config.train.seed)
        per_form.append({tuple(r["observed"]): r for r in records})

    return after


def form_lines(per_form: list, subsets, held_out: str = "validation split") -> list:
    """The Markdown table of :func:`forms_hook`'s records over the seeds, per subset: each form's mean metric on the
    held-out and the test split, the linear form's mean weight, and the seeds on which the two splits rank the forms
    the other way round, each by more than two paired standard errors."""
    if not all(per_form):  # form_scores compares two forms
        return ["--forms: the ensemble's members have one form of expert (model.expert); nothing to compare."]
    metric = {"mae": "MAE"}.get(per_form[0][subsets[0]]["metric"], "accuracy")
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    lines = [
        f"Each form's members alone (mean over seeds): {metric} on the {held_out} and on the test split; the linear "
        "form's weight in the mixture; the seeds on which the two splits rank the forms the other way round, each by "
        "more than two paired standard errors",
        "",
        f"| observed | {held_out}, MLP / linear | test split, MLP / linear | linear form's weight | opposite |",
        "|---|---|---|---|---|",
    ]
    for obs in subsets:
        cells = [
            " / ".join(f"{mean([f[obs][split][form] for f in per_form]):.4f}" for form in ("mlp", "linear"))
            for split in ("held_out", "test")
        ]
        weight = mean([f[obs]["linear_weight"] for f in per_form])
        opposite = sum(f[obs]["opposite"] for f in per_form)
        lines.append(f"| {name(obs)} | {cells[0]} | {cells[1]} | {weight:.2f} | {opposite} of {len(per_form)} |")
    return lines


def seed_values(runs, subsets, keys):
    """Each metric's value for every seed, per subset (for paired comparisons of two runs over the same seeds)."""
    return {name(obs): {k: [float(r[obs]["metrics"][k]) for r in runs] for k in keys} for obs in subsets}


def summary(runs, subsets, keys):
    """Mean and standard deviation over seeds of each metric, per subset."""
    return {
        obs: {
            k: (
                float(np.mean([r[obs]["metrics"][k] for r in runs])),
                float(np.std([r[obs]["metrics"][k] for r in runs])),
            )
            for k in keys
        }
        for obs in subsets
    }


def nested(runs, subsets, higher_is_better: bool):
    """Every nested pair (S, S'), S inside S': the seed-mean paired difference of S' against S (positive: S' is
    better), its standard error over test samples, and whether S' is worse by more than one standard error."""
    sign = 1.0 if higher_is_better else -1.0
    return nested_differences({obs: sign * np.mean([r[obs]["score"] for r in runs], 0) for obs in subsets})


def name(obs):
    return " + ".join(obs)


def baseline_values(entry: dict) -> tuple[str, dict, float]:
    """The linear baseline of one data set's record: its name, ``{metric: {subset: value}}`` of the metrics that the
    plots draw, and the quality target's tolerance (UCI's 0.5 points of accuracy)."""
    if "logistic_regression" in entry:
        label, base, tolerance = "logistic regression", entry["logistic_regression"], 0.005
        # UCI records the regression's accuracy, the multilabel comparison every metric of it
        metrics = {"accuracy": {n: v["accuracy"] if isinstance(v, dict) else v for n, v in base.items()}}
    else:
        label, base, tolerance = "ridge", entry["ridge"], 0.0
        metrics = {"mae": {}, "corr": {}}
        for n, v in base.items():
            for metric, values in metrics.items():
                # the testbed records the ridge's MAE alone, POM its MAE, MSE and correlation
                values[n] = v.get(metric) if isinstance(v, dict) else (v if metric == "mae" else None)
        metrics = {m: values for m, values in metrics.items() if all(v is not None for v in values.values())}
    return label, metrics, tolerance


def write_plots(which: str, entry: dict, folder) -> list[Path]:
    """PNGs of one data set's comparison (``entry``, as ``--out`` records it) in ``folder``: for each metric, the
    MFM against the linear baseline per subset (:func:`pyro_mfm.plots.against_baseline`; UCI's accuracy with the
    quality target's 0.5 points of tolerance), and the nested pairs (:func:`pyro_mfm.plots.nested_pairs`). The
    one-rating-at-a-time comparisons record the tasks, not the subsets: nothing is drawn for them."""
    from pyro_mfm import plots

    if "mfm" not in entry or "nested" not in entry:
        return []
    label, metrics, tolerance = baseline_values(entry)
    folder, written = Path(folder), []
    for metric, baseline in metrics.items():
        rows = [
            {
                "observed": subset.split(" + "),
                "model": entry["mfm"][subset][metric][0],
                "model_sd": entry["mfm"][subset][metric][1],
                "baseline": baseline.get(subset),
            }
            for subset in entry["mfm"]
        ]
        fig = plots.against_baseline(
            rows, metric, tolerance=tolerance, model_label=f"MFM ({which})", baseline_label=label
        )
        written.append(plots.save(fig, folder / f"{which}-{metric}-against-{label.replace(' ', '-')}.png"))
    metric = "accuracy" if "logistic_regression" in entry else "MAE"
    written.append(plots.save(plots.nested_pairs(entry["nested"], metric=metric), folder / f"{which}-nested-pairs.png"))
    return written


def hidden_at_random(data, rate: float, seed: int = 0):
    """``data`` with each view of each sample hidden with probability ``rate`` (missing completely at random), in
    every split, each sample keeping at least one view (:func:`pyro_mfm.analysis.baselines.with_missing`, split k
    drawn with ``seed + k``)."""
    splits = {split: with_missing(ds, rate, seed=seed + k) for k, (split, ds) in enumerate(data.splits.items())}
    return MultimodalData(data.schema, splits, source=data.source)


def compare_uci(seeds, overrides, num_samples, defaults: bool = False, no_valid: bool = False, hide: float = 0.0):
    if defaults:  # Config with nothing but the data, as a new user with their own class-labelled vectors gets
        config = Config.from_dict({"data": {"source": "embedded:uci_mfeat"}}).override(overrides)
    else:
        config = Config.load(ROOT / "models" / "uci_mfeat.toml", overrides)
    data = load_data(config)
    if hide:
        data = hidden_at_random(data, hide)
    subsets = observed_subsets(data.schema.names)
    y = np.asarray(data["test"].labels)
    base = {obs: logistic_baseline(data, obs) for obs in subsets}
    base_acc = {obs: float((p.argmax(-1) == y).mean()) for obs, p in base.items()}
    runs = run_mfm(config, data, subsets, seeds, num_samples, no_valid)
    s = summary(runs, subsets, ["accuracy", "ece"])
    pairs = nested(runs, subsets, higher_is_better=True)
    per_seed = np.array([[r[obs]["metrics"]["accuracy"] - base_acc[obs] for obs in subsets] for r in runs])
    # per test sample: the MFM's accuracy averaged over the seeds minus the logistic regression's
    paired = {obs: np.mean([r[obs]["score"] for r in runs], 0) - (base[obs].argmax(-1) == y) for obs in subsets}
    paired_se = {obs: float(d.std(ddof=1) / np.sqrt(len(d))) for obs, d in paired.items()}
    # the seed-mean ECE of calibrated models with the MFM's confidences (each seed's, on the same label draws)
    floor = {obs: np.mean([r[obs]["ece_draws"] for r in runs], 0) for obs in subsets}
    ece_p = {obs: float(np.mean(floor[obs] >= s[obs]["ece"][0] - 1e-12)) for obs in subsets}
    lines = [
        f"UCI Multiple Features ({'the library defaults' if defaults else 'models/uci_mfeat.toml'}"
        + (f"; {hide:.0%} of the views hidden at random in every split" if hide else "")
        + "), test accuracy, "
        f"MFM mean ± sd over seeds {list(seeds)}; logistic regression per "
        "subset (C on validation); the paired difference is averaged over seeds, its standard error over the test "
        "samples; a calibrated model's ECE is the mean over the seeds of the ECE that labels drawn from each "
        "seed's own probabilities give (p: the fraction of such draws at or above the MFM's ECE)",
        "",
        "| observed views | MFM accuracy | logistic regression | paired difference (se; sd over seeds) | MFM ECE "
        "| a calibrated model's ECE (p) |",
        "|---|---|---|---|---|---|",
    ]
    for i, obs in enumerate(subsets):
        (acc, sd), (ece, _) = s[obs]["accuracy"], s[obs]["ece"]
        lines.append(
            f"| {name(obs)} | {acc:.4f} ± {sd:.4f} | {base_acc[obs]:.4f} | {per_seed[:, i].mean():+.4f} "
            f"({paired_se[obs]:.4f}; {per_seed[:, i].std():.4f}) | {ece:.4f} | {floor[obs].mean():.4f} "
            f"({ece_p[obs]:.2f}) |"
        )
    below = [obs for i, obs in enumerate(subsets) if per_seed[:, i].mean() < -0.005]
    below_se = [obs for i, obs in enumerate(subsets) if per_seed[:, i].mean() < -max(0.005, paired_se[obs])]
    singles_below = [obs for i, obs in enumerate(subsets) if len(obs) == 1 and per_seed[:, i].mean() < 0]
    worse = [p for p in pairs if p["worse"]]
    multi = [obs for obs in subsets if len(obs) > 1]
    multi_ece = max(multi, key=lambda o: s[o]["ece"][0])
    over = [obs for obs in multi if s[obs]["ece"][0] > 0.03]
    miscalibrated = [obs for obs in over if ece_p[obs] < 0.05]
    lines += [
        "",
        f"- subsets more than 0.5 points below the logistic regression: {len(below)} of {len(subsets)} "
        f"({', '.join(name(o) for o in below) or 'none'}); of them more than one paired standard error below: "
        f"{', '.join(name(o) for o in below_se) or 'none'}; single views below theirs: "
        f"{', '.join(name(o) for o in singles_below) or 'none'}",
        f"- nested pairs where adding views is worse by more than one paired standard error: {len(worse)} of "
        f"{len(pairs)}"
        + "".join(
            f"; {name(p['smaller'])} -> {name(p['larger'])} {p['gain']:+.4f} (se {p['se']:.4f})" for p in worse[:5]
        ),
        f"- largest ECE over subsets of two views or more: {s[multi_ece]['ece'][0]:.4f} ({name(multi_ece)}; a "
        f"calibrated model's {floor[multi_ece].mean():.4f}, p {ece_p[multi_ece]:.2f}); above 0.03: {len(over)} of "
        f"{len(multi)}, of them above 95% of a calibrated model's draws: "
        f"{', '.join(name(o) for o in miscalibrated) or 'none'}",
    ]
    record = {
        "subsets": [list(o) for o in subsets],
        "mfm": {name(o): v for o, v in s.items()},
        "logistic_regression": {name(o): v for o, v in base_acc.items()},
        "paired_se": {name(o): v for o, v in paired_se.items()},
        "calibrated_ece": {name(o): [float(floor[o].mean()), ece_p[o]] for o in subsets},
        "nested": pairs,
        "per_seed": seed_values(runs, subsets, ["accuracy", "ece"]),
    }
    return "\n".join(lines), record


def split_arrays(data, splits=("train", "test")):
    """``features {m: (N, d)}``, labels and the split of each sample of ``data``'s ``splits``, as arrays (a sequence
    flattened over its steps; a missing modality zero, as the data hold it)."""
    parts = [data[s] for s in splits]
    features = {
        m: np.concatenate([np.asarray(ds.features[m], float).reshape(len(ds), -1) for ds in parts])
        for m in data.schema.names
    }
    labels = np.concatenate([np.asarray(ds.labels) for ds in parts])
    return features, labels, np.concatenate([[s] * len(ds) for s, ds in zip(splits, parts)])


def observed_or_not(test, ridge: dict, runs, subsets) -> dict:
    """For each subset that some labelled test samples observe none of: the MFM's MAE and 90% coverage (means over the
    seeds of :func:`run_mfm`'s ``runs``) and the ridge's MAE (``ridge``: its test predictions per subset, of
    :func:`ridge_baseline` on the time-averaged features, zeros where a modality is missing), on the samples that
    observe some of the subset and on those that observe none of it (whose prediction is the MFM's prior
    predictive). ``{subset: {"n": [n_in, n_out], "mfm": [...], "ridge": [...], "coverage": [...]}}``."""
    keep = np.asarray(test.label_present, bool)
    y = np.asarray(test.labels)[keep]
    out = {}
    for obs in subsets:
        some = np.any([np.asarray(test.present[m], bool) for m in obs], 0)[keep]
        if some.all() or not some.any() or "covered" not in runs[0][obs]:
            continue
        errors = np.abs(ridge[obs][keep].reshape(len(y), -1) - y.reshape(len(y), -1)).mean(-1)
        mfm = np.mean([r[obs]["score"] for r in runs], 0)
        covered = np.mean([r[obs]["covered"] for r in runs], 0)
        out[obs] = {
            "n": [int(some.sum()), int((~some).sum())],
            "mfm": [float(mfm[some].mean()), float(mfm[~some].mean())],
            "ridge": [float(errors[some].mean()), float(errors[~some].mean())],
            "coverage": [float(covered[some].mean()), float(covered[~some].mean())],
        }
    return out


def compare_pom(
    data, config, seeds, num_samples, label, no_valid: bool = False, mlp: dict | None = None, forms: bool = False
):
    subsets = [("audio", "video"), ("audio",), ("video",)]
    y = np.asarray(data["test"].labels)
    vectors = data if not data.schema.modalities[0].is_sequence else time_averaged(data)
    ridge = {obs: ridge_baseline(vectors, obs) for obs in subsets}  # the test predictions
    base = {obs: regression_metrics(y, pred) for obs, pred in ridge.items()}
    mlps = {}
    if mlp is not None:
        arrays = split_arrays(vectors)
        mlps = {obs: mlp_baseline(*arrays, obs, seeds, **mlp) for obs in subsets}
    per_form: list = []
    hook = forms_hook(per_form, num_samples) if forms else None
    runs = run_mfm(config, data, subsets, seeds, num_samples, no_valid, after_fit=hook)
    s = summary(runs, subsets, ["mae", "corr", "coverage"])
    pairs = nested(runs, subsets, higher_is_better=False)
    lines = [
        f"POM ({label}), test MAE and correlation (means over the 17 ratings), MFM mean ± sd over seeds "
        f"{list(seeds)}; ridge per subset on time-averaged features (penalty on validation MAE)",
        "",
        "| observed | MFM MAE | ridge MAE | MFM corr | ridge corr | MFM 90% coverage |" + (MLP_HEADER if mlps else ""),
        "|---|---|---|---|---|---|" + ("---|---|" if mlps else ""),
    ]
    for obs in subsets:
        (mae, mae_sd), (corr, corr_sd), (cov, cov_sd) = s[obs]["mae"], s[obs]["corr"], s[obs]["coverage"]
        lines.append(
            f"| {name(obs)} | {mae:.4f} ± {mae_sd:.4f} | {base[obs]['mae']:.4f} | {corr:.4f} ± {corr_sd:.4f} "
            f"| {base[obs]['corr']:.4f} | {cov:.3f} ± {cov_sd:.3f} |" + (mlp_cells(mlps[obs]) if mlps else "")
        )
    lines += [
        "- nested pairs worse by more than one paired standard error (MAE): "
        + (
            ", ".join(
                f"{name(p['smaller'])} -> {name(p['larger'])} {p['gain']:+.4f} (se {p['se']:.4f})"
                for p in pairs
                if p["worse"]
            )
            or "none"
        )
    ]
    record = {
        "mfm": {name(o): v for o, v in s.items()},
        "ridge": {name(o): v for o, v in base.items()},
        "mlp": mlp_record(mlps),
        "nested": pairs,
        "per_seed": seed_values(runs, subsets, ["mae", "corr", "coverage"]),
    }
    split_by_presence = observed_or_not(data["test"], ridge, runs, subsets)
    for obs, v in split_by_presence.items():
        lines.append(
            f"- {name(obs)}, on the {v['n'][0]} test samples that observe some of it / the {v['n'][1]} that observe "
            f"none of it (the prior predictive): MAE MFM {v['mfm'][0]:.4f} / {v['mfm'][1]:.4f}, ridge "
            f"{v['ridge'][0]:.4f} / {v['ridge'][1]:.4f}; MFM 90% coverage {v['coverage'][0]:.3f} / "
            f"{v['coverage'][1]:.3f}"
        )
    if split_by_presence:
        record["observed_or_not"] = {name(o): v for o, v in split_by_presence.items()}
    if forms:
        lines += ["", *form_lines(per_form, subsets)]
        if all(per_form):
            record["forms"] = {name(o): [f[o] for f in per_form] for o in subsets}
    return "\n".join(lines), record


def joined(data) -> dict:
    """Every split of ``data`` (train, valid, test, in that order) concatenated, as :func:`from_arrays` takes them:
    the features, their presence masks (a modality a sample lacks stays missing, not zeros) and, for sequences,
    their real steps; with ``splits``, ``sizes`` and the ``labels``."""
    splits = [s for s in ("train", "valid", "test") if s in data]
    join = lambda get: np.concatenate([np.asarray(get(data[s])) for s in splits])  # noqa: E731
    names, seq = data.schema.names, data.schema.modalities[0].is_sequence
    return {
        "splits": splits,
        "sizes": [len(data[s]) for s in splits],
        "features": {m: join(lambda ds, m=m: ds.features[m]).astype(float) for m in names},
        "present": {m: join(lambda ds, m=m: ds.present[m]).astype(bool) for m in names},
        "steps": {m: join(lambda ds, m=m: ds.steps[m]) for m in names} if seq else None,
        "labels": join(lambda ds: ds.labels),
    }


def one_rating(data, col: int, binary: bool):
    """``data`` with rating ``col`` alone as its label: a regression value, or (``binary``) 1 where the rating is
    above its training median (a positive/negative label, as ICT-MMMO's)."""
    j = joined(data)
    median = float(np.median(np.asarray(data["train"].labels)[:, col]))
    y = j["labels"][:, col]
    return from_arrays(
        j["features"],
        (y > median).astype(np.int64) if binary else y,
        present=j["present"],
        steps=j["steps"],
        split=np.concatenate([[s] * n for s, n in zip(j["splits"], j["sizes"])]),
        name=f"{data.schema.name} (rating {col}{', above its median' if binary else ''})",
    )


def fewer_training(data, size: int, seed: int = 0):
    """``data`` with ``size`` of its training samples, drawn at random once (``seed``), and every validation and test
    sample: a small data set's training split (ICT-MMMO has 220 training videos, POM 600)."""
    j = joined(data)
    n = j["sizes"]
    if not 1 <= size <= n[0]:
        raise SystemExit(f"--train-size {size}: expected 1 to the {n[0]} training samples")
    keep = np.sort(np.random.default_rng(seed).choice(n[0], size, replace=False))
    offsets = np.cumsum([0] + n)
    rows = {"train": keep, **{s: np.arange(offsets[i], offsets[i + 1]) for i, s in enumerate(j["splits"]) if i}}
    return from_arrays(
        j["features"],
        j["labels"],
        present=j["present"],
        steps=j["steps"],
        split=rows,
        name=f"{data.schema.name} ({size} of its {n[0]} training samples)",
    )


def compare_pom_ratings(data, config, seeds, num_samples, binary: bool, no_valid: bool = False):
    """Each of POM's 17 ratings as a task of its own (a single regression value, as CMU-MOSI's sentiment, or a
    binary label, as ICT-MMMO's), the library's defaults against the per-subset linear baseline on time-averaged
    features; the differences are paired over the 17 tasks."""
    subsets = [("audio", "video"), ("audio",), ("video",)]
    vectors = data if not data.schema.modalities[0].is_sequence else time_averaged(data)
    key = "accuracy" if binary else "mae"
    rows = []
    for col in range(np.asarray(data["train"].labels).shape[1]):
        task, flat = one_rating(data, col, binary), one_rating(vectors, col, binary)
        y = np.asarray(task["test"].labels)
        if binary:
            base = [float((logistic_baseline(flat, o).argmax(-1) == y).mean()) for o in subsets]
        else:
            base = [float(np.abs(ridge_baseline(flat, o).reshape(y.shape) - y).mean()) for o in subsets]
        runs = run_mfm(config, task, subsets, seeds, num_samples, no_valid)
        mfm = [float(np.mean([r[o]["metrics"][key] for r in runs])) for o in subsets]
        rows.append(mfm + base + [float(max(y.mean(), 1 - y.mean())) if binary else float(y.std())])
    a = np.array(rows)
    what = "accuracy" if binary else "MAE"
    lines = [
        f"POM, each rating as its own {'binary' if binary else 'regression'} task ({len(a)} tasks), test {what}, MFM "
        f"(the library's defaults) mean over seeds {list(seeds)} against the "
        f"{'logistic' if binary else 'ridge'} regression per subset on time-averaged features",
        "",
        "| rating | "
        + " | ".join(f"MFM {name(o)}" for o in subsets)
        + " | "
        + " | ".join(f"linear {name(o)}" for o in subsets)
        + (" | majority class |" if binary else " | sd of y |"),
        "|---" * 8 + "|",
    ]
    lines += [f"| {i} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for i, row in enumerate(a)]
    sign = 1 if binary else -1  # positive: the MFM is better
    lines.append("")
    for i, o in enumerate(subsets):
        d = sign * (a[:, i] - a[:, 3 + i])
        lines.append(
            f"- {name(o)}: MFM {a[:, i].mean():.4f}, linear {a[:, 3 + i].mean():.4f}; MFM better by {d.mean():+.4f}"
            f" (se over the tasks {d.std(ddof=1) / np.sqrt(len(d)):.4f}; better on {int((d > 0).sum())} of {len(d)})"
        )
    for i in (1, 2):
        d = sign * (a[:, 0] - a[:, i])
        lines.append(
            f"- adding {name(subsets[3 - i])} to {name(subsets[i])}: {d.mean():+.4f} "
            f"(se over the tasks {d.std(ddof=1) / np.sqrt(len(d)):.4f})"
        )
    columns = [f"mfm {name(o)}" for o in subsets] + [f"linear {name(o)}" for o in subsets] + ["reference"]
    return "\n".join(lines), {"metric": what, "columns": columns, "per_task": a.tolist()}


def multilabel(data):
    """``data`` with each of its ratings above its training median as one 0/1 label of a multilabel target (the
    shape of CMU-MOSEI's or IEMOCAP's emotions: several independent binary labels of one sample)."""
    j = joined(data)
    median = np.median(np.asarray(data["train"].labels), 0)
    return from_arrays(
        j["features"],
        (j["labels"] > median).astype(np.int64),
        present=j["present"],
        steps=j["steps"],
        split=np.concatenate([[s] * n for s, n in zip(j["splits"], j["sizes"])]),
        name=f"{data.schema.name} (each rating above its median, one multilabel target)",
    )


def compare_pom_multilabel(data, config, seeds, num_samples, no_valid: bool = False):
    """POM's 17 ratings, each above its training median, as one multilabel target: one MFM (the library's defaults)
    against a logistic regression per subset and label on the time-averaged features; accuracy over the labels,
    macro F1 and each label's ECE, paired per test sample (the fraction of its labels that are right)."""
    subsets = [("audio", "video"), ("audio",), ("video",)]
    task = multilabel(data)
    flat = multilabel(data if not data.schema.modalities[0].is_sequence else time_averaged(data))
    y = np.asarray(task["test"].labels)
    base, base_right = {}, {}
    for obs in subsets:
        probs = np.stack([logistic_baseline(flat, obs, k)[:, 1] for k in range(y.shape[1])], 1)
        base[obs] = multilabel_metrics(y, probs)
        base_right[obs] = ((probs > 0.5) == y).mean(-1)
    runs = run_mfm(config, task, subsets, seeds, num_samples, no_valid)
    s = summary(runs, subsets, ["accuracy", "macro_f1", "ece", "ece_floor", "calibration_p"])
    pairs = nested(runs, subsets, higher_is_better=True)
    lines = [
        f"POM, the ratings each above its training median as one multilabel target ({y.shape[1]} labels), test "
        f"accuracy over the labels, MFM (the library's defaults) mean ± sd over seeds {list(seeds)}; a logistic "
        "regression per subset and label on time-averaged features (C on validation accuracy); the paired "
        "difference per test sample (the fraction of its labels right), averaged over the seeds, its standard error "
        "over the test samples; ECE: each label's, averaged over the labels (in brackets a calibrated model's and the "
        "fraction of its draws at or above the MFM's, each the mean over the seeds)",
        "",
        "| observed | MFM accuracy | logistic regression | paired difference (se) | MFM macro F1 | logistic "
        "regression | MFM ECE (a calibrated model's; p) | logistic regression ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    record = {"subsets": [list(o) for o in subsets], "mfm": {}, "logistic_regression": {}, "paired": {}}
    for obs in subsets:
        d = np.mean([r[obs]["score"] for r in runs], 0) - base_right[obs][np.asarray(task["test"].label_present)]
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        (acc, sd), (f1, _), (ece, _), (floor, _), (p, _) = (
            s[obs][k] for k in ("accuracy", "macro_f1", "ece", "ece_floor", "calibration_p")
        )
        b = base[obs]
        lines.append(
            f"| {name(obs)} | {acc:.4f} ± {sd:.4f} | {b['accuracy']:.4f} | {d.mean():+.4f} ({se:.4f}) | {f1:.4f} | "
            f"{b['macro_f1']:.4f} | {ece:.4f} ({floor:.4f}; {p:.2f}) | {b['ece']:.4f} |"
        )
        record["mfm"][name(obs)], record["logistic_regression"][name(obs)] = s[obs], b
        record["paired"][name(obs)] = [float(d.mean()), se]
    worse = [p for p in pairs if p["worse"]]
    lines += [
        "",
        f"- nested pairs where adding a modality is worse by more than one paired standard error: {len(worse)} of "
        f"{len(pairs)}"
        + "".join(f"; {name(p['smaller'])} -> {name(p['larger'])} {p['gain']:+.4f} (se {p['se']:.4f})" for p in worse),
    ]
    record["nested"] = pairs
    record["per_seed"] = seed_values(runs, subsets, ["accuracy", "macro_f1", "ece"])
    return "\n".join(lines), record


DATA = {
    "uci": "UCI Multiple Features, models/uci_mfeat.toml",
    "uci-defaults": "UCI Multiple Features, the library's defaults",
    "pom-vectors": "time-averaged vectors, the library's defaults",
    "pom-sequences": "sequences, models/mfm-pom.toml",
    "pom-sequences-defaults": "sequences, the library's defaults",
    "pom-one-rating": "each rating a regression task of its own, time-averaged vectors, the library's defaults",
    "pom-binary": "each rating above its median a binary task of its own, sequences, the library's defaults",
    "pom-multilabel": "the ratings above their medians as one multilabel target, time-averaged vectors, the library's "
    "defaults",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", default=",".join(d for d in DATA if d not in ("pom-one-rating", "pom-binary", "pom-multilabel"))
    )
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default=str(ROOT.parent / "shared" / "datasets"))
    ap.add_argument("--num-samples", type=int, default=50)
    ap.add_argument("--out")
    ap.add_argument(
        "--train-size", type=int, help="POM: train on this many of the 600 training videos (drawn once; e.g. 220)"
    )
    ap.add_argument(
        "--no-valid",
        action="store_true",
        help="train the MFM on the training and validation samples together, with no validation split (as a user "
        "whose data has a training and a test split only)",
    )
    ap.add_argument(
        "--mlp",
        action="store_true",
        help="POM (pom-vectors, pom-sequences, pom-sequences-defaults): add a plain MLP regressor per subset on the "
        "time-averaged features (scikit-learn), with its default L2 penalty and with the one its held-out split picks",
    )
    ap.add_argument(
        "--forms",
        action="store_true",
        help="POM (pom-vectors, pom-sequences-defaults): score each form of expert's members alone on the validation "
        "and the test split, beside their weight (model.expert = 'both')",
    )
    ap.add_argument(
        "--hide",
        type=float,
        default=0.0,
        metavar="RATE",
        help="UCI: hide each view of each sample at random with this probability, in every split (drawn once), as "
        "data missing completely at random",
    )
    ap.add_argument("--plots", metavar="FOLDER", help="write each data set's comparison as PNGs into this folder")
    ap.add_argument("--set", action="append", default=[], metavar="table.key=value")
    args = ap.parse_args(argv)
    not_uci = [w for w in args.data.split(",") if w not in ("uci", "uci-defaults")]
    if args.hide and not_uci:
        ap.error(
            f"--hide: UCI's views only; --data {','.join(not_uci)} is POM, whose videos lack FACET features already"
        )
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)
    tables, record = [], {"seeds": seeds, "overrides": args.set}
    for which in args.data.split(","):
        print(f"{which}:", file=sys.stderr, flush=True)
        if which in ("uci", "uci-defaults"):
            if args.train_size:
                ap.error(f"--train-size: POM's training videos only; --data {which} trains on UCI's split as it is")
            text, record[which] = compare_uci(
                seeds,
                args.set,
                args.num_samples,
                defaults=which == "uci-defaults",
                no_valid=args.no_valid,
                hide=args.hide,
            )
        elif which in DATA:
            pom = Path(args.datasets) / "pom"
            if which == "pom-sequences":
                config = Config.load(ROOT / "models" / "mfm-pom.toml", [f"data.source='{pom}'"] + args.set)
            else:
                config = Config.from_dict({"data": {"source": str(pom)}}).override(args.set)
            data = load_data(config)
            if args.train_size:
                data = fewer_training(data, args.train_size)
            if which in ("pom-vectors", "pom-one-rating", "pom-multilabel"):
                data = time_averaged(data)
            if which == "pom-multilabel":
                text, record[which] = compare_pom_multilabel(data, config, seeds, args.num_samples, args.no_valid)
            elif which in ("pom-one-rating", "pom-binary"):
                text, record[which] = compare_pom_ratings(
                    data, config, seeds, args.num_samples, which == "pom-binary", args.no_valid
                )
            else:
                text, record[which] = compare_pom(
                    data,
                    config,
                    seeds,
                    args.num_samples,
                    DATA[which],
                    args.no_valid,
                    {} if args.mlp else None,
                    args.forms,
                )
        else:
            ap.error(f"--data {which!r}: expected one of {', '.join(DATA)}")
        tables.append(text)
        print(text + "\n", flush=True)
        if args.plots:
            for path in write_plots(which, record[which], args.plots) or ["nothing (a record per task)"]:
                print(f"{which}: plot {path}", file=sys.stderr, flush=True)
    if args.out:
        atomic_write(args.out, lambda f: f.write(json.dumps(record, indent=2).encode()))


if __name__ == "__main__":
    main()
