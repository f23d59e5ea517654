"""Training objectives, per sample: ``elbo`` (the negative ELBO plus alpha times the discriminative term) and
``wae`` (the paper's: negative log-likelihood of the observed data at deterministic codes plus lambda_mmd times the
minibatch MMD between the codes and the prior N(0, I)); plus the surrogate's MSE term where it is used.
"""

from __future__ import annotations

from functools import partial

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import check_fully_reparametrized, is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_nan
from torch.distributions import kl_divergence

from ..config import ConfigError
from ..data.dataset import Batch
from ..model import MFM


class scale_latents(Messenger):
    """Multiply the log-density scale of every latent (unobserved) sample site by ``beta``.

    Applied to both the model and the guide, this weights the KL terms of the ELBO by ``beta`` and leaves the
    likelihood terms alone: the KL warm-up that keeps q(z_y | x) from collapsing onto the prior early in training.
    """

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.beta * msg["scale"]


class MeanFieldELBO(TraceMeanField_ELBO):
    """Pyro's ``TraceMeanField_ELBO``, evaluating only the terms it adds up.

    ``TraceMeanField_ELBO`` first computes the log density of every model site and the score parts of every guide
    site, then, for each latent site whose KL to the prior is analytic, uses neither; and it turns the loss into a
    Python float twice a step (a device synchronisation on a GPU). This subclass computes the observed sites' log
    densities, the analytic KL where one is registered, and a latent site's log densities only where none is (the
    same Monte Carlo fallback); ``pyro.deterministic`` sites (log density 0) are skipped; the loss stays a tensor.
    Its value and gradients are ``TraceMeanField_ELBO``'s (``tests/test_objective.py``); Pyro's validation checks
    (site shapes, the mean-field requirement, a fully reparameterised guide) run when validation is enabled.
    """

    def _get_trace(self, model, guide, args, kwargs):
        guide_trace = poutine.trace(guide, graph_type="flat").get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace), graph_type="flat").get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":  # Pyro's check, on the shape a log density would have
                        fn, value = site["fn"], site["value"]
                        batch = value.shape[: value.dim() - len(fn.event_shape)]
                        log_prob = value.new_empty(()).expand(torch.broadcast_shapes(fn.batch_shape, batch))
                        check_site_shape({**site, "log_prob": log_prob}, self.max_plate_nesting)
            _check_mean_field_requirement(model_trace, guide_trace)
        return model_trace, guide_trace

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        model_trace.compute_log_prob(lambda _, site: site["is_observed"] and not site["infer"].get("_deterministic"))
        elbo = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site["infer"].get("_deterministic"):
                continue
            if site["is_observed"]:
                elbo = elbo + site["log_prob_sum"]
                continue
            q = guide_trace.nodes[name]
            if is_validation_enabled() and not q["fn"].has_rsample:  # Pyro's check_fully_reparametrized
                raise NotImplementedError("All distributions in the guide must be fully reparameterized.")
            try:
                kl = kl_divergence(q["fn"], site["fn"])
            except NotImplementedError:  # Monte Carlo: log p(z) - log q(z) at the guide's draw
                model_trace.compute_log_prob(lambda n, _: n == name)
                guide_trace.compute_score_parts()
                if is_validation_enabled():
                    check_fully_reparametrized(q)
                elbo = elbo + site["log_prob_sum"] - q["score_parts"].entropy_term.sum()
                continue
            kl = scale_and_mask(kl, scale=q["scale"], mask=q["mask"])
            elbo = elbo - (kl.sum() if torch.is_tensor(kl) else kl * q["fn"].batch_shape.numel())
        for name, q in guide_trace.nodes.items():  # auxiliary guide sites
            if q["type"] == "sample" and name not in model_trace.nodes:
                assert q["infer"].get("is_auxiliary"), f"guide site {name!r} is not in the model"
                guide_trace.compute_score_parts()
                if is_validation_enabled():
                    check_fully_reparametrized(q)
                elbo = elbo - q["score_parts"].entropy_term.sum()
        return None, -elbo

    def differentiable_loss(self, model, guide, *args, **kwargs):
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._differentiable_loss_particle(model_trace, guide_trace)[1] / self.num_particles
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs):
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return float(loss.detach())


def kernel(x, y, kind: str = "gaussian", scale: float = 0.0):
    """``(n, m)`` kernel matrix between rows of ``x`` and ``y``.

    ``gaussian``: exp(-||x - y||^2 / s); ``imq``: s / (s + ||x - y||^2); ``scale`` = 0 picks s = dim^2 (gaussian,
    the paper's exp(-mean_d (x_d - y_d)^2 / dim)) or s = 2 dim (imq).
    """
    dim = x.shape[-1]
    s = scale or (dim**2 if kind == "gaussian" else 2.0 * dim)
    d2 = ((x * x).sum(-1)[:, None] + (y * y).sum(-1)[None, :] - 2.0 * x @ y.T).clamp(min=0.0)
    return torch.exp(-d2 / s) if kind == "gaussian" else s / (s + d2)


def mmd(x, y, kind: str = "gaussian", scale: float = 0.0, estimator: str = "biased"):
    """Squared maximum mean discrepancy between the samples ``x`` ``(n, k)`` and ``y`` ``(m, k)``.

    ``biased``: mean k(x, x') + mean k(y, y') - 2 mean k(x, y), diagonals included (the paper's; >= 0);
    ``unbiased``: the U-statistic, diagonals left out (zero in expectation when x and y share a distribution).
    """
    kxx, kyy, kxy = kernel(x, x, kind, scale), kernel(y, y, kind, scale), kernel(x, y, kind, scale)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    n, m = len(x), len(y)
    off = lambda k, n: (k.sum() - k.diagonal().sum()) / (n * (n - 1))  # noqa: E731
    return off(kxx, n) + off(kyy, m) - 2 * kxy.mean()


def empty_guide(*args, **kwargs):
    """The guide of a program without latent sites (:meth:`MFM.classify`, :meth:`MFM.fit_surrogates`)."""


class Objective:
    """``loss(batch)``, per sample, for ``model.objective``:

    * ``elbo``: ``(-ELBO_beta(batch) + alpha * discriminative_loss(batch)) / len(batch)``, with Pyro's
      ``TraceMeanField_ELBO`` (analytic KL between the Gaussian guide and prior factors) or ``Trace_ELBO``, its KL
      terms weighted by ``beta`` (an argument of the call; 1, the default: the true ELBO);
    * ``wae``: ``-sum(log-likelihood of observed x and y at the guide's Delta codes) / len(batch)
      + beta * sum_factors lambda_mmd[factor] * MMD(codes of the factor, draws from N(0, I))``, the z_a,m codes
      of the samples where modality m is present.

    ``ablation = "discriminative"`` drops the prior matching (beta = 0). With ``missing = "surrogate"``,
    ``surrogate_weight * surrogate_loss / len(batch)`` is added. The discriminative and the surrogate terms are the
    ``Trace_ELBO`` losses of Pyro programs with observed sites only (:meth:`MFM.classify`,
    :meth:`MFM.fit_surrogates`), as the ss-VAE's ``model_classify``.
    """

    def __init__(self, mfm: MFM):
        cfg = mfm.config
        elbo_cls = MeanFieldELBO if cfg.analytic_kl else Trace_ELBO
        self.elbo = elbo_cls(
            num_particles=cfg.num_particles, vectorize_particles=cfg.num_particles > 1, max_plate_nesting=1
        )
        self.aux = Trace_ELBO(max_plate_nesting=1)  # the terms of programs without latent sites
        self.mfm = mfm
        self.alpha = mfm.alpha
        factors = (["z_y"] if mfm.shared else []) + (list(mfm.names) if mfm.private else [])
        lam = cfg.lambda_mmd
        if isinstance(lam, dict):
            missing = [f for f in factors if f not in lam]
            if missing:
                raise ConfigError(
                    f"model.lambda_mmd: no weight for {missing} (table has {sorted(lam)}; keys are "
                    "'z_y' and modality names)"
                )
            self.lambda_mmd = {f: float(lam[f]) for f in factors}
        else:
            self.lambda_mmd = {f: float(lam) for f in factors}

    def __call__(self, batch: Batch, beta: float = 1.0) -> torch.Tensor:
        """The loss on ``batch``, its KL (``elbo``) or MMD (``wae``) terms weighted by ``beta`` (the KL warm-up's
        annealing factor; 1: the true objective)."""
        cfg = self.mfm.config
        beta = beta if cfg.has_decoders else 0.0
        loss = self.wae_loss(batch, beta) if cfg.objective == "wae" else self.elbo_loss(batch, beta)
        if cfg.missing == "surrogate":  # a Pyro program with no latent sites (MFM.fit_surrogates)
            loss = loss + self.aux.differentiable_loss(self.mfm.fit_surrogates, empty_guide, batch)
        return loss / len(batch)

    def elbo_loss(self, batch: Batch, beta: float) -> torch.Tensor:
        """-ELBO_beta(batch) + alpha * discriminative_loss(batch), summed over the batch: the guide's features are
        kept and passed to the discriminative term."""
        features = []

        def guide(batch):  # the guide, keeping what it computed: the discriminative term reuses its features
            features.append(self.mfm.guide(batch))
            return features[-1]

        model = partial(self.mfm.model, means=False)
        if beta != 1.0:
            model, guide = scale_latents(beta)(model), scale_latents(beta)(guide)
        loss = self.elbo.differentiable_loss(model, guide, batch)
        if self.alpha:  # the discriminative term, a Pyro program with no latent sites (MFM.classify)
            loss = loss + self.aux.differentiable_loss(self.mfm.classify, empty_guide, batch, features[0])
        if self.mfm.config.impute_subsets:  # the imputation term, likewise (MFM.imputations)
            loss = loss + self.aux.differentiable_loss(self.mfm.imputations, empty_guide, batch, features[0])
        return loss

    def wae_loss(self, batch: Batch, beta: float) -> torch.Tensor:
        """-log-likelihood of the observed sites at the codes + len(batch) * beta * weighted MMDs."""
        guide_tr = poutine.trace(self.mfm.guide).get_trace(batch)
        model_tr = poutine.trace(poutine.replay(self.mfm.model, trace=guide_tr)).get_trace(batch, means=False)
        model_tr.compute_log_prob()
        loss = -sum(
            site["log_prob_sum"] for site in model_tr.nodes.values() if site["type"] == "sample" and site["is_observed"]
        )
        if beta == 0.0:
            return loss
        for factor, weight in self.lambda_mmd.items():
            if factor == "z_y":
                code = guide_tr.nodes["z_y"]["value"]
            else:
                code = guide_tr.nodes[f"z_a_{factor}"]["value"][batch.present[factor]]
            if weight and len(code) > 1:
                prior = torch.randn_like(code)
                loss = loss + len(batch) * beta * weight * mmd(
                    code, prior, self.mfm.config.mmd_kernel, self.mfm.config.mmd_scale, self.mfm.config.mmd_estimator
                )
        return loss
