"""The training objective: the negative ELBO plus alpha times the discriminative term, per sample."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

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


class Objective:
    """``loss(batch) = (-ELBO_beta(batch) + alpha * discriminative_loss(batch)) / len(batch)``.

    The ELBO is Pyro's ``TraceMeanField_ELBO`` (analytic KL between the Gaussian guide and prior factors) or
    ``Trace_ELBO``, with its KL terms weighted by ``beta`` (1 after the warm-up: the true ELBO); the
    discriminative term is :meth:`MFM.discriminative_loss`.
    """

    def __init__(self, mfm: MFM):
        cfg = mfm.config
        elbo_cls = TraceMeanField_ELBO if cfg.analytic_kl else Trace_ELBO
        self.elbo = elbo_cls(num_particles=cfg.num_particles, vectorize_particles=cfg.num_particles > 1,
                             max_plate_nesting=1)
        self.mfm = mfm
        self.alpha = cfg.alpha
        self.beta = 1.0

    def __call__(self, batch: Batch) -> torch.Tensor:
        if self.beta == 1.0:
            model, guide = self.mfm.model, self.mfm.guide
        else:
            model, guide = scale_latents(self.beta)(self.mfm.model), scale_latents(self.beta)(self.mfm.guide)
        loss = self.elbo.differentiable_loss(model, guide, batch)
        if self.alpha:
            loss = loss + self.alpha * self.mfm.discriminative_loss(batch)
        return loss / len(batch)
