"""Posterior prediction of the label and imputation of modalities, given any subset of observed modalities.

Both draw the factors from the guide on the observed modalities (:func:`guide_draws`, vectorized over the draws).
Prediction then needs only the label's likelihood p(y | D(G_y(z_y))) at the drawn z_y, imputation only the
likelihoods p(x_m | F_m(.)) of the modalities that are not observed, at the drawn factors they read: each is drawn
from the posterior predictive.
"""

from __future__ import annotations

import math
import random
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data.dataset import MultimodalData, MultimodalDataset
from ..data.schema import DataError, schema_differences
from ..ensemble import Ensemble, members_of
from ..model import MFM


@dataclass
class Prediction:
    """Posterior predictive of the label for each sample.

    Attributes:
        point: class probabilities ``(N, K)`` (categorical), label probabilities ``(N, k)`` (multilabel), or the
            predictive mean ``(N, k)`` (regression), each averaged over posterior draws of z_y.
        lower, upper: the central credible interval of mass ``interval`` (regression; ``None`` otherwise).
        samples: ``(S, N, ...)`` draws of y from the posterior predictive (an ensemble's: S rounded up to a multiple
            of its members, each giving an equal share).
        log_density: ``(N,)`` log p(y_true | observed modalities) where the label is known (NaN elsewhere).
        z_y: ``(N, k)`` posterior mean of the shared factor (an ensemble's first member's: the members' codes live
            in spaces of their own).
        observed: the modalities the prediction conditioned on.
        kind: the label likelihood (``normal``, ``laplace``, ``categorical``, ``bernoulli``).
    """

    point: np.ndarray
    lower: np.ndarray | None
    upper: np.ndarray | None
    samples: np.ndarray
    log_density: np.ndarray
    z_y: np.ndarray
    observed: tuple[str, ...]
    interval: float
    kind: str

    @property
    def label(self) -> np.ndarray:
        """Predicted class (categorical), 0/1 labels (bernoulli), or the predictive mean (normal, laplace)."""
        if self.kind == "categorical":
            return self.point.argmax(-1)
        if self.kind == "bernoulli":
            return (self.point > 0.5).astype(np.int64)
        return self.point


@dataclass
class Imputation:
    """Imputed modalities: for each modality, the posterior predictive mean, standard deviation and draws.

    Observed entries pass through unchanged (mean = the data, std = 0, draws = the data).
    """

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    samples: dict[str, np.ndarray] | None
    observed: tuple[str, ...]


def _observed(mfm: MFM, observed) -> tuple[str, ...]:
    return mfm.schema.names if observed is None else mfm.schema.check_modalities(observed)


def _device(mfm: MFM):
    return next(mfm.parameters()).device


@contextmanager
def seeded(seed: int, device=None):
    """Run the block with every random-number generator it draws from (torch on the CPU and on ``device``, numpy,
    Python) seeded by ``seed``, then restore the caller's states."""
    device = torch.device(device) if device is not None else None
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        states = np.random.get_state(), random.getstate()
        pyro.set_rng_seed(seed)
        try:
            yield
        finally:
            np.random.set_state(states[0])
            random.setstate(states[1])


def _seeded(seed, mfm):
    return nullcontext() if seed is None else seeded(seed, _device(mfm))


def evaluation_mode(mfm: MFM) -> None:
    """``mfm.eval()`` unless every module already is in evaluation mode (``eval`` sets the flag on each of the
    model's modules, about 5 ms, and evaluation predicts and imputes 63 subsets in turn)."""
    if any(module.training for module in mfm.modules()):
        mfm.eval()


def check_schema(mfm: MFM, dataset: MultimodalDataset) -> None:
    """A :class:`DataError` naming what differs unless ``dataset`` has the modalities ``mfm`` was trained on."""
    if dataset.schema.modalities != mfm.schema.modalities:
        found = schema_differences(mfm.schema, dataset.schema) or ["the modalities in another order"]
        raise DataError(f"{dataset._where()}: modalities do not match the model's: {'; '.join(found)}")


# rows (samples x draws) per block of the label head's and decoders' work on a CPU: a block's activations (2048 rows
# of 128 floats, 1 MiB) stay in a core's cache, where all draws at once make that elementwise work memory-bound
# (benchmarks/README.md); a GPU takes every draw at once
CPU_ROWS_PER_BLOCK = 2048


def member_draws(num_samples: int, members: int) -> int:
    """The posterior draws each of an ensemble's ``members`` gives to a prediction or imputation of
    ``num_samples`` draws: an equal share, rounded up, so that the mixture weighs the members equally."""
    return -(-num_samples // members)


def draw_block(samples: int, num_samples: int, device) -> int:
    """Draws per block for a pass of ``samples`` samples: on a CPU as many as fill :data:`CPU_ROWS_PER_BLOCK` rows
    (at least one), elsewhere all ``num_samples``."""
    if torch.device(device).type != "cpu":
        return num_samples
    return max(1, min(num_samples, CPU_ROWS_PER_BLOCK // max(samples, 1)))


class MeanAndSpread:
    """The mean and variance over the draws (the first dimension) of values given in blocks of draws: sums of the
    values and of their squares, shifted by the first block's mean so that the variance loses no precision to the
    values' offset."""

    def __init__(self):
        self.n, self.shift, self.sum, self.squares = 0, None, None, None

    def add(self, values: torch.Tensor) -> None:
        if not self.n:
            self.shift = values.mean(0)
            self.sum, self.squares = torch.zeros_like(self.shift), torch.zeros_like(self.shift)
        d = values - self.shift
        self.sum += d.sum(0)
        self.squares += d.square_().sum(0)
        self.n += values.shape[0]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and the variance (divided by the number of draws) of the values so far."""
        mean = self.sum / self.n
        return self.shift + mean, (self.squares / self.n - mean.square()).clamp_(min=0)


def _finite(values: torch.Tensor, what: str) -> torch.Tensor:
    """``values``, or a ValueError saying what is not finite (the distributions' own checks are off in the passes)."""
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{what}: the model gives values that are not finite; expected a model with finite parameters")
    return values


def _check_counts(**counts) -> None:
    """Each of ``counts`` (posterior draws, batch size) is an integer >= 1."""
    for name, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} = {v!r}: expected an integer >= 1")


@torch.no_grad()
def predict(
    mfm: MFM,
    dataset: MultimodalDataset,
    observed=None,
    num_samples: int = 100,
    interval: float = 0.9,
    batch_size: int = 512,
    keep_samples: bool = True,
    seed: int | None = None,
    encoded: SplitFeatures | None = None,
) -> Prediction:
    """Posterior predictive of y given the modalities in ``observed`` (default: all) for every sample of ``dataset``;
    of an :class:`~pyro_mfm.ensemble.Ensemble`, the mixture of its members' (each ``num_samples / K`` draws,
    rounded up), equal or weighted for what each sample observes (``model.expert = "both"``).

    A modality in ``observed`` that is missing for a sample is simply not conditioned on for that sample. With
    ``seed``, the draws are seeded (the same numbers on every call on CPU; the caller's random state is left as it
    was); without, they continue the global random state. ``encoded``: :func:`split_features` of ``dataset``, for
    callers that predict from many subsets of one split (the encoders then run once for all of them).
    """
    with _seeded(seed, mfm):
        return _predict(mfm, dataset, observed, num_samples, interval, batch_size, keep_samples, encoded)


def _predict(mfm, dataset, observed, num_samples, interval, batch_size, keep_samples, encoded=None) -> Prediction:
    if mfm.D is None:
        raise DataError(f"{dataset._where()}: the model has no label to predict")
    check_schema(mfm, dataset)
    _check_counts(num_samples=num_samples, batch_size=batch_size)
    if not 0 < interval < 1:
        raise ValueError(f"interval = {interval!r}: expected a probability in (0, 1)")
    observed = _observed(mfm, observed)
    members = members_of(mfm)
    draws = member_draws(num_samples, len(members))
    for member in members:
        evaluation_mode(member)
    # The posterior predictive p(y | x_obs) = E_q[p(y | D(.))] reads only the label's sites: no decoder pass, and
    # with z_y, no draw of any z_a,m (the guide's q(z_y | x_obs) alone).
    points, samples, log_dens, z_means, lowers, uppers = [], [], [], [], [], []
    regression = mfm.D.kind in ("normal", "laplace")
    device = _device(mfm)
    q = torch.tensor([(1 - interval) / 2, (1 + interval) / 2], device=device)
    weighted = isinstance(mfm, Ensemble) and mfm.weighted  # the members' weights differ from equal ones
    start = 0
    # the distributions' own checks off, as in training after its first step: the data were checked as they were
    # loaded, and the predictive is checked for finite values here
    with pyro.validation_enabled(False):
        for batch in dataset.loader(batch_size, device=device):
            truth, y_present = batch.y, batch.y_present
            batch = batch.observe_only(observed).without_labels()
            features, start = _rows(encoded, start, len(batch))
            block = draw_block(len(batch), draws, device)
            observed_here = batch.present_masks(mfm.names)  # the label's calibrated spread for what each observes
            p_ys = []
            for k, member in enumerate(members):  # an ensemble's predictive: the mixture of every member's draws
                own = features[k] if features is not None else None
                if mfm.shared:
                    q_z_y = member.posterior_z_y(batch, own)
                    mean = q_z_y.mean
                    z_y = (
                        mean.expand((draws,) + mean.shape) if member.guide.deterministic else q_z_y.sample((draws,))
                    )  # the guide's Delta code, or draws of q(z_y | x_obs)
                    p_ys.append(member.label_distribution(z_y, block, observed_here))
                else:  # the label reads every z_a,m
                    p_ys.append(member.label_distribution(guide_draws(member, batch, draws), block, observed_here))
                    mean = member.representation(batch) if k == 0 else None
                if k == 0:  # the first member's code: the members' codes live in spaces of their own
                    z_mean = mean
            p_y = mfm.D.join_draws(p_ys)
            # each draw's log weight in the mixture: equal, or a member's weight for what the sample observes shared
            # by its draws (model.expert = "both")
            log_w = None
            if weighted:
                log_w = (mfm.log_weights(observed_here) - math.log(draws)).repeat_interleave(draws, 0)
            point = _mixture_mean(mfm.D.point(p_y), log_w)
            points.append(_finite(point, f"{dataset._where()}: the predictive of the label").cpu())
            if regression:
                lo, hi = mixture_quantiles(p_y, q, log_w)
                lowers.append(lo.cpu())
                uppers.append(hi.cpu())
            if keep_samples:
                samples.append(_mixture_sample(p_y, log_w).cpu())
            z_means.append(z_mean.cpu())
            if truth is not None:
                if log_w is None:
                    lp = torch.logsumexp(p_y.log_prob(truth), 0) - math.log(draws * len(members))
                else:
                    lp = torch.logsumexp(p_y.log_prob(truth) + log_w, 0)
                log_dens.append(torch.where(y_present, lp, torch.full_like(lp, float("nan"))).cpu())
            else:
                log_dens.append(torch.full((len(batch),), float("nan")))
    cat = lambda xs, dim=0: torch.cat(xs, dim).numpy() if xs else None  # noqa: E731
    return Prediction(
        point=cat(points),
        lower=cat(lowers),
        upper=cat(uppers),
        samples=cat(samples, 1) if keep_samples else np.empty(0),
        log_density=cat(log_dens),
        z_y=cat(z_means),
        observed=observed,
        interval=interval,
        kind=mfm.D.kind,
    )


# the most memory split_features holds (encoder features and experts of every sample); larger splits are encoded
# pass by pass, once per subset
SPLIT_FEATURES_BYTES = 256 * 2**20


@dataclass
class SplitFeatures:
    """The guide's :class:`~pyro_mfm.guide.Features` of every sample of a split with all its modalities as recorded
    (:func:`split_features`), to be read pass by pass by :func:`predict` and :func:`impute` from any subset."""

    features: list  # guide.Features per member of the model, each tensor with the split's samples along its first dim
    n: int


@torch.no_grad()
def split_features(mfm: MFM, dataset: MultimodalDataset, batch_size: int = 512) -> SplitFeatures | None:
    """The encoder features h_m and experts (eta_m, Lambda_m) of every sample of ``dataset``, computed once (for
    each member of an ensemble).

    With a product of experts, q(z_y | x_S) multiplies the experts of the modalities in S, and an expert reads its
    own modality alone, so the experts of the full data serve every subset S: a subset only masks the others out
    (as do q(z_a,m | x_m, z_y) and the surrogates, which read h_m where m is observed). The MFN reads all
    modalities at once, so its output differs per subset: ``None`` then, and ``None`` too where the features would
    take more than :data:`SPLIT_FEATURES_BYTES` (callers then encode each subset's passes as they go)."""
    if not (mfm.shared and mfm.config.fusion == "poe") or not len(dataset):
        return None
    members, out, size = members_of(mfm), [], 0
    for member in members:
        evaluation_mode(member)
        loader = dataset.loader(batch_size, device=_device(mfm))
        parts = [member.guide.features(batch.without_labels()) for batch in loader]
        first = parts[0]
        per_sample = sum(v[0].numel() for v in first.h.values()) + sum(
            e[0].numel() + lam[0].numel() for e, lam in first.experts
        )
        size += per_sample * first.experts[0][0].element_size() * len(dataset)
        if size > SPLIT_FEATURES_BYTES:
            return None
        h = {m: torch.cat([p.h[m] for p in parts]) for m in first.h}
        experts = [
            (torch.cat([p.experts[i][0] for p in parts]), torch.cat([p.experts[i][1] for p in parts]))
            for i in range(len(first.experts))
        ]
        out.append(first._replace(h=h, experts=experts))
    return SplitFeatures(out, len(dataset))


def _rows(encoded: SplitFeatures | None, start: int, size: int):
    """The features of samples ``start`` to ``start + size`` of ``encoded``, one per member (``None`` without), and
    the next start."""
    if encoded is None:
        return None, start + size
    stop = start + size
    rows = []
    for f in encoded.features:
        h = {m: v[start:stop] for m, v in f.h.items()}
        experts = [(e[start:stop], lam[start:stop]) for e, lam in f.experts]
        rows.append(f._replace(h=h, experts=experts))
    return rows, stop


def _weights_like(log_w: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The draws' weights exp(``log_w``), (K, N), shaped to multiply ``values`` of shape (K, N, ...)."""
    return log_w.exp().reshape(log_w.shape + (1,) * (values.dim() - log_w.dim()))


def _mixture_mean(values: torch.Tensor, log_w: torch.Tensor | None) -> torch.Tensor:
    """The mixture's mean of per-draw ``values`` (K, N, ...): their mean, or with the draws' log weights ``log_w``
    (K, N), summing to 1 over the draws, their weighted sum."""
    if log_w is None:
        return values.mean(0)
    return (_weights_like(log_w, values) * values).sum(0)


def _mixture_sample(p_y, log_w: torch.Tensor | None) -> torch.Tensor:
    """K draws of y from the mixture of the K draws' label distributions ``p_y`` (batch shape (K, N)): one from each,
    or with the draws' log weights ``log_w`` (K, N), each from a draw picked by its weight."""
    y = p_y.sample()
    if log_w is None:
        return y
    pick = torch.multinomial(log_w.T.exp(), log_w.shape[0], replacement=True).T  # (K, N): which draw gives each y
    return y[pick, torch.arange(log_w.shape[1], device=y.device)]


def mixture_quantiles(p_y, probs: torch.Tensor, log_w=None, iterations: int = 60) -> torch.Tensor:
    """Quantiles at ``probs`` of the equal-weight mixture (1/K) sum_k p_k of the K draws' label distributions
    ``p_y`` (Normal or Laplace, batch shape (K, N), event shape (d,)): shape (len(probs), N, d). With ``log_w``
    (K, N), the log weights of the draws (summing to 1 over them), of the mixture sum_k w_k p_k.

    The posterior predictive p(y | x_obs) given K draws of z_y is that mixture, whose CDF is exact, so its quantiles
    are found by bisection on the CDF to float precision. Empirical quantiles of one y drawn per z draw are not
    only noisy but biased inwards: the interpolated 5% and 95% points of 100 draws hold 0.88, not 0.90, of the
    mass on average.
    """
    base = p_y.base_dist if isinstance(p_y, torch.distributions.Independent) else p_y
    loc, spread = base.mean, base.stddev
    lo = (loc - 12 * spread).min(0).values.expand((len(probs),) + loc.shape[1:]).clone()
    hi = (loc + 12 * spread).max(0).values.expand_as(lo).clone()
    target = probs.to(loc.dtype).reshape((-1,) + (1,) * (loc.dim() - 1))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        cdf = base.cdf(mid.unsqueeze(1))  # (Q, K, N, d)
        below = (cdf.mean(1) if log_w is None else (_weights_like(log_w, cdf[0]) * cdf).sum(1)) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    return (lo + hi) / 2


def guide_draws(mfm: MFM, batch, num_samples: int, modalities=None, features=None) -> dict:
    """``num_samples`` draws of the latent sites of the guide on ``batch``, ``{site: (S, B, ...)}`` (z_y, and the
    z_a,m of ``modalities``, default all): one pass of the guide under a plate of the draws (the guide's own plate
    is the batch's, at dim -1), as ``Predictive(guide, parallel=True)`` draws them without its two passes that find
    the plates and the sites' shapes. ``features``: the guide's features of ``batch``, if already computed."""
    with pyro.plate("posterior_draws", num_samples, dim=-2):
        trace = poutine.trace(mfm.guide).get_trace(batch, features, modalities=modalities)
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _padding_mask(mfm: MFM, batch, m: str):
    """1 at the steps an imputation of ``m`` fills: its real steps where known, every step otherwise."""
    if not mfm.schema[m].is_sequence:
        return torch.ones((), device=batch.x[m].device)
    steps = batch.steps[m]
    known = steps.any(-1, keepdim=True)
    return torch.where(known, steps, torch.ones_like(steps)).unsqueeze(-1).to(batch.x[m].dtype)


@torch.no_grad()
def impute(
    mfm: MFM,
    dataset: MultimodalDataset,
    observed=None,
    num_samples: int = 100,
    batch_size: int = 512,
    keep_samples: bool = False,
    seed: int | None = None,
    encoded: SplitFeatures | None = None,
) -> Imputation:
    """Posterior predictive of every modality given the modalities in ``observed`` (of an ensemble, the equal
    mixture of its members', as in :func:`predict`).

    Entries that are observed (the modality is in ``observed`` and present for the sample) pass through unchanged;
    all others are drawn from p(x_m | z_y, z_a,m) with z_y ~ q(z_y | observed) and z_a,m from its prior (or the
    surrogate's code). The imputed mean and standard deviation are those of the predictive mixture over the
    ``num_samples`` draws of the factors (the standard deviation 0 where observed); ``keep_samples`` keeps one
    draw of x_m per draw of the factors as well. An imputed sequence is zero at its padding steps where they are
    known (the modality was recorded and hidden); a sample that never recorded the modality gets all T steps.
    ``seed`` and ``encoded`` as in :func:`predict`.
    """
    with _seeded(seed, mfm):
        return _impute(mfm, dataset, observed, num_samples, batch_size, keep_samples, encoded)


def _mixture(parts: list) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and variance of an equal-weight mixture of components given by their ``(mean, variance)``s (each in
    the data's units: an ensemble's members standardise with statistics of their own): the law of total variance."""
    if len(parts) == 1:
        return parts[0]
    centres = torch.stack([c for c, _ in parts])
    centre = centres.mean(0)
    return centre, torch.stack([v for _, v in parts]).mean(0) + (centres - centre).square().mean(0)


def _impute(mfm, dataset, observed, num_samples, batch_size, keep_samples, encoded=None) -> Imputation:
    check_schema(mfm, dataset)
    if not mfm.generative:
        raise DataError(
            f"{dataset._where()}: the model has no decoders to impute with (model.ablation = {mfm.config.ablation!r})"
        )
    _check_counts(num_samples=num_samples, batch_size=batch_size)
    observed = _observed(mfm, observed)
    members = members_of(mfm)
    draws = member_draws(num_samples, len(members))
    for member in members:
        evaluation_mode(member)
    names = mfm.schema.names
    # the posterior of the factors from the guide (one pass); then each modality that some sample lacks is decoded
    # from the factors its likelihood reads, and drawn: the decoders of what every sample observes never run
    means = {m: [] for m in names}
    stds = {m: [] for m in names}
    kept = {m: [] for m in names}
    device = _device(mfm)
    start = 0
    with pyro.validation_enabled(False):  # as in prediction
        for batch in dataset.loader(batch_size, device=device):
            batch = batch.observe_only(observed).without_labels()
            features, start = _rows(encoded, start, len(batch))
            hidden = [m for m in names if not bool(batch.present[m].all())]
            # over the K draws of the factors, E[x] = mean_k E[x | z_k] and, by the law of total variance,
            # Var[x] = mean_k Var[x | z_k] + var_k E[x | z_k]: exact given the draws, no x drawn to estimate it;
            # the decoders run on blocks of draws (draw_block), whose moments are merged (an ensemble's members
            # each give an equal share of the draws: the moments of their mixture)
            moments = {m: [MeanAndSpread() for _ in members] for m in hidden}
            drawn: dict = {m: [] for m in hidden}
            block = draw_block(len(batch), draws, device)
            for i, member in enumerate(members if hidden else []):
                own = features[i] if features is not None else None
                z = guide_draws(member, batch, draws, modalities=hidden, features=own)
                for k in range(0, draws, block):
                    z_k = {site: v[k : k + block] for site, v in z.items()}
                    f: dict = {}  # the factors' features, shared by the decoders that read them (f_y by every one)
                    for m in hidden:
                        loc = member.model.decode(m, z_k, factors=f)  # E[x_m | z_k], standardised
                        moments[m][i].add(loc)
                        if keep_samples:
                            drawn[m].append(member.p_x[m].distribution(loc, steps=batch.steps.get(m)).sample())
            for m in names:
                x = batch.x[m]
                if m in hidden:
                    keep = batch.present[m].reshape((-1,) + (1,) * len(mfm.schema[m].shape))
                    pad = _padding_mask(mfm, batch, m)
                    centre, variance = _mixture(
                        [member.p_x[m].mixture_moments(*part.result()) for member, part in zip(members, moments[m])]
                    )
                    centre = _finite(centre, f"{dataset._where()}: the imputed {m}")
                    mean = torch.where(keep, x, centre * pad)
                    std = torch.where(keep, torch.zeros_like(x), variance.sqrt() * pad)
                    if keep_samples:
                        kept[m].append(torch.where(keep, x, torch.cat(drawn[m]) * pad).cpu())
                else:  # observed for every sample: passed through
                    mean, std = x, torch.zeros_like(x)
                    if keep_samples:
                        kept[m].append(x.expand((draws * len(members),) + x.shape).cpu())
                means[m].append(mean.cpu())
                stds[m].append(std.cpu())
    join = lambda d, dim=0: {m: torch.cat(v, dim).numpy() for m, v in d.items()}  # noqa: E731
    return Imputation(join(means), join(stds), join(kept, 1) if keep_samples else None, observed)


def imputed_data(
    ds: MultimodalDataset,
    imp: Imputation,
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
    num_samples: int | None = None,
    seed: int | None = None,
) -> MultimodalData:
    """``ds`` with every modality replaced by its imputed mean, as a one-split data set for the native format.

    Observed entries are unchanged and keep their presence mask; a modality outside ``imp.observed`` is marked
    present everywhere (it now holds the imputation). The result records what was imputed: the split's
    ``imputed[m]`` masks (True where the features of ``m`` are imputed), ``imputed_std[m]`` (the posterior
    standard deviation), and the data set's ``imputation`` (observed subset, checkpoint, source, draws, seed).
    """
    names = ds.schema.names
    present = {m: ds.present[m] if m in imp.observed else np.ones(len(ds), bool) for m in names}
    # a missing entry of an observed modality stays missing: zero, as the format stores missing entries
    keep = {m: present[m].reshape((-1,) + (1,) * (imp.mean[m].ndim - 1)) for m in names}
    out = MultimodalDataset(
        ds.schema,
        {m: np.where(keep[m], imp.mean[m], 0).astype(np.float32) for m in names},
        present,
        ds.steps,
        ds.labels,
        ds.label_present,
        split=ds.split,
        ids=ds.ids,
    )
    out.imputed = {m: np.full(len(ds), m not in imp.observed) for m in names}
    out.imputed_std = {m: np.where(keep[m], imp.std[m], 0).astype(np.float32) for m in names}
    info = {
        "observed": list(imp.observed),
        "imputed": [m for m in names if m not in imp.observed],
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "checkpoint_sha256": checkpoint_sha256,
        "source": ds.source,
        "split": ds.split,
        "num_samples": num_samples,
        "seed": seed,
    }
    out.imputation = info
    return MultimodalData(ds.schema, {ds.split: out}, imputation=info)


def refuse_imputed(ds: MultimodalDataset) -> None:
    """Raise :class:`DataError` when ``ds`` holds a model's imputations (scoring against them scores the model
    against itself)."""
    if ds.imputed is None or not any(np.asarray(v).any() for v in ds.imputed.values()):
        return
    hidden = [m for m, v in ds.imputed.items() if np.asarray(v).any()]
    info = ds.imputation or {}
    origin = f" from {info.get('observed')} by checkpoint {info.get('checkpoint')}" if info else ""
    raise DataError(
        f"{ds._where()}: modalities {hidden} hold values imputed{origin}; evaluating against them "
        f"scores a model against imputations, not data; expected recorded data"
        + (f" (the imputation was made from {info['source']})" if info.get("source") else "")
    )
