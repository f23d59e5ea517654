"""The Multimodal Factorization Model (Tsai et al., ICLR 2019) as a Pyro model/guide pair.

Generative story, for each sample, with modalities m = 1..M::

    z_y    ~ N(0, I)                         shared multimodal discriminative factor
    z_a,m  ~ N(0, I)                         modality-specific generative factor, one per modality
    f_y    = G_y(z_y),   f_a,m = G_m(z_a,m)
    x_m    ~ N(F_m(f_y, f_a,m), s_m^2)       the decoder of modality m sees only f_y and its own f_a,m
    y      ~ p(y | D(f_y))                   the label sees only f_y

A missing modality or label is an unobserved leaf of this graph: masking its likelihood (``.mask(present)``)
integrates it out exactly, in training and at test time. Imputation and prediction sample those sites from the
model (``poutine.uncondition`` + ``Predictive``).

Guide (amortized, mean-field over the factors)::

    q(z_y | x_obs) = N(0, I) * prod_{m observed} N(mu_m(x_m), sigma_m(x_m))   normalised product of experts
    q(z_a,m | x_m) = N(mu_a,m(x_m), sigma_a,m(x_m))   if x_m is observed,  N(0, I)  (the prior) otherwise

The product of experts takes any subset of observed modalities by construction.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .config import ModelConfig
from .data.dataset import Batch
from .data.schema import Schema
from .data.stats import FeatureStats
from .likelihoods import FeatureLikelihood, LabelLikelihood
from .nets import ExpertEncoder, FactorNet, ModalityDecoder, ModalityEncoder, product_of_experts


class MFM(nn.Module):
    """Networks and the ``model``/``guide`` pair of the MFM for one data-set schema.

    Sample sites: ``z_y``, ``z_a_<m>``, ``x_<m>``, ``y``; deterministic sites ``x_<m>_mean`` (the decoder's mean)
    and ``y_point`` (class probabilities or the label's mean) for Rao-Blackwellised predictions.
    """

    def __init__(self, schema: Schema, config: ModelConfig, stats: FeatureStats):
        super().__init__()
        config.validate()
        self.schema, self.config = schema, config
        self.names = schema.names
        h, p = config.hidden, config.dropout
        z_a = config.per_modality("z_a_dim", self.names)
        f_a = config.per_modality("f_a_dim", self.names)
        self.lambda_x = config.per_modality("lambda_x", self.names)
        self.z_a_dim = z_a
        # generative networks
        self.G_y = FactorNet(config.z_y_dim, config.f_y_dim, h, p)
        self.G = nn.ModuleDict({m: FactorNet(z_a[m], f_a[m], h, p) for m in self.names})
        self.F = nn.ModuleDict(
            {s.name: ModalityDecoder(s, config.f_y_dim + f_a[s.name], h, p) for s in schema.modalities}
        )
        self.p_x = nn.ModuleDict({
            s.name: FeatureLikelihood(s, stats.mean[s.name], stats.std[s.name],
                                      config.x_scale == "learned", config.x_fixed_scale)
            for s in schema.modalities
        })
        self.D = None
        if schema.label is not None:
            self.D = LabelLikelihood(schema.label, config.label_likelihood, config.f_y_dim, h,
                                     stats.label_mean, stats.label_std, p)
        # inference networks
        self.trunk = nn.ModuleDict({s.name: ModalityEncoder(s, h, p) for s in schema.modalities})
        self.q_y = nn.ModuleDict({m: ExpertEncoder(h, config.z_y_dim, h, p) for m in self.names})
        self.q_a = nn.ModuleDict({m: ExpertEncoder(h, z_a[m], h, p) for m in self.names})

    # ------------------------------------------------------------------ the generative story
    def model(self, batch: Batch):
        """p(z_y) prod_m p(z_a,m) p(x_m | f_y, f_a,m) p(y | f_y). Absent ``batch.x[m]``/``batch.y`` are sampled."""
        with pyro.plate("data", len(batch)):
            z_y = pyro.sample("z_y", dist.Normal(0.0, 1.0).expand([self.config.z_y_dim]).to_event(1))
            f_y = self.G_y(z_y)
            for m in self.names:
                z_a = pyro.sample(f"z_a_{m}", dist.Normal(0.0, 1.0).expand([self.z_a_dim[m]]).to_event(1))
                f_a = self.G[m](z_a)
                loc = self.F[m](torch.cat([f_y, f_a], dim=-1))
                p_x = self.p_x[m].distribution(loc, batch.present.get(m), batch.steps.get(m))
                pyro.deterministic(f"x_{m}_mean", p_x.mean, event_dim=len(self.schema[m].shape))
                with poutine.scale(scale=self.lambda_x[m]):
                    pyro.sample(f"x_{m}", p_x, obs=batch.x.get(m))
            if self.D is not None:
                p_y = self.D.distribution(f_y)
                point = self.D.point(p_y)
                pyro.deterministic("y_point", point, event_dim=1)
                if batch.y_present is not None:
                    p_y = p_y.mask(batch.y_present)
                with poutine.scale(scale=self.config.lambda_y):
                    pyro.sample("y", p_y, obs=batch.y)

    # ------------------------------------------------------------------ the guide
    def encode(self, batch: Batch):
        """Encoder features h_m of every modality (zero input where missing)."""
        return {
            m: self.trunk[m](self.p_x[m].standardise(batch.x[m]) * self._input_mask(batch, m), batch.steps.get(m))
            for m in self.names
        }

    def _input_mask(self, batch: Batch, m: str):
        present = batch.present[m]
        if self.schema[m].is_sequence:
            return (batch.steps[m] & present[:, None]).unsqueeze(-1).to(batch.x[m].dtype)
        return present.unsqueeze(-1).to(batch.x[m].dtype)

    def posterior_z_y(self, batch: Batch, h=None):
        """(loc, scale) of q(z_y | observed modalities): the product of the prior and the observed experts."""
        h = self.encode(batch) if h is None else h
        experts = [self.q_y[m](h[m]) for m in self.names]
        return product_of_experts([e[0] for e in experts], [e[1] for e in experts],
                                  [batch.present[m] for m in self.names])

    def guide(self, batch: Batch):
        """q(z_y | x_obs) prod_m q(z_a,m | x_m)."""
        h = self.encode(batch)
        loc, scale = self.posterior_z_y(batch, h)
        with pyro.plate("data", len(batch)):
            pyro.sample("z_y", dist.Normal(loc, scale).to_event(1))
            for m in self.names:
                loc_a, scale_a = self.q_a[m](h[m])
                present = batch.present[m].unsqueeze(-1)
                loc_a = torch.where(present, loc_a, torch.zeros_like(loc_a))
                scale_a = torch.where(present, scale_a, torch.ones_like(scale_a))
                pyro.sample(f"z_a_{m}", dist.Normal(loc_a, scale_a).to_event(1))

    # ------------------------------------------------------------------ discriminative term
    def discriminative_loss(self, batch: Batch):
        """-sum log p(y | D(G_y(E_q[z_y | x_obs]))) over labelled samples: the ss-VAE's auxiliary loss."""
        if self.D is None or batch.y is None:
            return torch.zeros(())
        loc, _ = self.posterior_z_y(batch)
        log_p = self.D.distribution(self.G_y(loc)).log_prob(batch.y)
        return -(log_p * batch.y_present.to(log_p.dtype)).sum()

    def label_distribution(self, z_y):
        """p(y | D(G_y(z_y))) for given codes (any leading dimensions)."""
        return self.D.distribution(self.G_y(z_y))
