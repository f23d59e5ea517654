"""Plots: every function renders representative and edge-case inputs to a PNG; calibration numbers; atomic save."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

from pyro_mfm import plots
from pyro_mfm.infer.metrics import calibrated_ece_draws

MODS = ["fou", "fac", "kar", "pix", "zer", "mor"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _written(fig, tmp_path, name="plot.png"):
    assert isinstance(fig, Figure)
    path = plots.save(fig, tmp_path / name)
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 2000
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temporary file left behind
    return path


def _legend_texts(fig):
    return [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]


# ----------------------------------------------------------------------------------------------- robustness


def _all_subsets(metric="accuracy", seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(1, len(MODS) + 1):
        for sub in itertools.combinations(MODS, k):
            out.append({"observed": list(sub), metric: 0.5 + 0.07 * k + rng.normal(0, 0.03), "n": 400})
    return out


@pytest.mark.parametrize("baseline", [None, 0.1, {m: 0.6 + 0.03 * i for i, m in enumerate(MODS)}])
def test_metric_by_observed_all_subsets(tmp_path, baseline):
    results = _all_subsets()
    assert len(results) == 2 ** len(MODS) - 1
    _written(plots.metric_by_observed(results, "accuracy", baseline=baseline), tmp_path)


def test_metric_by_observed_edge_cases(tmp_path):
    # one observed subset only
    _written(plots.metric_by_observed([{"observed": ["kar"], "accuracy": 0.9}]), tmp_path, "one.png")
    # NaN / missing values are drawn as missing, and a lower-is-better metric
    res = _all_subsets("mae")
    res[0]["mae"] = float("nan")
    res[7]["mae"] = None
    del res[20]["mae"]
    fig = plots.metric_by_observed(res, "mae", baseline=0.4)
    assert any("missing" in t and "n = 3" in t for t in _legend_texts(fig))
    _written(fig, tmp_path, "nan.png")
    # every value missing
    _written(
        plots.metric_by_observed([{"observed": ["a"], "f1": math.nan}, {"observed": ["a", "b"]}], "f1"),
        tmp_path,
        "allnan.png",
    )


def _title(fig):
    return fig.axes[0].get_title()


def test_against_baseline_counts_the_subsets_behind_beyond_the_tolerance(tmp_path):
    rows = [
        {"observed": list(sub), "model": 0.9 + 0.01 * k, "model_sd": 0.002, "baseline": 0.9 + 0.01 * k}
        for k in range(1, 4)
        for sub in itertools.combinations(MODS, k)
    ]
    rows[0]["model"] -= 0.004  # behind, within the tolerance
    rows[1]["model"] -= 0.006  # behind, beyond it
    rows[2]["model"] += 0.05  # ahead
    rows[3]["baseline"] = float("nan")  # no baseline: left out, and counted
    fig = plots.against_baseline(rows, "accuracy", tolerance=0.005, baseline_label="logistic regression")
    assert f"1 of {len(rows) - 1} subsets behind the logistic regression by more than 0.005" in _title(fig)
    assert "1 without a value" in _title(fig) and "higher is better" in _title(fig)
    named = [t.get_text() for t in fig.axes[0].texts]
    assert named == [" + ".join(rows[1]["observed"])]
    _written(fig, tmp_path, "accuracy.png")
    # lower is better (MAE): a model above the baseline is behind it; with few subsets every one is named
    rows = [
        {"observed": ["text"], "model": 0.55, "baseline": 0.56},
        {"observed": ["audio"], "model": 1.08, "baseline": 1.0},
        {"observed": ["text", "audio"], "model": 0.56, "baseline": 0.56},
    ]
    fig = plots.against_baseline(rows, "mae", baseline_label="ridge")
    assert "1 of 3 subsets behind the ridge" in _title(fig) and "lower is better" in _title(fig)
    assert sorted(t.get_text() for t in fig.axes[0].texts) == ["audio", "text", "text + audio"]
    _written(fig, tmp_path, "mae.png")


def test_nested_pairs_counts_the_pairs_worse_by_more_than_one_standard_error(tmp_path):
    pair = lambda gain, se: {"smaller": ["a"], "larger": ["a", "b"], "gain": gain, "se": se}  # noqa: E731
    pairs = [pair(0.02, 0.01), pair(-0.005, 0.01), pair(-0.02, 0.01), pair(0.0, 0.0), pair(-0.01, 0.0)]
    pairs += [pair(float("nan"), 0.01)]
    fig = plots.nested_pairs(pairs, metric="accuracy")
    # -0.02 (two se) and a loss with no spread at all are worse; -0.005 (half an se) and 0 +- 0 are not; NaN is out
    assert "2 of 5 nested pairs" in _title(fig)
    assert "... and" not in fig.axes[0].texts[0].get_text()
    assert fig.axes[0].texts[0].get_text().count("a -> a + b") == 2
    _written(fig, tmp_path, "nested.png")
    _written(plots.nested_pairs([], metric="MAE"), tmp_path, "none.png")


def test_imputation_error(tmp_path):
    close = {m: {"mse": 0.2 + 0.1 * i, "baseline_mse": 1.0, "corr": 0.9 - 0.1 * i} for i, m in enumerate(MODS)}
    _written(plots.imputation_error(close), tmp_path, "a.png")
    wide = {"audio": {"mse": 1e-3, "baseline_mse": 2e-2, "corr": 0.8}, "visual": {"mse": 40.0, "baseline_mse": 90.0}}
    fig = plots.imputation_error(wide)
    assert fig.axes[0].get_yscale() == "log"
    _written(fig, tmp_path, "b.png")
    odd = {"text": {"mse": float("nan"), "corr": float("nan")}, "audio": {"mse": 0.5}}  # no baseline, NaN
    _written(plots.imputation_error(odd), tmp_path, "c.png")


# ----------------------------------------------------------------------------------------------- latent space


def _clusters(n=300, d=8, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centers = rng.normal(0, 3, (k, d))
    return centers[y] + rng.normal(0, 1, (n, d)), y


def test_latent_projection_pca_and_tsne(tmp_path):
    z, y = _clusters()
    _written(plots.latent_projection(z, y, "pca", class_names=["zero", "one", "two", "three"]), tmp_path, "a.png")
    z, y = _clusters(n=60, d=5, k=3, seed=1)
    _written(plots.latent_projection(z, y, method="tsne"), tmp_path, "b.png")
    with pytest.raises(ValueError):
        plots.latent_projection(z, y, method="umap")


def test_latent_projection_edge_cases(tmp_path):
    rng = np.random.default_rng(2)
    z2 = rng.normal(size=(200, 2))
    _written(plots.latent_projection(z2, z2[:, 0] * 1.3 + rng.normal(0, 0.2, 200)), tmp_path, "reg.png")  # continuous
    _written(plots.latent_projection(rng.normal(size=(50, 6)), np.zeros(50, int)), tmp_path, "one.png")  # one class
    _written(plots.latent_projection(rng.normal(size=(40,)), rng.integers(0, 2, 40)), tmp_path, "d1.png")  # d = 1
    z = rng.normal(size=(30, 4))
    z[3] = np.nan
    _written(plots.latent_projection(z, np.array(["a", "b", "c"] * 10)), tmp_path, "nan.png")  # string labels


# ----------------------------------------------------------------------------------------------- training


def _log(epochs=30, valid_every=1):
    out = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "train_loss": 50 * math.exp(-e / 8) + 5}
        if e % valid_every == 0:
            # both peak at epoch 20 (over-fitting afterwards)
            row["valid_accuracy"] = 0.9 - 0.4 * math.exp(-e / 6) - 0.01 * max(0, e - 20)
            row["valid_loss"] = 10 - 0.2 * min(e, 20) + 0.3 * max(0, e - 20)
        out.append(row)
    return out


def test_training_curves(tmp_path):
    fig = plots.training_curves(_log())
    assert "best valid accuracy" in fig.axes[0].get_title() and "epoch 20" in fig.axes[0].get_title()
    _written(fig, tmp_path, "a.png")
    _written(plots.training_curves(_log(valid_every=3)), tmp_path, "b.png")  # validation every 3 epochs
    _written(plots.training_curves([{"epoch": 1, "train_loss": 3.0}]), tmp_path, "c.png")  # no validation
    only_loss = [{"epoch": r["epoch"], "train_loss": r["train_loss"], "valid_loss": r["valid_loss"]} for r in _log()]
    fig = plots.training_curves(only_loss)
    assert "epoch 20" in fig.axes[0].get_title()  # minimum of the validation loss
    _written(fig, tmp_path, "d.png")


# ----------------------------------------------------------------------------------------------- calibration


def test_ece_hand_computed():
    # 2 bins: (0, .5] and (.5, 1].
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # conf .9, right
            [0.2, 0.7, 0.1],  # conf .7, wrong
            [0.4, 0.35, 0.25],  # conf .4, right
            [0.3, 0.3, 0.4],
        ]
    )  # conf .4, wrong
    labels = np.array([0, 0, 0, 1])
    # high bin: acc .5, conf .8 -> .3 * 2/4; low bin: acc .5, conf .4 -> .1 * 2/4
    assert plots.expected_calibration_error(probs, labels, n_bins=2) == pytest.approx(0.20)
    b = plots.calibration_bins(probs, labels, n_bins=2)
    np.testing.assert_allclose(b["count"], [2, 2])
    np.testing.assert_allclose(b["accuracy"], [0.5, 0.5])
    np.testing.assert_allclose(b["confidence"], [0.4, 0.8])
    # binary probabilities of class 1: conf .85 right (bin 8), conf .75 wrong (bin 7)
    assert plots.expected_calibration_error([0.85, 0.25], [1, 1], n_bins=10) == pytest.approx(0.5 * 0.15 + 0.5 * 0.75)
    assert plots.expected_calibration_error(np.eye(3), [0, 1, 2]) == 0.0  # confident and right
    assert math.isnan(plots.expected_calibration_error(np.zeros((0, 3)), []))


def _calibrated(n, n_classes, rng, shift=0.0):
    """Top-label confidence c ~ U(1/C, 1); the top label is right with probability c - shift."""
    c = rng.uniform(1.0 / n_classes, 1.0, n)
    pred = rng.integers(0, n_classes, n)
    probs = np.repeat(((1 - c) / (n_classes - 1))[:, None], n_classes, axis=1)
    probs[np.arange(n), pred] = c
    right = rng.random(n) < c - shift
    other = (pred + rng.integers(1, n_classes, n)) % n_classes
    return probs, np.where(right, pred, other)


@pytest.mark.parametrize("n_bins", [5, 10, 20])
def test_ece_small_for_calibrated_data(n_bins):
    """Bound. Given the confidences, in bin b the gap acc_b - conf_b is a mean of n_b independent centred terms
    (correct_i - c_i), so E|gap_b| <= sd <= 1 / (2 sqrt(n_b)) and
    E[ECE] <= sum_b (n_b / N) / (2 sqrt(n_b)) = sum_b sqrt(n_b) / (2N) <= sqrt(B N) / (2N) = sqrt(B / N) / 2
    (Cauchy-Schwarz). Flipping one correct_i moves ECE by at most 1/N, so by McDiarmid
    P(ECE > E[ECE] + t) <= exp(-2 N t^2); t = sqrt(log(1e6) / (2N)) makes a false failure < 1e-6."""
    n = 20000
    bound = 0.5 * math.sqrt(n_bins / n) + math.sqrt(math.log(1e6) / (2 * n))
    rng = np.random.default_rng(n_bins)
    probs, labels = _calibrated(n, 4, rng)
    assert plots.expected_calibration_error(probs, labels, n_bins) < bound
    # the bound has power: over-confidence by 0.15 is detected
    probs, labels = _calibrated(n, 4, rng, shift=0.15)
    assert plots.expected_calibration_error(probs, labels, n_bins) > bound + 0.05


def test_reliability_diagram(tmp_path):
    rng = np.random.default_rng(3)
    probs, labels = _calibrated(2000, 10, rng, shift=0.1)
    fig = plots.reliability_diagram(probs, labels)
    ece = plots.expected_calibration_error(probs, labels)
    assert f"ECE = {ece:.3f}" in fig.axes[0].get_title()
    # beside it, what a calibrated model with these confidences shows on this many samples, and its bars
    floor = calibrated_ece_draws(probs).mean()
    assert f"calibrated model at this n: ECE {floor:.3f}" in fig.axes[0].get_title()
    assert "90% of a calibrated model's accuracies" in fig.axes[0].get_legend_handles_labels()[1]
    _written(fig, tmp_path, "a.png")
    _written(plots.reliability_diagram(rng.random(300), rng.integers(0, 2, 300), n_bins=20), tmp_path, "b.png")
    _written(plots.reliability_diagram(np.ones((20, 1)), np.zeros(20, int)), tmp_path, "c.png")  # single class


def test_binomial_interval_matches_direct_sum():
    for n, p in [(10, 0.1), (57, 0.2), (200, 0.05)]:
        cdf = np.cumsum([math.comb(n, k) * p**k * (1 - p) ** (n - k) for k in range(n + 1)])
        lo = int(np.argmax(cdf >= 0.025))
        hi = int(np.argmax(cdf >= 0.975))
        assert plots.binomial_interval(n, p) == (lo, hi)
    assert plots.binomial_interval(0, 0.1) == (0, 0)


def test_pit_histogram(tmp_path):
    rng = np.random.default_rng(4)
    fig = plots.pit_histogram(rng.random(1000))
    _written(fig, tmp_path, "a.png")
    skewed = np.concatenate([rng.beta(0.5, 0.5, 500), [np.nan, np.inf]])  # over-confident, with bad values
    fig = plots.pit_histogram(skewed, n_bins=20)
    assert "2 non-finite dropped" in fig.axes[0].get_title()
    _written(fig, tmp_path, "b.png")
    _written(plots.pit_histogram([]), tmp_path, "c.png")


def test_interval_plot(tmp_path):
    rng = np.random.default_rng(5)
    mean = rng.normal(0, 1.5, 1000)
    y = mean + rng.normal(0, 0.5, 1000)
    lo, hi = mean - 1.96 * 0.5, mean + 1.96 * 0.5
    cov = plots.interval_coverage(y, lo, hi)
    assert abs(cov - 0.95) < 0.03
    fig = plots.interval_plot(y, mean, lo, hi, max_points=200, level=0.95)
    assert f"{cov:.1%}" in fig.axes[0].get_title() and "200 of 1000 shown" in fig.axes[0].get_title()
    _written(fig, tmp_path, "a.png")
    y[:3] = np.nan
    _written(plots.interval_plot(y[:7], mean[:7], lo[:7], hi[:7]), tmp_path, "b.png")
    assert plots.interval_coverage([0, 1, 2], [0, 2, 0], [1, 3, 1]) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------------- classification, sequences


def test_confusion_matrix(tmp_path):
    rng = np.random.default_rng(6)
    y = rng.integers(0, 10, 500)
    pred = np.where(rng.random(500) < 0.8, y, rng.integers(0, 10, 500))
    fig = plots.confusion_matrix(y, pred, class_names=[f"digit {i}" for i in range(10)])
    assert f"{np.mean(y == pred):.1%}" in fig.axes[0].get_title()
    _written(fig, tmp_path, "a.png")
    _written(plots.confusion_matrix(np.zeros(10, int), np.zeros(10, int)), tmp_path, "b.png")  # one class
    _written(plots.confusion_matrix([0, 1, 1], [2, 1, 0], normalize=False), tmp_path, "c.png")  # unseen predicted


def test_sequence_imputation(tmp_path):
    rng = np.random.default_rng(7)
    t = np.arange(50)[:, None]
    x = np.sin(t / 5 + np.arange(5)) + rng.normal(0, 0.05, (50, 5))
    xi = x + rng.normal(0, 0.2, (50, 5))
    mask = np.arange(50) < 38
    _written(plots.sequence_imputation(x, xi, mask), tmp_path, "a.png")
    mask2 = mask.copy()
    mask2[10:14] = False
    fig = Figure()
    ax = fig.add_subplot()
    assert plots.sequence_imputation(x, xi, mask2, features=(1, 4, 99), ax=ax) is fig  # one axes, bad index
    _written(fig, tmp_path, "b.png")
    _written(plots.sequence_imputation(x[:, 0], xi[:, 0], np.ones(50, bool)), tmp_path, "c.png")  # 1-D


# ----------------------------------------------------------------------------------------------- save


def test_save_accepts_axes_and_creates_directory(tmp_path):
    fig = Figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [1, 0])
    out = plots.save(ax, tmp_path / "sub" / "dir" / "x.png")
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert os.listdir(tmp_path / "sub" / "dir") == ["x.png"]


def test_save_closes_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    num = fig.number
    plots.training_curves(_log(), ax=ax)
    plots.save(fig, tmp_path / "p.png")
    assert not plt.fignum_exists(num)


def test_failed_save_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "report.png"
    target.write_bytes(b"previous image")
    fig = plots.pit_histogram(np.linspace(0, 1, 50))

    def broken(fh, **kwargs):
        fh.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save(fig, target)
    assert target.read_bytes() == b"previous image"
    assert os.listdir(tmp_path) == ["report.png"]
    with pytest.raises(TypeError):
        plots.save("not a figure", tmp_path / "y.png")


def test_module_does_not_need_pyplot(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from pyro_mfm import plots\n"
        f"plots.save(plots.pit_histogram(np.random.default_rng(0).random(100)), {str(tmp_path / 'h.png')!r})\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DISPLAY"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
    assert (tmp_path / "h.png").stat().st_size > 2000
