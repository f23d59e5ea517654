"""Held-out calibration of a trained MFM: how much each modality's expert may claim, and the label's spread.

Training fits every expert of q(z_y | observed) and the label likelihood to the training split. On held-out data
two things do not carry over: an expert that learned sample-specific detail (a speaker's voice, one writer's
strokes) claims a precision about z_y that it has not earned, and the product of experts adds such precisions up,
so that adding a weak modality can make a prediction worse and its intervals too narrow; and a label scale fitted
on training residuals is too small for new samples.

:func:`calibrate` fits, on the validation split, with the networks fixed,

* one temperature t_m per modality: expert m enters the product as (exp(t_m) eta_m, exp(t_m) Lambda_m), so that
  t_m < 0 widens and shrinks towards the prior what m alone says, and the product weighs the modalities by what
  each is worth on new samples;
* one redundancy r_mn >= 0 per pair of modalities: where n is observed too, expert m's log temperature is lowered
  by r_mn. A product of experts assumes the modalities independent given z_y; two views that carry the same
  evidence (on UCI, the rotation-invariant shape descriptors, which all confuse 6 with 9) then count it twice, and
  their product is overconfident exactly where both are wrong. A temperature per expert cannot see that, as it
  weighs a view alike in every subset. A redundancy only discounts: a negative one would count two views as more
  than independent evidence, which no product of experts needs, and which a few hundred held-out samples favour by
  chance (unbounded, UCI's fits gave fou+kar -0.78, and fou+kar came out overconfident on the test split);
* one factor on the label likelihood: the scale of a Normal or Laplace label per output, or a temperature of the
  logits of a Categorical (or per output, Bernoulli) label;
* with the label's factor alone (``train.calibrate = "label"``, the default for a regression label), or with the
  pairs' redundancies (``"pairs"``, the default for a class label), a regression label and two or more
  modalities, each modality's share s_m of the label's log temperature where it is observed: a sample observing S
  has the label's log scale raised by t_y + sum over m in S of s_m. One factor for every subset left the intervals
  of a subset of weak modalities too narrow while those of a strong modality's were too wide (on data shaped like
  CMU-MOSI, ``inference/speaker_testbed.py``: 90% intervals covering 0.79-0.81 where only audio or video was
  observed, 0.92-0.94 with text); the shares widen the one and narrow the other, and like the factor leave point
  predictions as they are. Class labels keep no shares: on UCI they moved ECE both ways (mor alone 0.20 -> 0.15,
  fou + mor 0.053 -> 0.071; the shape descriptors' double-counted evidence is the redundancy's to undo);
* for a class label and two or more modalities, after everything above and with it fixed, one offset u_m of the
  label's log temperature per modality, where m is observed alone (:func:`_fit_singles`). Alone, a weak view's
  posterior of z_y spans classes and its predictive is underconfident, where views together that share evidence are
  overconfident (UCI: mor alone confidence 0.62 against accuracy 0.74, fou + zer 0.918 against 0.895): one
  temperature cannot move both ways. An offset is kept where it gains more than :data:`SINGLE_GAIN` nat of held-out
  log density; the subsets of two or more modalities are not touched (UCI: mor alone ECE 0.123 -> 0.053),
* with ``model.linear_refit``, in every mode, one factor on the covariances of the refitted posteriors of z_y
  (:mod:`pyro_mfm.infer.refit`), fitted with the label's factor. The Gaussian of a subset's refit has the
  regression's residual spread: where the full posteriors of a class label cluster by class, it spans the classes
  and its predictive is flatter than the evidence (UCI: the linear members' mor alone 0.43 mean confidence against
  0.66 accuracy); on a regression label it trades with the label's own spread (0.68-1.34 on the Bayes oracle's
  data and the speaker testbed), the predictions level,

by maximising the posterior predictive log density of the labels, each output's own, sum_i log p(y_i | x_S) =
sum_i log E_q(z_y | x_S)[p(y_i | z_y)] (one term for a class label; for several outputs, what each output's
interval and metrics read: :func:`mixture_log_predictive`), averaged over observed subsets S (every subset for up to
six modalities, else the single modalities, all of them and random others), with fixed draws of z_y (common random
numbers, so the objective is smooth and the result deterministic). These are the temperature scaling of Guo et al.
(ICML 2017) applied to each expert of the product as well as to the label; they leave the training objective, and
any fit with t = 0, unchanged.

Each draw comes from the posterior that prediction reports for the subset: the product of the tempered experts, or,
where a refitted posterior serves the sample (``model.linear_refit``), that posterior. The refit read the validation
split's features, so there each sample's refitted mean is the regression's held-out one (leave-one-out, or its
group's fold; ``held_out``): fitted in sample, the refitted posteriors score better on the validation split than on
new samples, and the ensemble's stacking then gives the linear members more weight than the test split wants.
"""

from __future__ import annotations

import math
from functools import partial
from itertools import combinations

import numpy as np
import torch
from scipy.optimize import minimize

from ..data.dataset import MultimodalDataset
from ..ensemble import expert_form, mixture_log_weights
from ..guide import expert_weights
from ..model import MFM

# Log temperatures are fitted within +-this: exp(10) = 22,026 times an expert's (or the logits') precision already
# silences or dominates it; beyond, float32 products of experts lose their positive definiteness.
LOG_TEMPERATURE_BOUND = 10.0

# Draws of z_y per sample and subset. The objective's log (1/K) sum_k p(y | z_k) is biased low by about
# Var[p(y | z)] / (2 K p(y | x_S)^2) (Jensen's inequality), most where q(z_y | x_S) is wide beside the label's own
# spread (weak subsets), and a wider label lessens that bias: so the fit widens the label until it suits a mixture
# of K draws, wider than the one of evaluate.num_samples (100) that prediction reports. On the linear-Gaussian oracle
# (tests/test_train.py's data), 16 draws gave the label a log factor of +0.30 to +0.32 and 90% intervals covering
# up to 0.93-0.95 where the weakest modality was observed; 256 gave -0.04 to -0.25 and 0.885-0.923 on every subset
# (`docs/quality.md`, "The calibration's draws"). With the label's factor alone the draws are fixed, the head's
# outputs are computed once and each evaluation rescales them, so that many draws cost little more than a pass of
# evaluation.
# With the experts fitted too (``"all"``) each evaluation draws anew through the product of experts, with 16 draws;
# the label's factor is then fitted again at the experts' values, with the draws of a label-only fit.
EXPERT_DRAWS, LABEL_DRAWS = 16, 256
OUTPUT_BUDGET = 2**24  # numbers of the head's cached outputs (64 MiB in float32)


def label_draws(outputs: int) -> int:
    """The draws of z_y per sample and subset with which the label's factor alone is fitted, given the label head's
    ``outputs`` per draw (subsets x samples x the head's width): as many as keep the cached outputs within
    :data:`OUTPUT_BUDGET` numbers, between :data:`EXPERT_DRAWS` and :data:`LABEL_DRAWS`."""
    return int(min(LABEL_DRAWS, max(EXPERT_DRAWS, OUTPUT_BUDGET // max(1, outputs))))


def calibration_mode(mode: str, mfm: MFM) -> str:
    """What ``train.calibrate = mode`` fits for ``mfm``: ``"auto"`` is ``"pairs"`` for a class label and
    ``"label"`` for a regression label. On UCI's six views (class labels) the pairs' redundancies took the nested
    pairs of subsets that adding views made worse by more than one paired standard error from 54 to 20 of 602 and
    left POM's binary tasks as they were; on POM's 17 ratings (a regression label) they cost audio + video 0.022
    MAE, shrinking its means (`docs/quality.md`)."""
    if mode != "auto":
        return mode
    return "label" if mfm.D is not None and mfm.D.kind in ("normal", "laplace") else "pairs"


def calibration_subsets(names, limit: int = 63, seed: int = 0) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``names`` when there are at most ``limit``; else each single modality, all of
    them, and random others up to ``limit``."""
    every = [c for k in range(1, len(names) + 1) for c in combinations(names, k)]
    if len(every) <= limit:
        return every
    fixed = [(m,) for m in names] + [tuple(names)]
    rng = np.random.default_rng(seed)
    rest = []
    while len(fixed) + len(rest) < limit:
        k = int(rng.integers(2, len(names)))
        s = tuple(n for n in names if n in set(rng.choice(names, k, replace=False)))
        if s not in rest and s not in fixed:
            rest.append(s)
    return fixed + rest


@torch.no_grad()
def _encoded(mfm: MFM, ds: MultimodalDataset, batch_size: int, device):
    """Per batch with a labelled sample: the batch without its labels, the labels, which are known, and the
    experts (eta_m, Lambda_m) of its modalities (``None`` without a product of experts)."""
    parts = []
    for batch in ds.loader(batch_size, device=device):
        keep, y = batch.y_present, batch.y
        if not bool(keep.any()):
            continue
        batch = batch.without_labels()
        if mfm.config.fusion == "poe" and mfm.shared:  # computed once: the networks are fixed
            experts = mfm.guide.features(batch).experts
        else:
            experts = None
        parts.append((batch, y, keep, experts))
    return parts


def output_log_probs(p_y, y) -> torch.Tensor:
    """log p(y_i | z) of each output i of the label, (..., N, d): a regression or multilabel label's outputs one by
    one, a class label as one output."""
    if isinstance(p_y, torch.distributions.Independent):
        return p_y.base_dist.log_prob(y)
    return p_y.log_prob(y).unsqueeze(-1)


def output_mixtures(lp) -> torch.Tensor:
    """Each output's own mixture over the K draws, log (1/K) sum_k p(y_i | z_k), (..., N, d), from the log densities
    ``lp`` of the label's outputs, (K, ..., N, d)."""
    return torch.logsumexp(lp, 0) - math.log(lp.shape[0])


def mixture_log_predictive(lp) -> torch.Tensor:
    """The log predictive density of the label from the log densities ``lp`` of its outputs at K draws, (K, ..., N,
    d): the sum over the outputs of each output's own mixture, sum_i log (1/K) sum_k p(y_i | z_k), (..., N). Each
    output's predictive is what its interval and its metrics read; the joint mixture, log (1/K) sum_k prod_i p(y_i |
    z_k), lets draws of z_y that move every output together stand in for a spread that each output's predictive
    then lacks (on POM's 17 ratings, the joint fit left 90% intervals covering 0.86 of the validation labels that
    it was fitted on, `docs/quality.md`). The same for one output."""
    return output_mixtures(lp).sum(-1)


def _mean_nlpd(parts) -> torch.Tensor:
    """The mean negative log predictive density over ``parts`` of ``(lp, keep)``: each the log densities of the
    label's outputs at K draws, (K, ..., N, d), whose outputs' mixtures (:func:`mixture_log_predictive`) are scored
    on the labelled samples ``keep``."""
    total, count = 0.0, 0
    for lp, keep in parts:
        lp = mixture_log_predictive(lp)  # (..., N)
        total = total - lp[..., keep].sum()
        count += int(keep.sum()) * (lp[..., 0].numel())
    return total / count


class HeldOutNLPD:
    """The objective of :func:`calibrate`: the mean negative log predictive density of the labels of ``parts``
    (:func:`_encoded`) over ``subsets``, as a function of the experts' log temperatures ``t`` (M,), the pairs'
    redundancies ``r`` (M, M) and the label's log temperature, with ``num_samples`` fixed draws of z_y per sample.
    ``held_out``: with ``model.linear_refit``, the refit's held-out means of the samples of the split that ``parts``
    encode (:func:`~pyro_mfm.infer.refit.refit_subsets`), which the refitted posteriors' draws are centred on."""

    def __init__(
        self,
        mfm: MFM,
        parts: list,
        subsets: list,
        num_samples: int,
        seed: int,
        cache: bool = False,
        fixed=None,
        held_out: dict | None = None,
    ):
        self.mfm, self.parts, self.subsets, self.num_samples = mfm, parts, subsets, num_samples
        self.draws = num_samples  # the first ``draws`` of the fixed draws enter the objective (see :func:`calibrate`)
        # cache: the experts' temperatures and redundancies stay at ``fixed`` = (t, r) (default 0), so the draws of
        # z_y, and the label head's outputs at them, are fixed: computed once (:meth:`outputs`), and each evaluation
        # only rescales them
        self.cache, self.cached, self.fixed_experts = cache, None, fixed
        self.device = next(mfm.parameters()).device
        gen = torch.Generator(device="cpu").manual_seed(seed)
        k = mfm.config.z_y_dim
        self.noise = [torch.randn((num_samples, len(b), k), generator=gen).to(self.device) for b, _, _, _ in parts]
        self.poe = mfm.config.fusion == "poe" and mfm.shared
        self.fixed = {}  # without a product of experts the codes do not depend on what is fitted: computed once
        if self.poe:  # per batch: which modality each subset observes for each sample, (S, M, N)
            member = torch.tensor([[m in obs for m in mfm.names] for obs in subsets], device=self.device)
            self.observed = [member[:, :, None] & b.present_masks(mfm.names).T[None] for b, _, _, _ in parts]
            # and which known absences each observes (model.missingness), (S, A, N): an absence's expert has weight 1
            lacking = mfm.guide.absent_names
            member = torch.tensor([[m in obs for m in lacking] for obs in subsets], device=self.device, dtype=bool)
            self.absent = [member[:, :, None] & b.absent_masks(lacking).T[None] for b, _, _, _ in parts]
            # subsets per step: tensors that fit in cache
            self.chunk = max(1, 16_384 // (num_samples * max(len(b) for b, _, _, _ in parts)))
            # model.linear_refit: where a subset's refitted posterior serves a sample, it is what prediction draws
            # from, in place of the product of experts, so it is what the calibration scores there
            self.refitted = [
                self._refitted(b, obs, ab, held_out) for (b, _, _, _), obs, ab in zip(parts, self.observed, self.absent)
            ]

    @torch.no_grad()
    def _refitted(self, batch, observed, absent, held_out=None):
        """For one batch, the rows (S, N) of each subset that a refitted posterior serves (the guide's
        ``subset_posteriors``: a fitted subset, no known absence) with their means (S, N, k), each row's subset code
        (S, N) and the Cholesky factors by code (2^M, k, k); ``None`` where no row is served. A row's mean is its
        held-out mean where ``held_out`` (``{code: (n, k)}`` over the split's samples) has one, so that the split
        that the refit read scores the refitted posteriors as new samples meet them."""
        refit = getattr(self.mfm.guide, "subset_posteriors", None)
        if refit is None:
            return None
        guide = self.mfm.guide
        inputs = guide.linear_inputs(batch, guide.inputs(batch))
        inputs = [inputs[m] for m in self.mfm.names]
        keep = ~absent.any(1)  # (S, N): a sample that knows an absence keeps its product of experts, as in the guide
        served = [refit.fitted_rows(inputs, obs.T, kept)[:2] for obs, kept in zip(observed, keep)]
        rows = torch.stack([r for r, _ in served])
        if not bool(rows.any()):
            return None
        loc, codes = torch.stack([loc for _, loc in served]), refit.codes(observed.mT)  # (S, N, k), (S, N)
        if held_out:
            means = loc.new_full((refit.subsets + 1,) + loc.shape[1:], float("nan"))  # (2^M, N, k)
            for code, table in held_out.items():
                means[code] = table[batch.index.cpu()].to(means)
            means = means[codes, torch.arange(codes.shape[1], device=codes.device)]  # (S, N, k)
            loc = torch.where((rows & means.isfinite().all(-1))[..., None], means, loc)
        table = [torch.zeros_like(refit.scale_tril_1)] + [refit.parts(c)[2] for c in range(1, refit.subsets + 1)]
        return rows, loc, codes, torch.stack(table)

    def _refitted_chunk(self, i: int, s: int):
        """:meth:`_refitted` of batch ``i`` for the subsets ``s`` to ``s + chunk``."""
        found = self.refitted[i] if self.poe else None
        if found is None:
            return None
        rows, loc, codes, table = found
        end = s + self.chunk
        return rows[s:end], loc[s:end], codes[s:end], table

    def log_predictive(self, latents, y, observed=None):
        """sum_i log (1/K) sum_k p(y_i | z_k) over the label's outputs (:func:`mixture_log_predictive`) for draws
        ``latents`` of shape (K, ..., N, k); ``observed``: (..., N, M) masks of the observed modalities, whose shares
        of the label's log temperature (and single modalities' offsets of it) then apply."""
        return mixture_log_predictive(output_log_probs(self.mfm.label_distribution(latents, observed=observed), y))

    def __call__(self, t, r, t_y, shares=None, singles=None, refit_log_scale=None):
        """The objective at the experts' log temperatures ``t``, redundancies ``r``, the label's log temperature
        ``t_y`` and, if given, the observed modalities' ``shares`` of it (M,), the single modalities' offsets of
        it, ``singles`` (M,: where a modality is observed alone), and the log of the factor on the refitted
        posteriors' covariances, ``refit_log_scale`` (``model.linear_refit``; else as the model holds it)."""
        by_subset = self._set_label(t_y, shares, singles)
        if refit_log_scale is not None:
            if self.cache:
                raise ValueError(
                    "HeldOutNLPD(cache=True): the refit's scale is the model's, at which its draws were taken"
                )
            self.mfm.guide.subset_posteriors.log_scale = refit_log_scale
        total, count = 0.0, 0
        if self.cache:
            fixed_t, fixed_r = self.experts_fixed()
            if not (torch.equal(t, fixed_t) and torch.equal(r, fixed_r)):  # the cached draws are those of fixed
                raise ValueError("HeldOutNLPD(cache=True): t and r must be the fixed ones its draws were taken at")
            return _mean_nlpd(self.log_densities(t_y, shares, singles))
        for i, ((batch, y, keep, experts), eps) in enumerate(zip(self.parts, self.noise)):
            eps = eps[: self.draws]
            if self.poe:
                for s in range(0, len(self.subsets), self.chunk):
                    observed = self.observed[i][s : s + self.chunk]  # (S, M, N)
                    absent = self.absent[i][s : s + self.chunk]
                    lp = self.log_predictive(
                        self.product_draws(experts, observed, t, r, eps, absent, self._refitted_chunk(i, s)),
                        y,
                        observed.mT if by_subset else None,
                    )  # (S, N)
                    total = total - lp[:, keep].sum()
                    count += int(keep.sum()) * lp.shape[0]
            else:
                for obs in self.subsets:
                    observed = batch.observe_only(obs).present_masks(self.mfm.names) if by_subset else None
                    lp = self.log_predictive(self.codes(i, batch, obs, eps), y, observed)
                    total = total - lp[keep].sum()
                    count += int(keep.sum())
        return total / count

    def log_densities(self, t_y, shares=None, singles=None) -> list:
        """With the experts' values fixed (``cache``): per part of :meth:`outputs`, the log densities of the label's
        outputs log p(y_i | z_k) at each fixed draw, (K, ..., N, d), at the label's log temperature ``t_y`` and, if
        given, the observed modalities' ``shares`` of it and the single modalities' offsets ``singles``, with the
        labelled samples (N,)."""
        by_subset = self._set_label(t_y, shares, singles)
        out = []
        for head, y, keep, observed in self.outputs():
            d = self.mfm.model.label_from_output(head[: self.draws], observed if by_subset else None)
            out.append((output_log_probs(d, y), keep))
        return out

    def _set_label(self, t_y, shares, singles) -> bool:
        """Put the label's values being fitted into the model; whether any of them depends on the subset."""
        self.mfm.D.log_temperature = t_y
        if shares is not None:  # the modalities' shares, and after them, if given, the offset where none is observed
            m = len(self.mfm.names)
            self.mfm.model.label_observed_log_temperature = shares[:m]
            if shares.shape[0] > m:
                self.mfm.model.label_empty_log_temperature = shares[m]
        if singles is not None:
            self.mfm.model.label_single_log_temperature = singles
        return shares is not None or singles is not None

    def experts_fixed(self):
        """The experts' log temperatures (M,) and redundancies (M, M) at which the cached draws are taken."""
        if self.fixed_experts is not None:
            return self.fixed_experts
        m = len(self.mfm.names)
        dtype = self.mfm.D.log_temperature.dtype
        return torch.zeros(m, dtype=dtype, device=self.device), torch.zeros(m, m, dtype=dtype, device=self.device)

    @torch.no_grad()
    def outputs(self) -> list:
        """With the experts' values fixed (:meth:`experts_fixed`): per batch (and subset without a product of
        experts), the label head's outputs at the fixed draws, (K, S, N, ...) or (K, N, ...), with the labels, the
        labelled samples and the observed modalities' masks (S, N, M) or (N, M); computed on the first call."""
        if self.cached is None:
            model, names, cache = self.mfm.model, self.mfm.names, []
            fixed_t, fixed_r = self.experts_fixed()
            for i, ((batch, y, keep, experts), eps) in enumerate(zip(self.parts, self.noise)):
                if self.poe:
                    for s in range(0, len(self.subsets), self.chunk):
                        observed = self.observed[i][s : s + self.chunk]  # (S, M, N)
                        absent = self.absent[i][s : s + self.chunk]
                        z = self.product_draws(
                            experts, observed, fixed_t, fixed_r, eps, absent, self._refitted_chunk(i, s)
                        )
                        cache.append((model.label_output(z), y, keep, observed.mT))
                else:
                    for obs in self.subsets:
                        observed = batch.observe_only(obs).present_masks(names)
                        cache.append((model.label_output(self.codes(i, batch, obs, eps)), y, keep, observed))
            self.cached = cache
            self.fixed.clear()  # the codes behind the cached outputs: every evaluation reads the outputs instead
        return self.cached

    def product_draws(self, experts, observed, t, r, eps, absent=None, refitted=None):
        """Draws (K, S, N, k) of the product of the prior and the tempered experts that each of S subsets observes
        (``observed``: (S, M, N)), every subset at once, with the experts of the absences that each knows
        (``absent``: (S, A, N) over the guide's ``absent_names``; none where ``None``); in the rows that
        ``refitted`` (:meth:`_refitted_chunk`) marks, draws of their refitted posteriors with the same noise."""
        eta = torch.stack([e for e, _ in experts])  # (M, N, k)
        lam = torch.stack([p for _, p in experts])  # (M, N, k, k)
        eye = torch.eye(eta.shape[-1], dtype=eta.dtype, device=eta.device)
        w = expert_weights(observed.mT, t, r).mT  # (S, M, N): the guide's weights at the values being fitted
        if absent is not None and absent.shape[1]:
            extra = self.mfm.guide.absence_experts((eta.shape[1],))
            eta = torch.cat([eta, torch.stack([e for e, _ in extra])])
            lam = torch.cat([lam, torch.stack([p for _, p in extra])])
            w = torch.cat([w, absent.to(w.dtype)], 1)
        chol = torch.linalg.cholesky(eye + torch.einsum("smn,mnij->snij", w, lam))
        loc = torch.cholesky_solve(torch.einsum("smn,mni->sni", w, eta).unsqueeze(-1), chol)
        # z = loc + L^-T eps has covariance (L L^T)^-1: a draw of the product, for each of the K eps
        root = torch.linalg.solve_triangular(chol.mT, eye, upper=True)
        z = loc.squeeze(-1) + torch.einsum("snij,knj->ksni", root, eps)
        if refitted is None:
            return z
        rows, fit_loc, codes, table = refitted
        tril = table[codes].to(z.dtype) * self.mfm.guide.subset_posteriors.factor_scale().to(z.dtype)
        fit = fit_loc.to(z.dtype) + torch.einsum("snij,knj->ksni", tril, eps)
        return torch.where(rows[None, :, :, None], fit, z)

    def codes(self, i, batch, obs, eps):
        if (i, obs, len(eps)) not in self.fixed:
            with torch.no_grad():
                sub = batch.observe_only(obs)
                if self.mfm.shared:
                    q = self.mfm.posterior_z_y(sub)
                    self.fixed[i, obs, len(eps)] = q.loc + (q.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
                else:
                    self.fixed[i, obs, len(eps)] = {
                        s: v.expand((len(eps),) + v.shape) for s, v in self.mfm.codes(sub).items()
                    }
        return self.fixed[i, obs, len(eps)]


def _symmetric(values, size: int):
    """The symmetric, zero-diagonal (size, size) matrix with ``values`` above the diagonal (row by row)."""
    pairs = torch.triu_indices(size, size, offset=1, device=values.device)
    r = torch.zeros(size, size, dtype=values.dtype, device=values.device).index_put((pairs[0], pairs[1]), values)
    return r + r.T


def _value_and_grad(x, f, dtype, device):
    x = torch.tensor(x, dtype=dtype, device=device, requires_grad=True)
    try:
        loss = f(x)
        (grad,) = torch.autograd.grad(loss, x)
    except torch.linalg.LinAlgError:  # a product too ill-conditioned to factorise at this x: not a fit to take
        return math.inf, np.zeros(len(x))
    if not torch.isfinite(loss):
        return math.inf, np.zeros(len(x))
    return float(loss.detach()), grad.detach().cpu().double().numpy()


def _lbfgs(f, x0, bounds, reference, max_iter: int, dtype, device):
    """L-BFGS-B on ``f`` (of a tensor of ``dtype`` on ``device``) from ``x0``, stopped when a step changes it by less
    than 1e-5 of ``reference``'s size (at most 1)."""
    options = {"maxiter": max_iter, "ftol": 1e-5 * min(abs(reference), 1.0)}
    value_and_grad = partial(_value_and_grad, f=f, dtype=dtype, device=device)
    return minimize(value_and_grad, x0, jac=True, method="L-BFGS-B", bounds=bounds, options=options).x


def calibrate(
    mfm: MFM,
    ds: MultimodalDataset,
    num_samples: int | None = None,
    batch_size: int = 512,
    seed: int = 0,
    max_iter: int = 100,
    experts: bool = True,
    redundancies: bool | None = None,
    held_out: dict | None = None,
) -> dict:
    """Fit the experts' and the label's temperatures on ``ds`` (held-out, labelled) and store them in ``mfm``.

    Returns ``{"expert_log_temperature": {m: t_m}, "expert_redundancy": {"m+n": r_mn}, "label_log_temperature":
    [...], "label_observed_log_temperature": {m: s_m}, "label_empty_log_temperature": e,
    "label_single_log_temperature": {m: u_m}, "label_single_gain": {m: nats}, "nlpd_before": ..., "nlpd_after": ...,
    "label_refit": ...}`` (mean negative log predictive density per labelled sample and subset, on ``ds``, before
    the single modalities' offsets, which :func:`_fit_singles` fits afterwards for a class label; ``label_refit``:
    with the experts, the draws and the objective before and after the label's factor was fitted again at their
    values, else ``None``). ``num_samples``: draws of z_y per sample and subset (``None``: :data:`EXPERT_DRAWS` with
    the experts, else :func:`label_draws`). ``experts = False`` fits the label's factor alone (the experts keep t =
    0 and r = 0), with the modalities' shares s_m of it for a regression label and two or more modalities (else 0),
    and with them the offset e where a sample observes none of a subset's modalities (its prior predictive, to which
    no share applies). ``redundancies`` (default: as ``experts``) fits the pairs' redundancies r_mn; ``experts =
    False`` with ``redundancies = True`` (``train.calibrate = "pairs"``) fits them and the label's factor (and
    shares), the experts' temperatures kept at 0. ``held_out``: with ``model.linear_refit``, the refit's held-out
    means of ``ds``'s samples (``{code: (n, k)}``, :func:`~pyro_mfm.infer.refit.refit_subsets`), where the refit
    read ``ds``. Does nothing (and returns ``{}``) when the model has no label or ``ds`` no labelled sample.
    """
    if mfm.D is None or ds.labels is None or not np.asarray(ds.label_present).any():
        return {}
    device, was_training, names = next(mfm.parameters()).device, mfm.training, mfm.names
    mfm.eval()
    poe = mfm.config.fusion == "poe" and mfm.shared
    m, k_y = len(names), mfm.D.log_temperature.numel()
    temperatures_on = experts and poe
    pairs_on = (experts if redundancies is None else redundancies) and poe and m > 1
    experts_on = temperatures_on or pairs_on  # the product of experts changes with what is fitted
    # model.linear_refit: the log of a factor on the refitted posteriors' covariances, fitted with the label's
    # factor in the second fit below, with its many draws (the first fit's few bias any spread of z_y narrow)
    refit = getattr(mfm.guide, "subset_posteriors", None) if poe else None
    scale_on = refit is not None and any(refit.fitted(code) for code in range(1, refit.subsets))
    if scale_on:
        refit.log_scale = torch.zeros_like(refit.log_scale)  # the refit as fitted, the factor 1
    parts, subsets = _encoded(mfm, ds, batch_size, device), calibration_subsets(names, seed=seed)
    outputs = len(subsets) * sum(len(b) for b, _, _, _ in parts) * mfm.D.label.dim  # the head's, per draw
    if num_samples is None:
        num_samples = EXPERT_DRAWS if experts_on else label_draws(outputs)
    cache = not experts_on and num_samples * outputs <= OUTPUT_BUDGET  # else drawn anew at each evaluation
    objective = HeldOutNLPD(mfm, parts, subsets, num_samples, seed, cache=cache, held_out=held_out)
    # the label's spread ("label"): its log temperature and, for a regression label and two or more modalities,
    # each modality's share of it where observed (a subset of weak modalities wider than one with a strong
    # modality; the point predictions unchanged); "pairs": with the pairs' redundancies; "all": the label's log
    # temperature, the experts' and the pairs' values
    shares_on = not temperatures_on and m > 1 and mfm.D.kind in ("normal", "laplace")
    # a class label: then each single modality's own offset of the label's log temperature (in every mode)
    singles_on = m > 1 and mfm.D.kind in ("categorical", "bernoulli")
    n_pairs = m * (m - 1) // 2 if pairs_on else 0
    # the shares come with the offset of the samples that observe none of a subset's modalities (their prior
    # predictive, to which no share applies), the last of them
    sizes = [k_y, m if temperatures_on else 0, n_pairs, m + 1 if shares_on else 0]
    dtype = mfm.D.log_temperature.dtype

    def unpack(x):
        t_y, t_x, r, shares = torch.split(torch.as_tensor(x, dtype=dtype, device=device), sizes)
        t_x = t_x if temperatures_on else torch.zeros(m, dtype=dtype, device=device)
        r = r if pairs_on else torch.zeros(m * (m - 1) // 2, dtype=dtype, device=device)
        return t_y, t_x, r, shares if shares_on else None

    def nlpd(x):
        t_y, t_x, r, shares = unpack(x)
        return objective(t_x, _symmetric(r, m), t_y, shares)

    lbfgs = partial(_lbfgs, max_iter=max_iter, dtype=dtype, device=device)

    frozen = [p for p in mfm.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    x, label_refit, scale = np.zeros(sum(sizes)), None, 0.0
    singles, singles_gain = torch.zeros(m, dtype=dtype, device=device), {}
    try:
        with torch.no_grad():  # the model as trained: t = 0, r = 0
            before = float(nlpd(x))
        # L-BFGS-B (box-constrained quasi-Newton): each redundancy r_mn >= 0 (a redundancy only discounts; a negative
        # one, which a few hundred held-out samples can favour by chance, would count two views as more than independent
        # evidence), log temperatures within +-LOG_TEMPERATURE_BOUND. Unbounded, a line search on POM's validation
        # videos of a binary label tried an expert's weight so large that the product of experts could not be factorised
        # in float32; a point where it cannot be is given an infinite objective. Coarse to fine: first on a quarter of
        # the draws (a quarter of the cost per evaluation), then on all of them from there, where a few steps suffice.
        # It stops when a step changes the objective by less than 1e-5 of its value, far below its sampling error on any
        # validation split (0.1-1% at best).
        bounds = [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)] * (k_y + sizes[1])
        bounds += [(0.0, None)] * n_pairs + [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)] * sizes[3]
        for draws in dict.fromkeys((max(1, num_samples // 4), num_samples)):
            objective.draws = draws
            x = lbfgs(nlpd, x, bounds, before)
        with torch.no_grad():
            after = float(nlpd(x))
        if not (math.isfinite(after) and after <= before):  # never keep a worse (or broken) fit
            x, after = np.zeros_like(x), before
        more, n_scale = label_draws(outputs), int(scale_on)
        if (experts_on and more > num_samples or scale_on) and more * outputs <= OUTPUT_BUDGET:
            # the label's factor (and shares) again, at the experts' fitted values, with the draws of a label-only
            # fit: the experts' EXPERT_DRAWS bias the label wide (LABEL_DRAWS), and with the experts fixed the draws
            # are too (computed once, unless the refit's scale is fitted with it: that moves the draws)
            t_y, t_x, r, shares = unpack(x)
            fixed = (t_x, _symmetric(r, m))
            label_objective = HeldOutNLPD(
                mfm, parts, subsets, more, seed, cache=not scale_on, fixed=fixed, held_out=held_out
            )
            # the label's log temperature, the refit's log scale (starting at 0), the shares
            label_part = torch.as_tensor(np.concatenate([x[:k_y], [0.0] * n_scale, x[len(x) - sizes[3] :]]))
            label_part = label_part.to(dtype).double().numpy()  # the values as the model holds them

            def label_nlpd(v):
                v = torch.as_tensor(v, dtype=dtype, device=device)
                shares = v[k_y + n_scale :] if shares_on else None
                return label_objective(*fixed, v[:k_y], shares, refit_log_scale=v[k_y] if scale_on else None)

            with torch.no_grad():
                refit_before = float(label_nlpd(label_part))
            label_bounds = [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)] * len(label_part)
            v = lbfgs(label_nlpd, label_part, label_bounds, refit_before)
            with torch.no_grad():
                refit_after = float(label_nlpd(v))
            if math.isfinite(refit_after) and refit_after <= refit_before:
                x[:k_y], x[len(x) - sizes[3] :] = v[:k_y], v[k_y + n_scale :]
                scale = float(v[k_y]) if scale_on else 0.0
                label_refit = {"draws": more, "nlpd_before": refit_before, "nlpd_after": refit_after}
            if scale_on:  # what the single modalities' fixed draws below are taken at
                refit.log_scale = torch.tensor(scale, dtype=refit.log_scale.dtype, device=device)
        if singles_on:  # with everything else as fitted, each single modality's offset on its own
            t_y, t_x, r, shares = unpack(x)
            singles, singles_gain = _fit_singles(mfm, parts, (t_x, _symmetric(r, m)), t_y, lbfgs, seed, held_out)
    finally:  # whatever stopped the fit, the model holds plain tensors of one fit (the last accepted, or none)
        for p in frozen:
            p.requires_grad_(True)
        t_y, t_x, r_fit, shares = unpack(x)
        t_y, t_x, r_fit = t_y.detach(), t_x.detach(), r_fit.detach()
        if scale_on:
            refit.log_scale = torch.tensor(scale, dtype=refit.log_scale.dtype, device=device)
        shares = torch.zeros(m + 1, dtype=dtype, device=device) if shares is None else shares.detach()
        singles = singles.detach()
        mfm.D.log_temperature = t_y.clone()
        mfm.model.label_observed_log_temperature = shares[:m].clone()
        mfm.model.label_empty_log_temperature = shares[m].clone()
        mfm.model.label_single_log_temperature = singles.clone()
        with torch.no_grad():
            mfm.expert_log_temperature.copy_(t_x)
            mfm.expert_redundancy.copy_(_symmetric(r_fit, m))
        mfm.train(was_training)
    index = torch.triu_indices(len(names), len(names), offset=1).tolist()
    return {
        "expert_log_temperature": {m: float(t) for m, t in zip(names, mfm.expert_log_temperature)},
        "expert_redundancy": {f"{names[a]}+{names[b]}": float(v) for a, b, v in zip(*index, r_fit.tolist())},
        "label_log_temperature": [float(t) for t in mfm.D.log_temperature],
        "label_observed_log_temperature": {m: float(s) for m, s in zip(names, shares)},
        # where a sample observes none of a subset's modalities (a regression label's, fitted with the shares)
        "label_empty_log_temperature": float(mfm.model.label_empty_log_temperature),
        "label_single_log_temperature": {m: float(s) for m, s in zip(names, singles)},
        # each single modality's gain in held-out log predictive density from its offset, in nats (kept above 1)
        "label_single_gain": singles_gain,
        "nlpd_before": before,
        "nlpd_after": after,
        "subsets": len(objective.subsets),
        # with the experts or the refit's scale: the label's factor fitted again with more draws (None: not refitted)
        "label_refit": label_refit,
        # model.linear_refit: the log of the factor on the refitted posteriors' covariances (None: none refitted)
        "refit_log_scale": float(refit.log_scale) if scale_on else None,
    }


# A single modality's offset of the label's log temperature is kept where it raises the held-out log predictive
# density of that modality's predictions by more than this, in nats summed over the samples: what one parameter
# fitted to those same samples gains by chance (Akaike's information criterion: a fitted parameter costs one nat).
SINGLE_GAIN = 1.0


def _fit_singles(mfm: MFM, parts, fixed, t_y, lbfgs, seed: int, held_out=None):
    """Each single modality's offset u_m of the label's log temperature, fitted on the labelled samples of ``parts``
    where m is observed alone, with the experts at ``fixed`` = (t, r) and the label's log temperature at ``t_y``, from
    a label-only fit's fixed draws of z_y; kept where it raises that held-out log predictive density by more than
    :data:`SINGLE_GAIN` nats, else 0 (the strong views' offsets, fitted on the few errors of a validation split, are
    noise, where a weak view alone, whose posterior of z_y spans classes, gains tens of nats). Returns the offsets
    (M,) and the gains ``{m: nats}``. The subsets of two or more modalities are not touched."""
    m, dtype, device = len(mfm.names), t_y.dtype, t_y.device
    labelled = sum(int(keep.sum()) for _, _, keep, _ in parts)
    outputs = sum(len(b) for b, _, _, _ in parts) * mfm.D.label.dim
    singles, gains = torch.zeros(m, dtype=dtype, device=device), {}
    for i, name in enumerate(mfm.names):
        alone = HeldOutNLPD(
            mfm, parts, [(name,)], label_draws(outputs), seed, cache=True, fixed=fixed, held_out=held_out
        )
        place = torch.zeros(m, dtype=dtype, device=device)
        place[i] = 1.0

        def nlpd(v, alone=alone, place=place):
            return alone(*fixed, t_y, None, v.reshape(()) * place)

        with torch.no_grad():
            before = float(nlpd(torch.zeros(1, dtype=dtype, device=device)))
        v = lbfgs(nlpd, np.zeros(1), [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)], before)
        with torch.no_grad():
            after = float(nlpd(torch.as_tensor(v, dtype=dtype, device=device)))
        gains[name] = (before - after) * labelled if math.isfinite(after) else -math.inf
        if gains[name] > SINGLE_GAIN:
            singles[i] = float(v[0])
    return singles, gains


def calibrate_ensemble(
    ensemble,
    ds: MultimodalDataset,
    seed: int = 0,
    batch_size: int = 512,
    max_iter: int = 100,
    held_out: list | None = None,
) -> dict:
    """Fit, on ``ds`` (held out from every member), one offset of the label's log temperature common to the members
    of ``ensemble`` (and, for a regression label and two or more modalities, one of each modality's share of it),
    added to what each member's own calibration fitted, so that the ensemble's predictive, the mixture of its
    members', is calibrated as a whole; store it in the members. A class label's single modalities keep each member's
    own offsets (:func:`calibrate`), which this fit leaves out.

    Each member calibrated alone is right on its own; their mixture is wider where they disagree, and so
    underconfident. The objective is :func:`calibrate`'s with the label's factor alone, the mean negative log
    predictive density over the observed subsets, of the mixture: log (1/(K J)) sum over the J members and their K
    fixed draws of z_y of p(y | z). The experts stay as each member's calibration left them.

    Where the members' experts differ in form (``model.expert = "both"``), the mixture is weighted, and fitted with
    the offsets: each form but the first has a log weight a + sum over the observed modalities m of b_m, which its
    members share, normalised over the members (:func:`~pyro_mfm.ensemble.mixture_log_weights`; stored in each
    member's ``model.mixture_log_weight``), so that every observed subset takes the forms in the proportion that
    predicts its held-out labels best (stacking, Yao et al., Bayesian Analysis 2018). The coefficients have a
    standard normal prior, over the labelled samples: where the split cannot tell the forms apart the mixture stays
    near equal.

    Returns ``{"label_log_temperature_offset": [...], "label_observed_log_temperature_offset": {m: ...},
    "label_empty_log_temperature_offset": ..., "nlpd_before": ..., "nlpd_after": ..., "draws": K, "members": J,
    "subsets": ...}`` and, with forms that differ, ``"mixture_log_weight": {form: [a, b_1, ..., b_M]}`` (``{}``
    where the model has no label or ``ds`` no labelled sample); a fit that does not lower the objective is not
    kept. ``held_out``: per member, :func:`calibrate`'s ``held_out`` (``None`` for one without)."""
    members = list(ensemble.members)
    held_out = [None] * len(members) if held_out is None else held_out
    first = members[0]
    if first.D is None or ds.labels is None or not np.asarray(ds.label_present).any():
        return {}
    device, names = next(first.parameters()).device, first.names
    was_training = [member.training for member in members]
    for member in members:
        member.eval()
    subsets = calibration_subsets(names, seed=seed)
    objectives, base = [], []
    for member, means in zip(members, held_out):
        parts = _encoded(member, ds, batch_size, device)
        outputs = len(subsets) * sum(len(b) for b, _, _, _ in parts) * member.D.label.dim
        fixed = (member.expert_log_temperature.detach().clone(), member.expert_redundancy.detach().clone())
        draws = label_draws(outputs * len(members))
        objectives.append(HeldOutNLPD(member, parts, subsets, draws, seed, cache=True, fixed=fixed, held_out=means))
        # the label's log temperature, and its modalities' shares followed by the offset where none is observed
        model = member.model
        shares = torch.cat([model.label_observed_log_temperature, model.label_empty_log_temperature[None]])
        base.append((member.D.log_temperature.detach().clone(), shares.clone()))
    m, k_y = len(names), first.D.log_temperature.numel()
    shares_on = m > 1 and first.D.kind in ("normal", "laplace")
    dtype = first.D.log_temperature.dtype
    # the members' forms (model.expert = "both"): the mixture weighs each form but the first by a log weight affine
    # in the observed modalities, the members of a form alike
    forms = list(dict.fromkeys(expert_form(member.config) for member in members))
    form_of = torch.tensor([forms.index(expert_form(member.config)) for member in members], device=device)
    # x: the label's offset, the shares' offsets (and the offset where none is observed), the forms' weights
    weights_from = k_y + (m + 1 if shares_on else 0)
    labelled = sum(int(keep.sum()) for _, _, keep, _ in objectives[0].parts)
    observed = [o.to(dtype) for _, _, _, o in objectives[0].outputs()]  # the same parts and masks for every member

    def form_weights(x):
        """Each form's coefficients [a, b_1 .. b_M] (the first form's 0), (forms, M + 1)."""
        return torch.cat([x.new_zeros(1, m + 1), x[weights_from:].view(-1, m + 1)])

    def nlpd(x):
        x = torch.as_tensor(x, dtype=dtype, device=device)
        offset, share_offset = x[:k_y], x[k_y:weights_from] if shares_on else None
        per_member = [
            objective.log_densities(t + offset, None if share_offset is None else s + share_offset)
            for objective, (t, s) in zip(objectives, base)
        ]
        if len(forms) == 1:  # the same part of the validation split from every member: the mixture's J K draws
            return _mean_nlpd((torch.cat([lp for lp, _ in parts]), parts[0][1]) for parts in zip(*per_member))
        coef = form_weights(x)[form_of]  # (J, M + 1)
        total, count = 0.0, 0
        for parts, obs in zip(zip(*per_member), observed):
            keep = parts[0][1]
            # each member's mixture over its K draws, weighted by the member's log weight for the observed subset
            own = torch.stack([output_mixtures(lp) for lp, _ in parts])  # (J, ..., N, d)
            # each output's mixture over the members (:func:`mixture_log_predictive`), summed over the outputs
            lp = torch.logsumexp(own + mixture_log_weights(coef, obs).unsqueeze(-1), 0).sum(-1)
            total = total - lp[..., keep].sum()
            count += int(keep.sum()) * lp[..., 0].numel()
        # a standard normal prior on each weight's coefficients, over the labelled samples: the equal mixture where
        # the validation split does not tell the forms apart
        return total / count + 0.5 * x[weights_from:].square().sum() / labelled

    x = np.zeros(weights_from + (m + 1) * (len(forms) - 1))
    try:
        with torch.no_grad():
            before = float(nlpd(x))
        bounds = [(-LOG_TEMPERATURE_BOUND, LOG_TEMPERATURE_BOUND)] * len(x)
        x = _lbfgs(nlpd, x, bounds, before, max_iter, dtype, device)
        with torch.no_grad():
            after = float(nlpd(x))
        if not (math.isfinite(after) and after <= before):  # never keep a worse (or broken) fit
            x, after = np.zeros_like(x), before
    finally:  # the members hold plain tensors of their own fit plus the kept offset (or none)
        kept = torch.as_tensor(x, dtype=dtype, device=device)
        coef = form_weights(kept)
        for member, (t, s), training, form in zip(members, base, was_training, form_of):
            member.D.log_temperature = (t + kept[:k_y]).detach().clone()
            shares = (s + kept[k_y:weights_from] if shares_on else s).detach()
            member.model.label_observed_log_temperature = shares[:m].clone()
            member.model.label_empty_log_temperature = shares[m].clone()
            if len(forms) > 1:
                member.model.mixture_log_weight = coef[form].detach().clone()
            member.train(training)
    record = {
        "label_log_temperature_offset": [float(v) for v in x[:k_y]],
        "label_observed_log_temperature_offset": (
            {n: float(v) for n, v in zip(names, x[k_y : k_y + m])} if shares_on else {}
        ),
        "label_empty_log_temperature_offset": float(x[k_y + m]) if shares_on else 0.0,
        "nlpd_before": before,
        "nlpd_after": after,
        "draws": objectives[0].draws,
        "members": len(members),
        "subsets": len(subsets),
    }
    if len(forms) > 1:
        record["mixture_log_weight"] = {f: [float(v) for v in c] for f, c in zip(forms, form_weights(kept))}
    return record
