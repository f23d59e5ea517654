"""Training objectives, per sample: ``elbo`` (the negative ELBO plus alpha times the discriminative term) and
``wae`` (the paper's: negative log-likelihood of the observed data at deterministic codes plus lambda_mmd times the
minibatch MMD between the codes and the prior N(0, I)); plus the surrogate's MSE term where it is used.
"""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

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


class Objective:
    """``loss(batch)``, per sample, for ``model.objective``:

    * ``elbo``: ``(-ELBO_beta(batch) + alpha * discriminative_loss(batch)) / len(batch)``, with Pyro's
      ``TraceMeanField_ELBO`` (analytic KL between the Gaussian guide and prior factors) or ``Trace_ELBO``, its KL
      terms weighted by ``beta`` (1 after the warm-up: the true ELBO);
    * ``wae``: ``-sum(log-likelihood of observed x and y at the guide's Delta codes) / len(batch)
      + beta * sum_factors lambda_mmd[factor] * MMD(codes of the factor, draws from N(0, I))``, the z_a,m codes
      of the samples where modality m is present.

    ``ablation = "discriminative"`` drops the prior matching (beta = 0). With ``missing = "surrogate"``,
    ``surrogate_weight * surrogate_loss / len(batch)`` is added.
    """

    def __init__(self, mfm: MFM):
        cfg = mfm.config
        elbo_cls = TraceMeanField_ELBO if cfg.analytic_kl else Trace_ELBO
        self.elbo = elbo_cls(num_particles=cfg.num_particles, vectorize_particles=cfg.num_particles > 1,
                             max_plate_nesting=1)
        self.mfm = mfm
        self.alpha = cfg.alpha
        self.beta = 1.0
        factors = (["z_y"] if mfm.shared else []) + (list(mfm.names) if mfm.private else [])
        lam = cfg.lambda_mmd
        if isinstance(lam, dict):
            missing = [f for f in factors if f not in lam]
            if missing:
                raise ConfigError(f"model.lambda_mmd: no weight for {missing} (table has {sorted(lam)}; keys are "
                                  "'z_y' and modality names)")
            self.lambda_mmd = {f: float(lam[f]) for f in factors}
        else:
            self.lambda_mmd = {f: float(lam) for f in factors}

    def __call__(self, batch: Batch) -> torch.Tensor:
        cfg = self.mfm.config
        beta = 0.0 if cfg.ablation == "discriminative" else self.beta
        loss = self.wae_loss(batch, beta) if cfg.objective == "wae" else self.elbo_loss(batch, beta)
        if cfg.missing == "surrogate":
            loss = loss + cfg.surrogate_weight * self.mfm.surrogate_loss(batch)
        return loss / len(batch)

    def elbo_loss(self, batch: Batch, beta: float) -> torch.Tensor:
        """-ELBO_beta(batch) + alpha * discriminative_loss(batch), summed over the batch."""
        if beta == 1.0:
            model, guide = self.mfm.model, self.mfm.guide
        else:
            model, guide = scale_latents(beta)(self.mfm.model), scale_latents(beta)(self.mfm.guide)
        with self.mfm.shared_features():  # the discriminative term reuses the guide's encoder features
            loss = self.elbo.differentiable_loss(model, guide, batch)
            if self.alpha:
                loss = loss + self.alpha * self.mfm.discriminative_loss(batch)
        return loss

    def wae_loss(self, batch: Batch, beta: float) -> torch.Tensor:
        """-log-likelihood of the observed sites at the codes + len(batch) * beta * weighted MMDs."""
        guide_tr = poutine.trace(self.mfm.guide).get_trace(batch)
        model_tr = poutine.trace(poutine.replay(self.mfm.model, trace=guide_tr)).get_trace(batch)
        model_tr.compute_log_prob()
        loss = -sum(site["log_prob_sum"] for site in model_tr.nodes.values()
                    if site["type"] == "sample" and site["is_observed"])
        if beta == 0.0:
            return loss
        for factor, weight in self.lambda_mmd.items():
            if factor == "z_y":
                code = guide_tr.nodes["z_y"]["value"]
            else:
                code = guide_tr.nodes[f"z_a_{factor}"]["value"][batch.present[factor]]
            if weight and len(code) > 1:
                prior = torch.randn_like(code)
                loss = loss + len(batch) * beta * weight * mmd(code, prior, self.mfm.config.mmd_kernel,
                                                                 self.mfm.config.mmd_scale,
                                                                 self.mfm.config.mmd_estimator)
        return loss
