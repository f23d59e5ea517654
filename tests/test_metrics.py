"""Metrics of the field, checked against hand-computed values."""

import numpy as np
import pytest

from pyro_mfm.infer.metrics import (
    calibrated_ece_draws,
    classification_metrics,
    columnwise_pearson,
    imputation_metrics,
    interval_coverage,
    multilabel_metrics,
    regression_metrics,
    sentiment_metrics,
)


def test_sentiment_metrics_follow_the_mosi_conventions():
    t = np.array([-3.0, -1.2, 0.0, 0.4, 2.6, 3.0])
    p = np.array([-3.4, 0.3, -0.2, 0.6, 2.4, 5.0])
    m = sentiment_metrics(t, p)
    assert m["mae"] == pytest.approx(np.mean(np.abs(t - p)))
    # has-0: negative (< 0) against non-negative (>= 0), all six samples: -1.2 -> 0.3 and 0.0 -> -0.2 are wrong
    assert m["acc2_has0"] == pytest.approx(4 / 6)
    # non-0: the true 0 is dropped; 5 samples, -1.2 -> 0.3 wrong
    assert m["acc2_non0"] == pytest.approx(4 / 5)
    # Acc-7 clips both to [-3, 3] before rounding: -3.4 -> -3 and 5.0 -> 3 are right (unclipped, 5.0 would be
    # wrong); -1 vs 0, 0 vs 1 (0.4 vs 0.6) and 3 vs 2 (2.6 vs 2.4) are wrong
    assert m["acc7"] == pytest.approx(3 / 6)
    # Acc-5 clips to [-2, 2]: 2.6 and 2.4 both become 2, -3 and -3.4 both -2; -1 vs 0 and 0 vs 1 stay wrong
    assert m["acc5"] == pytest.approx(4 / 6)


def test_regression_and_classification_metrics():
    y = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0]])
    r = regression_metrics(y, y + np.array([1.0, -1.0]))
    assert r["mae"] == 1.0 and r["mse"] == 1.0 and r["corr"] == pytest.approx(1.0)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    c = classification_metrics(np.array([0, 1, 1, 1]), probs)
    assert c["accuracy"] == 0.75
    assert c["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert interval_coverage(np.array([0.0, 1.0, 2.0]), np.array([-1, 1.5, 1]), np.array([1, 2, 3])) == 2 / 3


def test_multilabel_ece_is_each_labels_own_averaged():
    """A multilabel target's ECE is the mean over its labels of each label's binary ECE: label 0's probabilities
    0.9 with 3 of 4 right (|0.75 - 0.9|), label 1's 0.5 (|0.5 - 0.5| in one bin, by the confidence 0.5); accuracy over
    every entry."""
    y = np.array([[1, 1], [1, 0], [1, 1], [0, 0]])
    probs = np.array([[0.9, 0.5], [0.9, 0.5], [0.9, 0.5], [0.9, 0.5]])
    m = multilabel_metrics(y, probs)
    assert m["ece"] == pytest.approx((0.15 + 0.0) / 2)
    assert m["accuracy"] == pytest.approx(5 / 8)  # label 0 predicted 1 everywhere (3 right), label 1 0 (2 right)
    assert 0 < m["ece_floor"] < 0.5 and 0 <= m["calibration_p"] <= 1
    labels = (np.random.default_rng(0).random((400, 3)) < [0.2, 0.5, 0.8]).astype(int)  # drawn from the probs
    calibrated = multilabel_metrics(labels, np.tile([0.2, 0.5, 0.8], (400, 1)))
    assert calibrated["calibration_p"] > 0.05
    overconfident = multilabel_metrics(labels, np.tile([0.02, 0.5, 0.98], (400, 1)))
    assert overconfident["calibration_p"] < 0.01 and overconfident["ece"] > calibrated["ece"]


def test_calibrated_ece_is_the_binomial_expectation():
    """With every confidence c in one bin, a calibrated model's ECE is |K / n - c| with K ~ Binomial(n, c): the
    draws' mean matches that exact expectation within 4 Monte Carlo standard errors."""
    from scipy.stats import binom

    n, c, draws = 50, 0.75, 4000
    probs = np.tile([c, 1 - c], (n, 1))
    k = np.arange(n + 1)
    exact = float((binom.pmf(k, n, c) * np.abs(k / n - c)).sum())
    ece = calibrated_ece_draws(probs, draws=draws, seed=1)
    assert ece.shape == (draws,)
    assert ece.mean() == pytest.approx(exact, abs=4 * ece.std() / np.sqrt(draws))
    np.testing.assert_array_equal(ece, calibrated_ece_draws(probs, draws=draws, seed=1))  # seeded


def test_calibration_p_separates_calibrated_from_overconfident():
    """Labels drawn from the probabilities themselves give a p-value that is uniform over data sets (here it is
    above 0.05 with this fixed seed, as 95% of data sets would be); a model that claims 0.15 more confidence than
    its accuracy on 2,000 samples is far outside the calibrated draws (p = 0), while its ECE floor, which depends on
    the confidences alone, is the same."""
    rng = np.random.default_rng(5)
    n, classes = 2000, 10
    c = rng.uniform(0.3, 1.0, n)
    probs = np.repeat(((1 - c) / (classes - 1))[:, None], classes, 1)
    probs[:, 0] = c
    right = rng.random(n) < c
    calibrated = classification_metrics(np.where(right, 0, 1), probs)
    assert calibrated["calibration_p"] > 0.05
    over = classification_metrics(np.where(rng.random(n) < c - 0.15, 0, 1), probs)
    assert over["calibration_p"] == 0.0 and over["ece"] > 0.1
    assert over["ece_floor"] == calibrated["ece_floor"]


def test_columnwise_pearson_is_numpys_correlation_of_each_column():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 4))
    b = a * [1.0, -2.0, 0.0, 0.3] + rng.normal(size=(50, 4))
    b[:, 3] = 7.0  # constant in b
    a[:, 2] = -1.0  # constant in a
    r = columnwise_pearson(a, b)
    for j in (0, 1):
        assert r[j] == pytest.approx(np.corrcoef(a[:, j], b[:, j])[0, 1], abs=1e-12)
    assert np.isnan(r[2]) and np.isnan(r[3])
    assert np.isnan(columnwise_pearson(a[:1], b[:1])).all()


def test_imputation_metrics_score_only_held_out_real_steps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 2))
    imputed = x + 0.5
    steps = np.ones((30, 4), bool)
    steps[:, 0] = False
    imputed[:, 0] = 1e6  # padding: never counted
    m = imputation_metrics(x, imputed, steps)
    assert m["mse"] == pytest.approx(0.25) and m["corr"] == pytest.approx(1.0) and m["n"] == 30
    assert imputation_metrics(x, imputed, np.zeros((30, 4), bool))["n"] == 0


def test_per_step_mean_baseline_uses_each_steps_real_training_values():
    """Sequences whose feature drifts with the step: the per-step mean imputes every real step exactly; the
    per-feature mean leaves the drift's variance; padding and missing samples are left out of both."""
    from pyro_mfm.data.dataset import from_arrays
    from pyro_mfm.infer.evaluate import mean_imputation_baseline

    T, n = 4, 6
    lengths = np.array([4, 3, 2, 4, 1, 4])
    steps = np.arange(T)[None] >= (T - lengths)[:, None]  # front padding
    x = np.broadcast_to(np.arange(T, dtype=float)[None, :, None], (n, T, 1)) * steps[..., None]
    x = x + 100.0 * ~steps[..., None]  # padding values must never count
    present = np.array([True, True, True, True, True, False])
    ds = from_arrays(
        {"s": x * present[:, None, None] + 50.0 * ~present[:, None, None]},
        np.zeros(n),
        steps={"s": steps},
        present={"s": present},
    )["train"]
    per_step = mean_imputation_baseline(ds, ds, per_step=True)["s"]["mse"]
    per_feature = mean_imputation_baseline(ds, ds)["s"]["mse"]
    real = np.arange(T)[None].repeat(n, 0)[steps & present[:, None]].astype(float)
    assert per_step == pytest.approx(0.0, abs=1e-12)
    assert per_feature == pytest.approx(real.var())


def test_mixture_quantiles_hold_their_mass_and_cover_draws_of_the_mixture():
    """The interval of a regression label is the central interval of the mixture of the K draws' distributions: its
    CDF at the endpoints is exactly 5% and 95%, so y drawn from that mixture falls inside 90% of the time (within
    3 binomial standard errors, sqrt(.9 * .1 / n)). Empirical quantiles of one y per draw (K = 100) fall short."""
    import pyro.distributions as dist
    import torch

    from pyro_mfm.infer.predict import mixture_quantiles

    g = torch.Generator().manual_seed(0)
    K, N, reps = 100, 2000, 10
    loc = torch.randn(K, N, 1, generator=g) * 2
    scale = torch.rand(K, N, 1, generator=g) + 0.1
    probs = torch.tensor([0.05, 0.95])
    for family in (dist.Normal, dist.Laplace):
        p = family(loc, scale)
        lo, hi = mixture_quantiles(p.to_event(1), probs)
        mass = p.cdf(torch.stack([lo, hi]).unsqueeze(1)).mean(1)
        assert torch.allclose(mass, probs[:, None, None].expand_as(mass), atol=1e-5)
        torch.manual_seed(1)
        k = torch.randint(K, (reps, N), generator=g)  # y ~ the mixture: a component, then a draw from it
        y = family(loc[k, torch.arange(N)], scale[k, torch.arange(N)]).sample()
        covered = ((y >= lo) & (y <= hi)).double().mean().item()
        assert abs(covered - 0.9) < 3 * (0.09 / (reps * N)) ** 0.5
        e_lo, e_hi = torch.quantile(p.sample(), probs, dim=0)  # the empirical interval of one draw per component
        assert ((y >= e_lo) & (y <= e_hi)).double().mean().item() < covered - 0.01


def test_weighted_mixture_quantiles_hold_their_mass():
    """With weights on the draws (an ensemble whose members' forms are weighted), the interval's endpoints hold 5%
    and 95% of the weighted mixture sum_k w_k p_k, which differs from the equal mixture's."""
    import pyro.distributions as dist
    import torch

    from pyro_mfm.infer.predict import mixture_quantiles

    g = torch.Generator().manual_seed(0)
    K, N = 40, 500
    loc = torch.randn(K, N, 1, generator=g) * 2
    scale = torch.rand(K, N, 1, generator=g) + 0.1
    log_w = torch.log_softmax(torch.randn(K, N, generator=g) * 2, 0)
    probs = torch.tensor([0.05, 0.95])
    p = dist.Normal(loc, scale)
    lo, hi = mixture_quantiles(p.to_event(1), probs, log_w)
    mass = (p.cdf(torch.stack([lo, hi]).unsqueeze(1)) * log_w.exp()[None, :, :, None]).sum(1)
    assert torch.allclose(mass, probs[:, None, None].expand_as(mass), atol=1e-5)
    equal = mixture_quantiles(p.to_event(1), probs)
    assert (equal - torch.stack([lo, hi])).abs().mean() > 0.1


def test_weighted_mixture_samples_come_from_the_draws_their_weights_pick():
    """Kept samples of a weighted mixture: where one draw has all the weight of a sample, every y of that sample is
    drawn from it (the draws' distributions far apart and narrow); where two share it, about as often as their
    weights say (within 4 binomial standard errors)."""
    import pyro.distributions as dist
    import torch

    from pyro_mfm.infer.predict import _mixture_sample

    K, N = 50, 3
    loc = torch.arange(K, dtype=torch.float32)[:, None].expand(K, N) * 10
    w = torch.zeros(K, N)
    w[7, 0] = 1.0  # sample 0: all the weight on draw 7
    w[3, 1], w[40, 1] = 0.25, 0.75  # sample 1: draws 3 and 40
    w[:, 2] = 1.0 / K  # sample 2: equal
    torch.manual_seed(0)
    ys = torch.cat([_mixture_sample(dist.Normal(loc, 1e-3), w.log()) for _ in range(40)])  # (40 K, N)
    assert torch.allclose(ys[:, 0], torch.full_like(ys[:, 0], 70.0), atol=0.1)
    picked = (ys[:, 1] - 400).abs() < 1
    assert torch.all(picked | ((ys[:, 1] - 30).abs() < 1))
    n = ys.shape[0]
    assert abs(picked.double().mean().item() - 0.75) < 4 * (0.75 * 0.25 / n) ** 0.5
    assert len(torch.unique(ys[:, 2].round())) > K / 2  # equal weights reach most draws


def test_class_f1_is_scikit_learns_macro_and_weighted_f1():
    """One per-class call gives what ``f1_score`` gives with ``average="macro"`` and ``"weighted"``, classes that
    are never predicted (F1 0) or never true included."""
    import warnings

    from sklearn.metrics import f1_score

    from pyro_mfm.infer.metrics import class_f1

    rng = np.random.default_rng(0)
    for _ in range(50):
        k, n = int(rng.integers(2, 8)), int(rng.integers(1, 40))
        y, pred = rng.integers(0, k, n), rng.integers(0, k, n)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = (f1_score(y, pred, average="macro"), f1_score(y, pred, average="weighted"))
            assert class_f1(y, pred) == pytest.approx(expected)
    assert all(np.isnan(class_f1(np.array([], int), np.array([], int))))
