"""The linear-Gaussian generator and its closed-form oracle.

Two kinds of checks:

* exact: the oracle (information form, Woodbury, grouped by pattern) against an independent dense computation that
  builds the joint covariance of (z_y, label score, all features) of one sample and conditions it in moment form;
* statistical, against fresh draws of the sampler (so they also check that sampler and oracle tell the same story).
  Each is a statement "E[q] = q0" for a per-sample statistic q that is i.i.d. across samples, tested as
  |mean(q) - q0| <= 5 * sd(q) / sqrt(N): by the CLT mean(q) is approximately N(q0, Var(q) / N), and sd(q) estimates
  sqrt(Var(q)) to relative error O(N^-1/2), so a correct oracle fails one check with probability about 5.7e-7
  (there are a few hundred checks, all with fixed seeds). Proportions are the case q = indicator (binomial bound).

Why the statistics have the stated means: for jointly Gaussian (u, x_O) and u_hat = E[u | x_O], the residual
u - u_hat has mean 0, is uncorrelated with every function of x_O (orthogonality) and has covariance Cov(u | x_O).
Missingness is independent of the data, so conditioning on the observation pattern changes nothing, and the
stored features (zero where missing) are a function of (x_O, pattern). Hence with e = u - u_hat:
E[e] = 0, E[e * g(x_O)] = 0, E[Sigma^{-1/2} e e^T Sigma^{-T/2}] = I, E[e_j^2 / var_j] = 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.linear_model import LogisticRegression

from pyro_mfm.data import DataError, LinearGaussianMFM, MultimodalDataset
from pyro_mfm.data.synthetic import SCHEMA_NAME

K_SIGMA = 5.0


def assert_mean(q, expected=0.0, what=""):
    q = np.asarray(q, dtype=np.float64).reshape(len(q), -1)
    se = q.std(axis=0, ddof=1) / np.sqrt(len(q))
    dev = np.abs(q.mean(axis=0) - expected)
    assert np.all(dev <= K_SIGMA * se + 1e-12), f"{what}: mean {q.mean(axis=0)}, expected {expected}, se {se}"


@pytest.fixture(scope="module")
def reg():
    """Regression with 2 outputs; a vector, a sequence (T=6, lengths 3..6) and a small vector modality."""
    return LinearGaussianMFM.random(
        {"a": 4, "b": (6, 3), "c": 2},
        z_y_dim=2,
        z_a_dims={"a": 1, "b": 2, "c": 1},
        label_dim=2,
        noise={"a": 0.5, "b": 0.7, "c": 0.3},
        seed=0,
    )


@pytest.fixture(scope="module")
def cat():
    """Ordinal probit with 3 classes; a vector and a sequence (T=5, lengths 3..5)."""
    return LinearGaussianMFM.random(
        {"a": 3, "b": (5, 2)}, z_y_dim=2, label="categorical", num_classes=3, label_noise=0.3, seed=3
    )


# ---------------------------------------------------------------------- dense reference
def dense_conditional(gen, ds, i, observed=None):
    """Block -> (mean, cov) of (z_y, score, x_m) of sample i given its conditioned features, by moment-form
    conditioning of the joint Gaussian. Rows of x_m: real steps if conditioned, else all positions."""
    names = [m.name for m in gen.modalities]
    use = set(names if observed is None else observed)
    ky, kas = gen.z_y_dim, [m.V.shape[-1] for m in gen.modalities]
    start = np.cumsum([ky] + kas)  # z_a,j occupies columns start[j]:start[j+1] of the latent vector
    total = start[-1]
    L, mu0, nv, block, obs, val = [], [], [], [], [], []

    def row(b, w, j=None, v=None, c=0.0, noise=0.0, o=False, value=0.0):
        r = np.zeros(total)
        r[:ky] = w
        if j is not None:
            r[start[j] : start[j + 1]] = v
        L.append(r), mu0.append(c), nv.append(noise), block.append(b), obs.append(o), val.append(value)

    for k in range(ky):
        row("z", np.eye(ky)[k])
    for k in range(gen.A.shape[0]):
        row("s", gen.A[k], c=gen.b[k], noise=gen.sigma_y**2)
    for j, m in enumerate(gen.modalities):
        x = np.asarray(ds.features[m.name][i], dtype=np.float64)
        seen = bool(ds.present[m.name][i]) and m.name in use
        if m.is_sequence:
            steps = np.asarray(ds.steps[m.name][i])
            seen = seen and steps.any()
            pos = np.nonzero(steps)[0] if seen else np.arange(m.W.shape[0])
            for t in pos:
                for d in range(m.W.shape[1]):
                    row(m.name, m.W[t, d], j, m.V[t, d], m.c[d], m.sigma**2, seen, x[t, d])
        else:
            for d in range(m.W.shape[0]):
                row(m.name, m.W[d], j, m.V[d], m.c[d], m.sigma**2, seen, x[d])
    L, mu0, obs, val, block = np.array(L), np.array(mu0), np.array(obs), np.array(val), np.array(block)
    C = L @ L.T + np.diag(nv)
    U = ~obs
    K = np.linalg.solve(C[np.ix_(obs, obs)], C[np.ix_(obs, U)]).T if obs.any() else np.zeros((U.sum(), 0))
    mean = mu0[U] + K @ (val[obs] - mu0[obs])
    cov = C[np.ix_(U, U)] - K @ C[np.ix_(obs, U)]
    bu = block[U]
    return {b: (mean[bu == b], cov[np.ix_(bu == b, bu == b)]) for b in dict.fromkeys(bu.tolist())}


def test_oracle_equals_dense_conditioning(reg, cat):
    ds = reg.sample(40, missing=0.4, min_observed=0, seed=11)["train"]
    for observed in (None, ["a", "b"], ["b"], []):
        mu, S = reg.posterior_z_y(ds, observed)
        m, v = reg.predict_y(ds, observed)
        imp = reg.impute(ds, observed)
        for i in range(len(ds)):
            ref = dense_conditional(reg, ds, i, observed)
            np.testing.assert_allclose(mu[i], ref["z"][0], atol=1e-9)
            np.testing.assert_allclose(S[i], ref["z"][1], atol=1e-9)
            np.testing.assert_allclose(m[i], ref["s"][0], atol=1e-9)
            np.testing.assert_allclose(v[i], np.diag(ref["s"][1]), atol=1e-9)
            for name, (im, iv) in imp.items():
                if name in ref:  # not conditioned on: predicted at every position
                    np.testing.assert_allclose(im[i].reshape(-1), ref[name][0], atol=1e-8)
                    np.testing.assert_allclose(iv[i].reshape(-1), np.diag(ref[name][1]), atol=1e-8)
                else:  # conditioned on: the stored values, zero variance
                    np.testing.assert_array_equal(im[i], np.asarray(ds.features[name][i], np.float64))
                    assert not iv[i].any()
        if observed == []:  # nothing observed: the prior
            np.testing.assert_allclose(mu, 0.0, atol=1e-12)
            np.testing.assert_allclose(S, np.broadcast_to(np.eye(2), S.shape), atol=1e-12)
    # categorical: the probit probabilities of the dense score predictive; log density = log prob of the label
    ds = cat.sample(30, missing=0.4, seed=12)["train"]
    p, lpd = cat.predict_y(ds), cat.log_predictive_density(ds)
    edges = np.concatenate([[-np.inf], cat.thresholds, [np.inf]])
    for i in range(len(ds)):
        (sm,), ((sv,),) = dense_conditional(cat, ds, i)["s"]
        np.testing.assert_allclose(p[i], np.diff(norm.cdf((edges - sm) / np.sqrt(sv))), atol=1e-12)
    np.testing.assert_allclose(lpd, np.log(p[np.arange(len(ds)), ds.labels]), rtol=1e-10)


# ---------------------------------------------------------------------- sampler
def test_sample_layout(reg):
    sizes = {"train": 400, "valid": 50, "test": 300}
    data, lat = reg.sample(sizes, missing=0.4, label_missing=0.25, seed=7, return_latents=True)
    assert data.schema.name == SCHEMA_NAME and data.schema.names == ("a", "b", "c")
    assert [s.shape for s in data.schema.modalities] == [(4,), (6, 3), (2,)]
    assert (data.schema.label.kind, data.schema.label.dim) == ("regression", 2)
    for split, n in sizes.items():
        ds, lt = data[split], lat[split]
        assert len(ds) == n and ds.split == split and lt.z_y.shape == (n, 2)
        assert {k: v.shape for k, v in lt.z_a.items()} == {"a": (n, 1), "b": (n, 2), "c": (n, 1)}
        pres = np.stack([ds.present[m] for m in "abc"], axis=1)
        assert pres.sum(axis=1).min() >= 1  # min_observed=1 by default
        for m in "abc":
            x = ds.features[m]
            assert x.dtype == np.float32 and x.shape == (n,) + data.schema[m].shape
            p = ds.present[m].reshape((-1,) + (1,) * (x.ndim - 1))
            assert not np.any(x * ~p)  # missing -> zeros
            np.testing.assert_allclose(x, (lt.x[m] * p).astype(np.float32))
        st = ds.steps["b"]
        assert st.shape == (n, 6) and np.all(np.diff(st.astype(int), axis=1) >= 0)  # front padding
        length = st.sum(axis=1)
        assert length.min() == 3 and length.max() == 6  # uniform on ceil(T/2)..T
        assert not np.any(lt.x["b"][~st])  # padding steps are zero
        assert ds.labels.shape == (n, 2) and not np.any(ds.labels[~ds.label_present])
        np.testing.assert_array_equal(ds.labels[ds.label_present], lt.y[ds.label_present])
    # a split depends only on (seed, name, size); complete data do not depend on missingness
    again, lat2 = reg.sample({"test": 300}, missing=0.0, seed=7, return_latents=True)
    np.testing.assert_array_equal(lat2["test"].x["b"], lat["test"].x["b"])
    assert again["test"].present["a"].all()
    other = reg.sample({"test": 300}, missing=0.4, label_missing=0.25, seed=8)
    assert not np.array_equal(other["test"].features["a"], data["test"].features["a"])
    single = reg.sample(5)
    assert list(single) == ["train"] and len(single["train"]) == 5
    with pytest.raises(DataError):
        reg.sample(5, missing={"nope": 0.1})
    with pytest.raises(DataError):
        reg.sample(5, missing={"a": 1.0, "b": 1.0}, min_observed=2)
    other_gen = LinearGaussianMFM.random({"a": 4, "b": (5, 3), "c": 2})
    with pytest.raises(DataError):
        other_gen.posterior_z_y(data["test"])


def test_missing_rates(reg):
    n = 40_000
    rates = {"a": 0.1, "b": 0.3, "c": 0.6}
    ds = reg.sample(n, missing=rates, label_missing=0.2, min_observed=0, seed=3)["train"]
    for m, p in rates.items():  # binomial: sd of the observed missing fraction is sqrt(p (1 - p) / n)
        assert abs((~ds.present[m]).mean() - p) <= K_SIGMA * np.sqrt(p * (1 - p) / n), m
    assert abs((~ds.label_present).mean() - 0.2) <= K_SIGMA * np.sqrt(0.2 * 0.8 / n)
    # min_observed=1 redraws empty patterns: P(m missing | not all missing) = (p - p^3) / (1 - p^3) for one rate p
    ds = reg.sample(n, missing=0.5, min_observed=1, seed=4)["train"]
    pres = np.stack([ds.present[m] for m in "abc"], axis=1)
    assert pres.any(axis=1).all()
    q = (0.5 - 0.125) / (1 - 0.125)
    for j in range(3):
        assert abs((~pres[:, j]).mean() - q) <= K_SIGMA * np.sqrt(q * (1 - q) / n)


# ---------------------------------------------------------------------- Monte Carlo checks of the oracle
def stored_features(ds, names):
    """The stored features of ``names`` flattened, plus a constant: functions of (x_O, pattern)."""
    return np.concatenate(
        [np.ones((len(ds), 1))] + [np.asarray(ds.features[m], np.float64).reshape(len(ds), -1) for m in names], axis=1
    )


def assert_no_linear_predictor_beats(F_train, u_train, F_test, u_test, oracle_test, what):
    """Least squares of u on F (fitted on the training draws) does not beat the oracle on the test draws: paired
    per-sample differences of squared errors have mean >= -5 se (a correct oracle is the best predictor)."""
    coef, *_ = np.linalg.lstsq(F_train, u_train, rcond=None)
    d = np.sum((u_test - F_test @ coef) ** 2, axis=1) - np.sum((u_test - oracle_test) ** 2, axis=1)
    assert d.mean() >= -K_SIGMA * d.std(ddof=1) / np.sqrt(len(d)), what


def test_posterior_z_y_monte_carlo(reg):
    data, lat = reg.sample(
        {"train": 20_000, "test": 20_000}, missing=0.35, min_observed=0, seed=21, return_latents=True
    )
    ds, z = data["test"], lat["test"].z_y
    mu, S = reg.posterior_z_y(ds)
    e = z - mu
    w = np.linalg.solve(np.linalg.cholesky(S), e[..., None])[..., 0]  # whitened: N(0, I) if mu, S are right
    assert_mean(w, 0.0, "whitened residual mean")
    assert_mean(w[:, :, None] * w[:, None, :], np.eye(2).reshape(-1), "whitened residual covariance")
    F = stored_features(ds, "abc")
    assert_mean(e[:, :, None] * F[:, None, :], 0.0, "residual orthogonal to the stored features")
    # a fixed pattern (a, b observed; b at full length, where E[z | x] is linear): least squares cannot do better
    sets = {}
    for split in ("train", "test"):
        full = data[split].steps["b"].all(axis=1)
        sub = data[split].subset(np.nonzero(full)[0])
        sets[split] = (stored_features(sub, "ab"), lat[split].z_y[full], reg.posterior_z_y(sub, ["a", "b"])[0])
    assert_no_linear_predictor_beats(*sets["train"][:2], *sets["test"], "z_y from a, b")


def test_regression_predictive_monte_carlo(reg):
    data, lat = reg.sample({"train": 20_000, "test": 20_000}, missing=0.35, seed=22, return_latents=True)
    ds, y = data["test"], lat["test"].y.astype(np.float64)
    for observed in (None, ["b"], ["a", "c"]):
        m, v = reg.predict_y(ds, observed)
        r = y - m
        assert_mean(r / np.sqrt(v), 0.0, f"standardised error {observed}")
        assert_mean(r**2 / v, 1.0, f"MSE matches the predicted variance {observed}")
        F = stored_features(ds, observed or "abc")
        assert_mean(r[:, :, None] * F[:, None, :], 0.0, f"orthogonality {observed}")
    sets = {
        s: (stored_features(data[s], "ac"), lat[s].y.astype(np.float64), reg.predict_y(data[s], ["a", "c"])[0])
        for s in ("train", "test")
    }
    assert_no_linear_predictor_beats(*sets["train"][:2], *sets["test"], "y from a, c")


def test_imputation_monte_carlo(reg):
    data, lat = reg.sample({"train": 20_000, "test": 20_000}, missing=0.4, seed=23, return_latents=True)
    ds, x = data["test"], lat["test"].x
    imp = reg.impute(ds)
    for m in "abc":
        mis = ~ds.present[m]
        mean, var = imp[m][0][mis], imp[m][1][mis]
        real = ds.steps[m][mis][..., None] * np.ones(3) if m == "b" else np.ones_like(mean, bool)
        r = (x[m][mis] - mean) * real  # sequences: compare on the drawn real steps
        per = lambda a: a.reshape(len(a), -1).sum(axis=1) / real.reshape(len(a), -1).sum(axis=1)  # noqa: E731
        assert_mean(per(r**2 / var), 1.0, f"imputation MSE matches its variance, {m}")
        assert_mean(r.reshape(len(r), -1), 0.0, f"imputation residual mean, {m}")
        others = [o for o in "abc" if o != m]
        F = stored_features(ds.subset(np.nonzero(mis)[0]), others)
        assert_mean(per(r)[:, None] * F, 0.0, f"imputation residual orthogonal to the observed, {m}")
        obs = ds.present[m]
        np.testing.assert_array_equal(imp[m][0][obs], np.asarray(ds.features[m], np.float64)[obs])
    # cross-modal imputation of b (full length) from a and c, against least squares on the same pattern
    sets = {}
    for s in ("train", "test"):
        full = data[s].steps["b"].all(axis=1)
        sub = data[s].subset(np.nonzero(full)[0])
        sets[s] = (
            stored_features(sub, "ac"),
            lat[s].x["b"][full].reshape(full.sum(), -1),
            reg.impute(sub, ["a", "c"])["b"][0].reshape(full.sum(), -1),
        )
    assert_no_linear_predictor_beats(*sets["train"][:2], *sets["test"], "b from a, c")


def test_categorical_calibration(cat):
    data, lat = cat.sample({"train": 20_000, "test": 20_000}, missing=0.3, seed=24, return_latents=True)
    ds, y = data["test"], lat["test"].y
    counts = np.bincount(y, minlength=3) / len(y)
    assert np.all(np.abs(counts - 1 / 3) <= K_SIGMA * np.sqrt(2 / 9 / len(y)))  # thresholds at the 1/3, 2/3 quantiles
    for observed in (None, ["a"], ["b"]):
        p = cat.predict_y(ds, observed)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
        d = (y[:, None] == np.arange(3)) - p  # E[1{y=k} - p_k | x_O] = 0
        assert_mean(d, 0.0, f"class frequencies {observed}")
        assert_mean(d * p, 0.0, f"calibration weighted by p {observed}")
        for k in range(3):  # reliability: in each quintile of p_k, mean p_k matches the frequency of k
            edges = np.quantile(p[:, k], np.linspace(0, 1, 6))
            for lo, hi in zip(edges[:-1], edges[1:]):
                sel = (p[:, k] >= lo) & (p[:, k] <= hi)
                assert_mean(d[sel, k], 0.0, f"reliability class {k}, bin [{lo:.3f}, {hi:.3f}] {observed}")
        assert_mean(d[:, :, None] * stored_features(ds, observed or "ab")[:, None, :], 0.0, f"orthogonality {observed}")
    # the oracle's log loss is not beaten by a logistic regression fitted on many draws of the same pattern (a)
    Xtr, Xte = (np.asarray(data[s].features["a"], np.float64) for s in ("train", "test"))
    lr = LogisticRegression(C=1e4, max_iter=2000).fit(Xtr, lat["train"].y)
    d = -np.log(lr.predict_proba(Xte)[np.arange(len(y)), y]) + cat.log_predictive_density(ds, ["a"])
    assert d.mean() >= -K_SIGMA * d.std(ddof=1) / np.sqrt(len(d))


@pytest.mark.parametrize("kind", ["regression", "categorical"])
def test_log_predictive_density_importance_sampling(kind, reg, cat):
    """p(y | x_O) = E_{z ~ p(z_y)}[p(x_O | z) p(y | z)] / E_{z ~ p(z_y)}[p(x_O | z)], by self-normalised importance
    sampling from the prior with S draws; p(x_O | z) is the dense Gaussian with z_a integrated out. Delta-method
    standard error of the ratio: se^2 = sum_s w_s^2 (f_s - p_hat)^2 / (sum_s w_s)^2; bound 5 se / p_hat on the log."""
    gen = reg if kind == "regression" else cat
    ds = gen.sample(8, missing=0.4, min_observed=0, seed=31)["train"]
    lpd = gen.log_predictive_density(ds)
    z = np.random.default_rng(5).standard_normal((200_000, gen.z_y_dim))
    for i in range(len(ds)):
        logw = np.zeros(len(z))
        for m in gen.modalities:
            if not ds.present[m.name][i]:
                continue
            st = ds.steps[m.name][i] if m.is_sequence else None
            W = (m.W[st] if m.is_sequence else m.W).reshape(-1, gen.z_y_dim)
            V = (m.V[st] if m.is_sequence else m.V).reshape(len(W), -1)
            x = (
                np.asarray(ds.features[m.name][i], np.float64)[st].reshape(-1)
                if m.is_sequence
                else np.asarray(ds.features[m.name][i], np.float64)
            )
            C = V @ V.T + m.sigma**2 * np.eye(len(W))
            r = x - np.tile(m.c, len(W) // len(m.c)) - z @ W.T
            Lc = np.linalg.cholesky(C)
            sol = np.linalg.solve(Lc, r.T)
            logw += -0.5 * np.sum(sol**2, axis=0)  # constants cancel in the ratio
        s_mean = z @ gen.A.T + gen.b
        if kind == "regression":
            f = np.prod(norm.pdf(ds.labels[i], s_mean, gen.sigma_y), axis=1)
        else:
            edges = np.concatenate([[-np.inf], gen.thresholds, [np.inf]])
            k = ds.labels[i]
            f = np.diff(norm.cdf((edges[[k, k + 1]] - s_mean[:, :1]) / gen.sigma_y), axis=1)[:, 0]
        w = np.exp(logw - logw.max())
        p_hat = np.sum(w * f) / w.sum()
        se = np.sqrt(np.sum(w**2 * (f - p_hat) ** 2)) / w.sum()
        assert abs(np.log(p_hat) - lpd[i]) <= K_SIGMA * se / p_hat + 1e-9, (i, np.log(p_hat), lpd[i], se / p_hat)


def test_label_missing_gives_nan_density(reg):
    ds = reg.sample(200, label_missing=0.5, seed=9)["train"]
    lpd = reg.log_predictive_density(ds)
    assert np.isnan(lpd[~ds.label_present]).all() and np.isfinite(lpd[ds.label_present]).all()
    assert isinstance(ds, MultimodalDataset)
