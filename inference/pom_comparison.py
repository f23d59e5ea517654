"""POM test MAE and correlation (mean over the 17 ratings) of the MFM trained with ``elbo`` and ``wae``, with both
modalities observed and with one missing, next to a ridge regression on time-averaged features; and the imputation
MSE of each modality from the other, next to the training mean per feature and per (step, feature).

    python inference/pom_comparison.py [CONFIG] [--set table.key=value ...]

Default configuration: ``models/mfm-pom.toml`` (data at ``../shared/datasets/pom``). Prints two Markdown tables.
"""

import sys
from pathlib import Path

import numpy as np

from pyro_mfm.config import Config
from pyro_mfm.data import load_data
from pyro_mfm.infer import fit
from pyro_mfm.infer.evaluate import evaluate, mean_imputation_baseline
from pyro_mfm.infer.metrics import regression_metrics

ROOT = Path(__file__).resolve().parents[1]
SUBSETS = {"audio + video": ["audio", "video"], "audio (video missing)": ["audio"], "video (audio missing)": ["video"]}


def time_averaged(ds, names):
    """Each modality averaged over its real steps, plus its presence flag (zeros where missing)."""
    cols = []
    for m in names:
        x, s = np.asarray(ds.features[m]), ds.steps[m] & ds.present[m][:, None]
        cols += [(x * s[..., None]).sum(1) / np.maximum(s.sum(1), 1)[:, None], ds.present[m][:, None].astype(float)]
    return np.concatenate(cols, 1)


def ridge(data, names):
    """Ridge regression on standardised time-averaged features, its penalty chosen on validation MAE."""
    from sklearn.linear_model import Ridge

    tr, va, te = data["train"], data["valid"], data["test"]
    X = time_averaged(tr, names)
    mu, sd = X.mean(0), X.std(0) + 1e-8
    z = lambda ds: (time_averaged(ds, names) - mu) / sd  # noqa: E731
    y = lambda ds: np.asarray(ds.labels)  # noqa: E731
    alpha = min(
        (np.abs(Ridge(alpha=a).fit(z(tr), y(tr)).predict(z(va)) - y(va)).mean(), a)
        for a in (0.1, 1, 10, 100, 1000, 10000)
    )[1]
    return Ridge(alpha=alpha).fit(z(tr), y(tr)).predict(z(te))


def main(argv):
    path = argv[0] if argv and not argv[0].startswith("--") else str(ROOT / "models" / "mfm-pom.toml")
    overrides = (
        [a for a in argv[1:] if a != "--set"]
        if argv and not argv[0].startswith("--")
        else [a for a in argv if a != "--set"]
    )
    base = Config.load(path, ["train.progress=False"] + overrides)
    data = load_data(base)
    test, y = data["test"], np.asarray(data["test"].labels)
    rows, imputed = {}, {}
    for objective in ("elbo", "wae"):
        mfm = fit(base.override([f"model.objective='{objective}'"]), data).mfm
        records = evaluate(
            mfm,
            test,
            list(SUBSETS.values()),
            num_samples=base.evaluate.num_samples,
            impute_samples=base.evaluate.num_samples,
            progress=False,
        )
        for label, rec in zip(SUBSETS, records):
            rows.setdefault(label, {})[f"MFM {objective}"] = rec["label"]
            for m, v in rec.get("imputation", {}).items():
                imputed.setdefault(m, {})[f"MFM {objective}"] = v["mse"]
    for per_step, name in ((False, "training mean per feature"), (True, "training mean per (step, feature)")):
        for m, v in mean_imputation_baseline(data["train"], test, per_step).items():
            imputed[m][name] = v["mse"]
    for label, observed in SUBSETS.items():
        rows[label]["ridge (time-averaged)"] = regression_metrics(y, ridge(data, observed))
    mean = np.asarray(data["train"].labels).mean(0)
    lines = ["| observed | model | test MAE | test corr |", "|---|---|---|---|"]
    for label, models in rows.items():
        lines += [f"| {label} | {name} | {r['mae']:.4f} | {r['corr']:.4f} |" for name, r in models.items()]
    lines.append(f"| - | training mean per rating | {np.abs(y - mean).mean():.4f} | - |")
    lines += ["", "| imputed (from the other) | imputation | test MSE (real steps) |", "|---|---|---|"]
    for m, models in imputed.items():
        lines += [f"| {m} | {name} | {mse:.5f} |" for name, mse in models.items()]
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
