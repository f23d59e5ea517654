"""Synthetic data from the MFM's generative story with linear-Gaussian maps, and its exact Bayes-optimal answers.

Generative process of one sample (modalities m = 1..M, every noise term independent of everything else)::

    z_y ~ N(0, I_{k_y}),        z_a,m ~ N(0, I_{k_m})
    vector m:     x_m   = W_m z_y + V_m z_a,m + c_m + e_m,          e_m   ~ N(0, sigma_m^2 I_{d_m})
    sequence m:   x_m,t = W_m,t z_y + V_m,t z_a,m + c_m + e_m,t,    e_m,t ~ N(0, sigma_m^2 I_{d_m}),
                  t = 0..T_m-1 is the storage position; the loadings turn smoothly with t:
                  W_m,t = cos(th_t) W_m' + sin(th_t) W_m'',  th_t = (pi/2) t / (T_m - 1)   (the same for V_m,t);
                  the length L ~ Uniform{min_steps_m..T_m} and the sequence is FRONT padded: positions
                  t < T_m - L hold zeros and have step mask False
    label score:  s = A z_y + b + e_y,                               e_y ~ N(0, sigma_y^2 I_k)
    regression:   y = s  (k outputs)
    categorical:  y = #{j : tau_j < s},  thresholds tau_1 < ... < tau_{K-1}  (k = 1: an ordinal probit; K = 2: binary)
    missingness:  present_m ~ Bernoulli(1 - p_m) independently of everything (MCAR), the whole pattern redrawn while
                  fewer than min_observed modalities are present; label_present ~ Bernoulli(1 - p_y).

Integrating z_a,m out, x_m | z_y ~ N(W_m z_y + c_m, C_m) with C_m = V_m V_m^T + sigma_m^2 I (a sequence stacks its
real steps: W_m is then (L d_m, k_y)), and the modalities are independent given z_y. So the posterior of z_y given
the observed set O is a product of Gaussian experts (information form)::

    Lambda = I + sum_{m in O} W_m^T C_m^-1 W_m,   Sigma = Lambda^-1,   mu = Sigma sum_{m in O} W_m^T C_m^-1 (x_m - c_m)

and every oracle answer follows in closed form: s | x_O ~ N(A mu + b, A Sigma A^T + sigma_y^2 I) (the regression
predictive; P(y = k | x_O) = Phi((tau_{k+1} - m) / r) - Phi((tau_k - m) / r) with m, r^2 its mean and variance), and
for m not in O: x_m | x_O ~ N(W_m mu + c_m, W_m Sigma W_m^T + C_m) (z_a,m is independent of x_O).
C_m^{-1} W_m is computed by the Woodbury identity, so a long sequence costs O(L d k^2), not O((L d)^3).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from .dataset import MultimodalData, MultimodalDataset
from .schema import DataError, LabelSpec, Schema
from .synthetic_modality import LinearGaussianModality, log_normal_interval

SCHEMA_NAME = "synthetic-linear-gaussian"


@dataclass
class SyntheticLatents:
    """The draws behind one synthetic split (what the data hide).

    Attributes:
        z_y: ``(N, k_y)``.
        z_a: modality -> ``(N, k_m)``.
        x: modality -> the complete features, missingness not applied (padding steps still zero), float64.
        y: the complete labels (label missingness not applied), as stored: ``(N, k)`` float or ``(N,)`` int.
        score: ``(N, k)`` the label score ``s = A z_y + b + e_y`` (equal to ``y`` for regression).
    """

    z_y: np.ndarray
    z_a: dict[str, np.ndarray]
    x: dict[str, np.ndarray]
    y: np.ndarray
    score: np.ndarray


@dataclass(frozen=True, eq=False)
class LinearGaussianMFM:
    """A linear-Gaussian MFM (module docstring): a sampler and its exact Bayes-optimal predictions.

    Attributes:
        modalities: the modalities' decoders, in schema order.
        A: ``(k, k_y)`` label loadings (categorical: ``k = 1``, the probit direction).
        b: ``(k,)`` label offset.
        sigma_y: label noise standard deviation.
        thresholds: ``(K - 1,)`` increasing class thresholds for a categorical label; ``None`` for regression.

    The oracle methods take a :class:`MultimodalDataset` with this generator's schema and condition each sample on
    the modalities it has (``present``, and for sequences only the real ``steps``), intersected with ``observed``
    (modality names; default all). Samples are grouped by observation pattern: one Gaussian conditioning per group.
    """

    modalities: tuple[LinearGaussianModality, ...]
    A: np.ndarray
    b: np.ndarray
    sigma_y: float
    thresholds: np.ndarray | None = None

    def __post_init__(self):
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "A", np.atleast_2d(np.asarray(self.A, dtype=np.float64)))
        object.__setattr__(self, "b", np.asarray(self.b, dtype=np.float64).reshape(-1))
        ky = self.z_y_dim
        if any(m.W.shape[-1] != ky for m in self.modalities) or self.b.shape != (self.A.shape[0],):
            shapes = [m.W.shape for m in self.modalities]
            raise DataError(f"z_y dimension: A is {self.A.shape}, b {self.b.shape}, the W's {shapes}")
        if not self.sigma_y > 0:
            raise DataError(f"sigma_y {self.sigma_y}, expected > 0")
        if self.thresholds is not None:
            t = np.asarray(self.thresholds, dtype=np.float64).reshape(-1)
            object.__setattr__(self, "thresholds", t)
            if self.A.shape[0] != 1 or len(t) < 1 or np.any(np.diff(t) <= 0):
                raise DataError(f"categorical label: needs a one-row A and increasing thresholds: {self.A.shape}, {t}")
        _ = self.schema  # validates the names and shapes

    # ------------------------------------------------------------------ construction
    @classmethod
    def random(
        cls,
        modalities: Mapping[str, int | tuple[int, int]],
        *,
        z_y_dim: int = 2,
        z_a_dims: int | Mapping[str, int] = 2,
        label: str = "regression",
        label_dim: int = 1,
        num_classes: int = 2,
        noise: float | Mapping[str, float] = 0.5,
        label_noise: float = 0.5,
        shared_scale: float = 1.0,
        specific_scale: float = 1.0,
        min_steps: int | Mapping[str, int] | None = None,
        seed: int = 0,
    ) -> LinearGaussianMFM:
        """Random parameters: ``modalities`` maps a name to ``d`` (vector) or ``(T, d)`` (sequence).

        Entries of W (V) are N(0, shared_scale^2 / k_y) (N(0, specific_scale^2 / k_m)), so z_y (z_a,m) adds variance
        ``shared_scale^2`` (``specific_scale^2``) to each feature on average; ``noise`` is sigma_m; c ~ N(0, I).
        Regression: A ~ N(0, 1/k_y) entries, b ~ N(0, I). Categorical: b = 0 and the thresholds are the quantiles
        k/K of the score's marginal N(0, |a|^2 + sigma_y^2), so the K classes are equally likely a priori.
        ``min_steps`` defaults to ``ceil(T / 2)``; a mapping's absent names get the defaults (k_m 2, sigma_m 0.5).
        """
        rng = np.random.default_rng(seed)
        pick = lambda v, name, default: v.get(name, default) if isinstance(v, Mapping) else v  # noqa: E731
        mods = []
        for name, shape in modalities.items():
            shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
            ka, d = int(pick(z_a_dims, name, 2)), shape[-1]
            th = (np.pi / 2) * np.arange(shape[0]) / max(shape[0] - 1, 1) if len(shape) == 2 else None

            def loadings(k, scale):
                draw = lambda: rng.standard_normal((d, k)) * scale / np.sqrt(max(k, 1))  # noqa: E731
                if th is None:
                    return draw()
                return np.cos(th)[:, None, None] * draw() + np.sin(th)[:, None, None] * draw()

            W, V = loadings(z_y_dim, shared_scale), loadings(ka, specific_scale)
            ms = pick(min_steps, name, None)
            ms = 1 if th is None else int(ms if ms is not None else (shape[0] + 1) // 2)
            mods.append(LinearGaussianModality(name, W, V, rng.standard_normal(d), float(pick(noise, name, 0.5)), ms))
        if label == "regression":
            A = rng.standard_normal((label_dim, z_y_dim)) / np.sqrt(z_y_dim)
            return cls(tuple(mods), A, rng.standard_normal(label_dim), float(label_noise))
        if label != "categorical" or num_classes < 2:
            raise DataError(f"label {label!r}, {num_classes} classes: expected 'regression' or 'categorical' (K >= 2)")
        A = rng.standard_normal((1, z_y_dim)) / np.sqrt(z_y_dim)
        sd = np.sqrt(np.sum(A**2) + label_noise**2)
        q = torch.special.ndtri(torch.arange(1, num_classes, dtype=torch.float64) / num_classes).numpy()
        return cls(tuple(mods), A, np.zeros(1), float(label_noise), sd * q)

    @property
    def z_y_dim(self) -> int:
        return self.A.shape[1]

    @property
    def label_kind(self) -> str:
        return "regression" if self.thresholds is None else "categorical"

    @property
    def schema(self) -> Schema:
        k = self.A.shape[0] if self.thresholds is None else len(self.thresholds) + 1
        return Schema(
            tuple(m.spec for m in self.modalities),
            LabelSpec(self.label_kind, k),
            name=SCHEMA_NAME,
            attribution="synthetic: pyro_mfm.data.synthetic.LinearGaussianMFM",
            extra={"z_y_dim": self.z_y_dim, "z_a_dims": {m.name: m.V.shape[-1] for m in self.modalities}},
        )

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        n: int | Mapping[str, int],
        *,
        missing: float | Mapping[str, float] = 0.0,
        label_missing: float = 0.0,
        min_observed: int = 1,
        seed: int = 0,
        return_latents: bool = False,
    ) -> MultimodalData | tuple[MultimodalData, dict[str, SyntheticLatents]]:
        """Draw splits: ``n`` is split name -> size, or one size for a ``"train"`` split.

        ``missing`` is the MCAR rate of every modality, or modality -> rate (others 0). A split's draws depend only
        on ``(seed, split name, size)``, and the complete data do not depend on the missingness settings. A missing
        sequence keeps its drawn step mask in ``steps`` (its features are zero). With ``return_latents``, also
        returns split name -> :class:`SyntheticLatents`.
        """
        sizes = {"train": int(n)} if np.isscalar(n) else {str(k): int(v) for k, v in n.items()}
        names = [m.name for m in self.modalities]
        if isinstance(missing, Mapping):
            self.schema.check_modalities(list(missing))
        rates = np.array([missing.get(m, 0.0) if isinstance(missing, Mapping) else missing for m in names], float)
        if np.any((rates < 0) | (rates > 1)) or not 0 <= label_missing <= 1:
            raise DataError(f"missing rates {rates.tolist()}, label_missing {label_missing}: expected values in [0, 1]")
        if min_observed > np.sum(rates < 1):
            raise DataError(f"min_observed {min_observed}: only {np.sum(rates < 1)} modalities can be observed")
        splits, latents = {}, {}
        for split, size in sizes.items():
            rng = np.random.default_rng([seed, zlib.crc32(split.encode())])
            splits[split], latents[split] = self._sample_split(size, rng, rates, label_missing, min_observed, split)
        data = MultimodalData(self.schema, splits)
        return (data, latents) if return_latents else data

    def _sample_split(self, n, rng, rates, label_missing, min_observed, split):
        z_y = rng.standard_normal((n, self.z_y_dim))
        full, z_a, steps = {}, {}, {}
        for m in self.modalities:
            z_a[m.name] = rng.standard_normal((n, m.V.shape[-1]))
            x = m.mean(z_y, z_a[m.name])
            x = x + m.sigma * rng.standard_normal(x.shape)
            if m.is_sequence:
                T = m.W.shape[0]
                length = rng.integers(m.min_steps, T + 1, size=n)
                steps[m.name] = np.arange(T)[None, :] >= (T - length)[:, None]
                x = x * steps[m.name][..., None]
            full[m.name] = x
        score = z_y @ self.A.T + self.b + self.sigma_y * rng.standard_normal((n, len(self.b)))
        if self.thresholds is None:
            y = score.astype(np.float32)
        else:
            y = np.sum(score[:, :1] > self.thresholds, axis=1).astype(np.int64)
        present = rng.random((n, len(rates))) >= rates
        for _ in range(10_000):
            short = present.sum(axis=1) < min_observed
            if not short.any():
                break
            present[short] = rng.random((short.sum(), len(rates))) >= rates
        else:
            raise DataError(f"missing rates {rates.tolist()}: could not draw {min_observed} observed modalities")
        label_present = rng.random(n) >= label_missing
        features = {
            m.name: (full[m.name] * present[:, i].reshape((-1,) + (1,) * (full[m.name].ndim - 1))).astype(np.float32)
            for i, m in enumerate(self.modalities)
        }
        labels = y * label_present.reshape((-1,) + (1,) * (y.ndim - 1)).astype(y.dtype)
        ds = MultimodalDataset(
            self.schema,
            features,
            {m.name: present[:, i] for i, m in enumerate(self.modalities)},
            steps,
            labels,
            label_present,
            split=split,
        )
        return ds, SyntheticLatents(z_y, z_a, full, y, score)

    # ------------------------------------------------------------------ oracle
    def _conditioning(self, ds: MultimodalDataset, observed) -> tuple[dict, dict]:
        """Features (float64) and what each sample is conditioned on: (N,) masks, or (N, T) masks for sequences."""
        specs = tuple(ds.schema.modalities)
        if tuple((s.name, s.shape) for s in specs) != tuple((s.name, s.shape) for s in self.schema.modalities):
            raise DataError(
                f"data set modalities {[(s.name, s.shape) for s in specs]} do not match the generator's "
                f"{[(s.name, s.shape) for s in self.schema.modalities]}"
            )
        use = self.schema.names if observed is None else self.schema.check_modalities(observed)
        X, masks = {}, {}
        for m in self.modalities:
            p = np.asarray(ds.present[m.name], dtype=bool) & (m.name in use)
            X[m.name] = np.asarray(ds.features[m.name], dtype=np.float64)
            masks[m.name] = p[:, None] & np.asarray(ds.steps[m.name], dtype=bool) if m.is_sequence else p
        return X, masks

    def posterior_z_y(self, ds: MultimodalDataset, observed=None) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(N, k_y)`` and covariance ``(N, k_y, k_y)`` of z_y given each sample's observed modalities."""
        X, masks = self._conditioning(ds, observed)
        n, ky = len(ds), self.z_y_dim
        key = np.concatenate([mk.reshape(n, -1) for mk in masks.values()], axis=1)
        patterns, group = np.unique(key, axis=0, return_inverse=True)
        group = group.reshape(-1)
        order = np.argsort(group, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(group, minlength=len(patterns)))[:-1])
        mean, cov, experts = np.zeros((n, ky)), np.empty((n, ky, ky)), {}
        for pattern, idx in zip(patterns, members):
            prec, h, col = np.eye(ky), np.zeros((len(idx), ky)), 0
            for m in self.modalities:
                width = m.W.shape[0] if m.is_sequence else 1
                sel, col = pattern[col : col + width], col + width
                if not sel.any():
                    continue
                cache_key = (m.name, sel.tobytes())
                if cache_key not in experts:
                    experts[cache_key] = m.expert(sel if m.is_sequence else None)
                info, ciw = experts[cache_key]
                x = X[m.name][idx][:, sel] if m.is_sequence else X[m.name][idx]
                prec += info
                h += (x - m.c).reshape(len(idx), -1) @ ciw
            sigma = np.linalg.inv(prec)
            cov[idx] = (sigma + sigma.T) / 2
            mean[idx] = h @ sigma
        return mean, cov

    def _score_predictive(self, ds, observed) -> tuple[np.ndarray, np.ndarray]:
        mu, sigma = self.posterior_z_y(ds, observed)
        cov = np.einsum("ij,njk,lk->nil", self.A, sigma, self.A) + self.sigma_y**2 * np.eye(len(self.b))
        return mu @ self.A.T + self.b, cov

    def _log_class_probs(self, m: np.ndarray, cov: np.ndarray) -> np.ndarray:
        edges = np.concatenate([[-np.inf], self.thresholds, [np.inf]])
        z = (edges[None, :] - m[:, :1]) / np.sqrt(cov[:, 0, :1])
        return log_normal_interval(z[:, :-1], z[:, 1:])

    def predict_y(self, ds: MultimodalDataset, observed=None):
        """Bayes predictive of the label given each sample's observed modalities.

        Regression: ``(mean, variance)``, each ``(N, k)`` (marginal variances; the outputs are correlated through
        z_y). Categorical: class probabilities ``(N, K)``.
        """
        m, cov = self._score_predictive(ds, observed)
        if self.thresholds is None:
            return m, np.diagonal(cov, axis1=1, axis2=2).copy()
        return np.exp(self._log_class_probs(m, cov))

    def log_predictive_density(self, ds: MultimodalDataset, observed=None) -> np.ndarray:
        """``(N,)`` exact ``log p(y | observed x)`` of the stored labels (a density for regression, a log
        probability for categorical); NaN where the label is missing."""
        m, cov = self._score_predictive(ds, observed)
        y = np.asarray(ds.labels)
        if self.thresholds is None:
            r = y.astype(np.float64) - m
            _, logdet = np.linalg.slogdet(cov)
            quad = np.einsum("ni,ni->n", r, np.linalg.solve(cov, r[..., None])[..., 0])
            out = -0.5 * (len(self.b) * np.log(2 * np.pi) + logdet + quad)
        else:
            out = np.take_along_axis(self._log_class_probs(m, cov), y.astype(np.int64)[:, None], axis=1)[:, 0]
        return np.where(np.asarray(ds.label_present, dtype=bool), out, np.nan)

    def impute(self, ds: MultimodalDataset, observed=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """modality -> ``(mean, variance)`` of ``x_m`` given each sample's observed modalities, shaped as the
        features (per-feature marginal variances).

        Rows where the modality is itself conditioned on are the observed values with zero variance (for a
        sequence: its stored array, zeros at padding). Other rows are ``W_m mu + c_m`` with variance
        ``diag(W_m Sigma W_m^T + V_m V_m^T) + sigma_m^2``, at every step position of a sequence.
        """
        X, masks = self._conditioning(ds, observed)
        mu, sigma = self.posterior_z_y(ds, observed)
        out = {}
        for m in self.modalities:
            mean = np.einsum("...dk,nk->n...d", m.W, mu) + m.c
            var = np.einsum("...dk,nkl,...dl->n...d", m.W, sigma, m.W) + np.sum(m.V**2, axis=-1) + m.sigma**2
            seen = masks[m.name].any(axis=1) if m.is_sequence else masks[m.name]
            shape = (-1,) + (1,) * (mean.ndim - 1)
            out[m.name] = (np.where(seen.reshape(shape), X[m.name], mean), np.where(seen.reshape(shape), 0.0, var))
        return out
