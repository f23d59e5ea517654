"""The training objective: the negative ELBO plus alpha times the discriminative term, per sample."""

from __future__ import annotations

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from ..data.dataset import Batch
from ..model import MFM


class Objective:
    """``loss(batch) = (-ELBO(batch) + alpha * discriminative_loss(batch)) / len(batch)``.

    The ELBO is Pyro's ``TraceMeanField_ELBO`` (analytic KL between the Gaussian guide and prior factors) or
    ``Trace_ELBO``; the discriminative term is :meth:`MFM.discriminative_loss`.
    """

    def __init__(self, mfm: MFM):
        cfg = mfm.config
        elbo_cls = TraceMeanField_ELBO if cfg.analytic_kl else Trace_ELBO
        self.elbo = elbo_cls(num_particles=cfg.num_particles, vectorize_particles=cfg.num_particles > 1,
                             max_plate_nesting=1)
        self.mfm = mfm
        self.alpha = cfg.alpha

    def __call__(self, batch: Batch) -> torch.Tensor:
        loss = self.elbo.differentiable_loss(self.mfm.model, self.mfm.guide, batch)
        if self.alpha:
            loss = loss + self.alpha * self.mfm.discriminative_loss(batch)
        return loss / len(batch)
