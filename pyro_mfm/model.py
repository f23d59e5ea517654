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

Guide (amortized)::

    q(z_y | x_obs)      = N(0, I) * prod_{m observed} N(mu_m(x_m), Lambda_m(x_m)^-1)  normalised product of experts
    q(z_a,m | x_m, z_y) = N(mu_a,m(x_m, z_y), sigma_a,m(x_m, z_y))   if x_m is observed,  N(0, I) otherwise

The product of experts takes any subset of observed modalities by construction. In training, an observed label
is one more expert (q(z_y | x_obs, y)): a guide blind to y would make the label's scale absorb the posterior
spread of z_y, which prediction then counts a second time (too-wide predictive intervals). The modality factor's encoder
also reads the drawn z_y, as the true posterior does: given x_m, what z_a,m must explain is what f_y does not
(a guide blind to z_y would pull the model towards explaining x_m with z_a,m alone).
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
from .nets import ExpertEncoder, FactorNet, InformationExpert, ModalityDecoder, ModalityEncoder, product_of_experts


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
        self.q_y = nn.ModuleDict({m: InformationExpert(h, config.z_y_dim, h, p) for m in self.names})
        self.q_a = nn.ModuleDict({m: ExpertEncoder(h + config.z_y_dim, z_a[m], h, p) for m in self.names})
        if self.D is not None:
            self.q_label = InformationExpert(self.D.encoded_dim, config.z_y_dim, h, p)

    # ------------------------------------------------------------------ the generative story
    def model(self, batch: Batch):
        """p(z_y) prod_m p(z_a,m) p(x_m | f_y, f_a,m) p(y | f_y). Absent ``batch.x[m]``/``batch.y`` are sampled."""
        with pyro.plate("data", len(batch)):
            z_y = pyro.sample("z_y", self.prior_z_y())
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

    def prior_z_y(self):
        """N(0, I), written as a full-covariance Normal so that its KL to the guide's is analytic."""
        k = self.config.z_y_dim
        zero = self.G_y.net[0].weight.new_zeros(k)
        return dist.MultivariateNormal(zero, scale_tril=torch.eye(k, dtype=zero.dtype, device=zero.device))

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

    def posterior_z_y(self, batch: Batch, h=None) -> dist.MultivariateNormal:
        """q(z_y | observed modalities [, y]): the product of the prior and the experts of what is observed.

        Where the batch carries labels, the label is an expert too (the posterior of z_y given x and y); prediction
        passes batches without labels, so it uses q(z_y | x_obs) alone.
        """
        h = self.encode(batch) if h is None else h
        experts = [self.q_y[m](h[m]) for m in self.names]
        masks = [batch.present[m] for m in self.names]
        if self.D is not None and batch.y is not None:
            experts.append(self.q_label(self.D.encode(batch.y)))
            masks.append(batch.y_present)
        return product_of_experts([e[0] for e in experts], [e[1] for e in experts], masks)

    def guide(self, batch: Batch):
        """q(z_y | x_obs) prod_m q(z_a,m | x_m, z_y)."""
        h = self.encode(batch)
        q_z_y = self.posterior_z_y(batch, h)
        with pyro.plate("data", len(batch)):
            z_y = pyro.sample("z_y", q_z_y)
            for m in self.names:
                h_m = h[m].expand(z_y.shape[:-1] + h[m].shape[-1:])
                loc_a, scale_a = self.q_a[m](torch.cat([h_m, z_y], dim=-1))
                present = batch.present[m].unsqueeze(-1)
                loc_a = torch.where(present, loc_a, torch.zeros_like(loc_a))
                scale_a = torch.where(present, scale_a, torch.ones_like(scale_a))
                pyro.sample(f"z_a_{m}", dist.Normal(loc_a, scale_a).to_event(1))

    # ------------------------------------------------------------------ discriminative term
    def discriminative_loss(self, batch: Batch):
        """-sum log p(y | D(G_y(E_q[z_y | x_obs]))) over labelled samples: the ss-VAE's auxiliary loss."""
        if self.D is None or batch.y is None:
            return torch.zeros(())
        loc = self.posterior_z_y(batch.without_labels()).mean
        log_p = self.D.distribution(self.G_y(loc)).log_prob(batch.y)
        return -(log_p * batch.y_present.to(log_p.dtype)).sum()

    def label_distribution(self, z_y):
        """p(y | D(G_y(z_y))) for given codes (any leading dimensions)."""
        return self.D.distribution(self.G_y(z_y))
