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

Options (``ModelConfig``): sequence modalities read and written by LSTMs (``sequence_net``); z_y encoded by the
Memory Fusion Network instead of the product of experts (``fusion``); the paper's deterministic codes for the
``wae`` objective (Delta guide sites); the paper's surrogate inference of a missing modality's code from the
observed ones (``missing``); and the paper's ablations (``ablation``): no z_y (the label reads every f_a,m), no
z_a,m (every decoder reads f_y alone), or no decoders at all.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .config import ConfigError, ModelConfig
from .data.dataset import Batch
from .data.schema import Schema
from .data.stats import FeatureStats
from .likelihoods import FeatureLikelihood, LabelLikelihood
from .nets import (ExpertEncoder, FactorNet, InformationExpert, MemoryFusion, make_decoder, make_encoder, mlp,
                   product_of_experts)


def _random_subset(batch: Batch) -> Batch:
    """``batch`` with each sample's observed modalities cut down to a random non-empty subset of them, its size
    drawn uniformly from 1 to the number observed (so a single modality is as likely as all of them)."""
    names = list(batch.present)
    present = torch.stack([batch.present[m] for m in names], -1)
    count = present.sum(-1, keepdim=True)
    size = (torch.rand(count.shape, device=present.device) * count).floor().long() + 1
    keys = torch.where(present, torch.rand(present.shape, device=present.device), torch.full_like(present, 2.0,
                                                                                                   dtype=torch.float))
    rank = keys.argsort(-1).argsort(-1)
    kept = present & (rank < size)
    return batch.with_present({m: kept[:, i] for i, m in enumerate(names)})


class MFM(nn.Module):
    """Networks and the ``model``/``guide`` pair of the MFM for one data-set schema.

    Sample sites: ``z_y``, ``z_a_<m>``, ``x_<m>``, ``y``; deterministic sites ``x_<m>_mean`` (the decoder's mean)
    and ``y_point`` (class probabilities or the label's mean) for Rao-Blackwellised predictions. The ablations drop
    sites: ``no_shared`` has no ``z_y``, ``shared_only`` no ``z_a_<m>``, ``discriminative`` neither ``z_a_<m>`` nor
    ``x_<m>``.
    """

    def __init__(self, schema: Schema, config: ModelConfig, stats: FeatureStats):
        super().__init__()
        config.validate()
        self.schema, self.config = schema, config
        self.names = schema.names
        h, p = config.hidden, config.dropout
        z_a = config.per_modality("z_a_dim", self.names)
        f_a = config.per_modality("f_a_dim", self.names)
        lstm_h = config.per_modality("lstm_hidden", self.names)
        self.lambda_x = config.per_modality("lambda_x", self.names)
        # the scale of x_m's log density: lambda_x, per element of x_m with x_reduction = "mean"
        self.x_weight = {s.name: self.lambda_x[s.name] / (math.prod(s.shape) if config.x_reduction == "mean" else 1)
                         for s in schema.modalities}
        self.z_a_dim = z_a
        self.shared = config.ablation != "no_shared"  # the model has z_y
        self.private = config.ablation in ("none", "no_shared")  # the model has z_a,m
        self.generative = config.ablation != "discriminative"  # the model has x_m
        self.deterministic = config.objective == "wae"  # the guide's codes are Delta sites
        self.register_buffer("_eye", torch.eye(config.z_y_dim), persistent=False)
        # generative networks
        if self.shared:
            self.G_y = FactorNet(config.z_y_dim, config.f_y_dim, h, p)
        if self.private:
            self.G = nn.ModuleDict({m: FactorNet(z_a[m], f_a[m], h, p) for m in self.names})
        if self.generative:
            f_in = {m: config.f_y_dim * self.shared + f_a[m] * self.private for m in self.names}
            self.F = nn.ModuleDict(
                {s.name: make_decoder(s, config.sequence_net, f_in[s.name], h, p) for s in schema.modalities}
            )
        self.p_x = nn.ModuleDict({
            s.name: FeatureLikelihood(s, stats.mean[s.name], stats.std[s.name],
                                      config.x_scale == "learned", config.x_fixed_scale)
            for s in schema.modalities
        })
        self.D = None
        if schema.label is not None:
            label_in = config.f_y_dim if self.shared else sum(f_a.values())
            self.D = LabelLikelihood(schema.label, config.label_likelihood, label_in, h,
                                     stats.label_mean, stats.label_std, p, config.label_scale)
        # inference networks
        self.trunk = nn.ModuleDict(
            {s.name: make_encoder(s, config.sequence_net, h, lstm_h[s.name], p) for s in schema.modalities}
        )
        k_y = config.z_y_dim * self.shared
        if self.shared and config.fusion == "mfn":
            self.fusion = MemoryFusion(self._mfn_dims(), lstm_h, config.mfn_memory, h, p)
            self.q_y_fused = nn.Linear(self.fusion.out_dim, 2 * config.z_y_dim)
        elif self.shared:
            self.q_y = nn.ModuleDict({m: InformationExpert(h, config.z_y_dim, h, p) for m in self.names})
            if self.D is not None:
                self.q_label = InformationExpert(self.D.encoded_dim, config.z_y_dim, h, p)
        if self.private:
            self.q_a = nn.ModuleDict({m: ExpertEncoder(h + k_y, z_a[m], h, p) for m in self.names})
        if config.missing == "surrogate":
            others = {m: sum(h + 1 for n in self.names if n != m) for m in self.names}
            self.S = nn.ModuleDict({m: mlp([k_y + others[m], h, h, z_a[m]], p) for m in self.names})
        # log temperature of each modality's expert of z_y (its precision and information vector are multiplied by
        # exp(.)), fitted on held-out data after training by pyro_mfm.infer.calibrate; 0 (no change) in training
        self.register_buffer("expert_log_temperature", torch.zeros(len(self.names)))
        # redundancy r_mn = r_nm of modalities m and n (zero diagonal): where n is observed too, expert m's log
        # temperature is lowered by r_mn, so that two views that carry the same evidence are not counted twice;
        # fitted with the temperatures (pyro_mfm.infer.calibrate, train.calibrate = "all"); 0 in training
        self.register_buffer("expert_redundancy", torch.zeros(len(self.names), len(self.names)))
        self._memo = None  # see shared_features

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`; a checkpoint written before ``expert_redundancy`` existed
        loads with no redundancy (the model it was)."""
        state = dict(state_dict)
        state.setdefault("expert_redundancy", torch.zeros_like(self.expert_redundancy))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _mfn_dims(self) -> dict:
        lengths = {s.name: s.steps for s in self.schema.modalities}
        for s in self.schema.modalities:
            if not s.is_sequence or s.steps != self.schema.modalities[0].steps:
                raise ConfigError(f"model.fusion = 'mfn': modality {s.name!r} has shape {s.shape}; the MFN needs "
                                  f"every modality to be a sequence (T, d) of one length T (lengths: {lengths})")
        return {s.name: s.dim for s in self.schema.modalities}

    # ------------------------------------------------------------------ the generative story
    def model(self, batch: Batch, means: bool = True):
        """p(z_y) prod_m p(z_a,m) p(x_m | f_y, f_a,m) p(y | f_y). Absent ``batch.x[m]``/``batch.y`` are sampled.

        A missing modality's z_a,m is masked out with its x_m: a leaf of the graph, integrated out exactly.
        ``means`` records the deterministic sites ``x_<m>_mean`` and ``y_point`` that prediction reads (the
        training objectives, which have no use for them, pass ``False``).
        """
        with pyro.plate("data", len(batch)):
            f_y = self.G_y(pyro.sample("z_y", self.prior_z_y())) if self.shared else None
            f_a = {}
            for m in self.names:
                with poutine.mask(mask=batch.present.get(m, True)):  # where x_m is missing, z_a,m and x_m are leaves
                    if self.private:
                        z_a = pyro.sample(f"z_a_{m}", dist.Normal(0.0, 1.0).expand([self.z_a_dim[m]]).to_event(1))
                        f_a[m] = self.G[m](z_a)
                    if self.generative:
                        loc = self.F[m](torch.cat([f for f in (f_y, f_a.get(m)) if f is not None], dim=-1))
                        p_x = self.p_x[m].distribution(loc, steps=batch.steps.get(m))
                        if means:
                            pyro.deterministic(f"x_{m}_mean", p_x.mean, event_dim=len(self.schema[m].shape))
                        with poutine.scale(scale=self.x_weight[m]):
                            pyro.sample(f"x_{m}", p_x, obs=batch.x.get(m))
            if self.D is not None:
                p_y = self.D.distribution(self._label_input(f_y, f_a))
                if means:
                    pyro.deterministic("y_point", self.D.point(p_y), event_dim=1)
                if batch.y_present is not None:
                    p_y = p_y.mask(batch.y_present)
                with poutine.scale(scale=self.config.lambda_y):
                    pyro.sample("y", p_y, obs=batch.y)

    def _label_input(self, f_y, f_a: dict):
        """What the label reads: f_y, or (without a shared factor) every f_a,m."""
        return f_y if self.shared else torch.cat([f_a[m] for m in self.names], dim=-1)

    def prior_z_y(self):
        """N(0, I), written as a full-covariance Normal so that its KL to the guide's is analytic."""
        return dist.MultivariateNormal(torch.zeros_like(self._eye[0]), scale_tril=self._eye)

    # ------------------------------------------------------------------ the guide
    def inputs(self, batch: Batch) -> dict:
        """Every modality standardised, zero where missing or padded."""
        return self._remember("x", batch.x, lambda: {
            m: self.p_x[m].standardise(batch.x[m]) * self._input_mask(batch, m) for m in self.names})

    def steps(self, batch: Batch, m: str):
        """The real steps of sequence modality ``m`` where it is present (``None`` for a vector)."""
        return batch.steps[m] & batch.present[m][:, None] if self.schema[m].is_sequence else None

    @contextmanager
    def shared_features(self):
        """Within the block, the encoder features h_m and the experts of a batch's modalities are computed once and
        reused by every later pass over the same modalities (a batch that differs only in its labels, as the
        discriminative term's): one objective evaluation then runs each encoder once."""
        outer, self._memo = self._memo, {} if self._memo is None else self._memo
        try:
            yield
        finally:
            self._memo = outer

    def _remember(self, key, owner, compute):
        if self._memo is None:
            return compute()
        hit = self._memo.get((key, id(owner)))
        if hit is None or hit[0] is not owner:
            hit = self._memo[(key, id(owner))] = (owner, compute())
        return hit[1]

    def encode(self, batch: Batch, x=None):
        """Encoder features h_m of every modality (zero input where missing)."""
        def compute():
            inp = self.inputs(batch) if x is None else x
            return {m: self.trunk[m](inp[m], self.steps(batch, m)) for m in self.names}
        return compute() if x is not None else self._remember("h", batch.x, compute)

    def _input_mask(self, batch: Batch, m: str):
        real = self.steps(batch, m) if self.schema[m].is_sequence else batch.present[m]
        return real.unsqueeze(-1).to(batch.x[m].dtype)

    def posterior_z_y(self, batch: Batch, h=None) -> dist.MultivariateNormal:
        """q(z_y | observed modalities [, y]).

        Product of experts: the prior times the experts of what is observed; where the batch carries labels, the
        label is an expert too (the posterior of z_y given x and y); prediction passes batches without labels.
        MFN: a diagonal Gaussian read from the MFN's [h_T of all; u_T] (missing modalities have zero states).
        """
        if self.config.fusion == "mfn":
            loc, raw = self._remember("fused", batch.x, lambda: self.q_y_fused(
                self.fusion(self.inputs(batch), {m: self.steps(batch, m) for m in self.names}))).chunk(2, dim=-1)
            return dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(nn.functional.softplus(raw) + 1e-4))
        h = self.encode(batch) if h is None else h
        masks = [batch.present[m] for m in self.names]
        experts = self.tempered(self._remember("experts", h, lambda: [self.q_y[m](h[m]) for m in self.names]), masks)
        if self.D is not None and batch.y is not None:
            experts.append(self.q_label(self.D.encode(batch.y)))
            masks.append(batch.y_present)
        return product_of_experts([e[0] for e in experts], [e[1] for e in experts], masks)

    def tempered(self, experts, masks=None) -> list:
        """The modalities' experts (eta_m, Lambda_m), each multiplied by its weight exp(t_m - sum_n r_mn [n
        observed]): t_m < 0 lets modality m claim less precision about z_y than its network gives, and r_mn > 0 claims
        less where modality n, which carries the same evidence, is observed too (a held-out calibration,
        :mod:`pyro_mfm.infer.calibrate`; training runs with t = 0 and r = 0). ``masks``: which modalities each sample
        observes (without them, no redundancy applies)."""
        t = self.expert_log_temperature
        if masks is None:
            w = t.exp()
            return [(e * w[i], p * w[i]) for i, (e, p) in enumerate(experts)]
        observed = torch.stack([mk.to(t.dtype) for mk in masks], -1)  # (..., B, M)
        # r has a zero diagonal (an expert is not discounted for itself); r = 0 gives exactly the weights exp(t_m)
        w = (t - observed @ self.expert_redundancy).exp()
        return [(e * w[..., i, None], p * w[..., i, None, None]) for i, (e, p) in enumerate(experts)]

    def posterior_z_a(self, batch: Batch, h: dict, m: str, z_y=None):
        """(loc, scale) of q(z_a,m | x_m, z_y) where x_m is observed; elsewhere the prior N(0, I), or the
        surrogate's prediction from the observed modalities (scale 1e-3: a point code)."""
        lead = z_y.shape[:-1] if z_y is not None else h[m].shape[:-1]
        inp = [h[m].expand(lead + h[m].shape[-1:])] + ([z_y] if z_y is not None else [])
        loc, scale = self.q_a[m](torch.cat(inp, dim=-1))
        if self.config.missing == "surrogate":
            fill_loc, fill_scale = self.surrogate(batch, h, m, z_y), torch.full_like(scale, 1e-3)
        else:
            fill_loc, fill_scale = torch.zeros_like(loc), torch.ones_like(scale)
        present = batch.present[m].unsqueeze(-1)
        return torch.where(present, loc, fill_loc), torch.where(present, scale, fill_scale)

    def surrogate(self, batch: Batch, h: dict, m: str, z_y=None):
        """The paper's surrogate inference: z_a,m predicted from z_y and the other modalities' features."""
        lead = z_y.shape[:-1] if z_y is not None else h[m].shape[:-1]
        parts = [] if z_y is None else [z_y]
        for n in self.names:
            if n != m:
                seen = batch.present[n].unsqueeze(-1).to(h[n].dtype)
                parts += [(h[n] * seen).expand(lead + h[n].shape[-1:]), seen.expand(lead + (1,))]
        return self.S[m](torch.cat(parts, dim=-1))

    def guide(self, batch: Batch):
        """q(z_y | x_obs) prod_m q(z_a,m | x_m, z_y); Delta codes at their means for the ``wae`` objective."""
        h = self.encode(batch)
        with pyro.plate("data", len(batch)):
            z_y = None
            if self.shared:
                q_z_y = self.posterior_z_y(batch.without_labels() if self.deterministic else batch, h)
                z_y = pyro.sample("z_y", self._code(q_z_y.mean, q_z_y))
            for m in self.names if self.private else ():
                loc_a, scale_a = self.posterior_z_a(batch, h, m, z_y)
                q_a = dist.Normal(loc_a, scale_a).to_event(1)
                if self.deterministic:  # the code where x_m is observed; a draw of the prior (or surrogate) elsewhere
                    loc_a = torch.where(batch.present[m].unsqueeze(-1), loc_a, q_a.sample())
                with poutine.mask(mask=batch.present[m]):
                    pyro.sample(f"z_a_{m}", self._code(loc_a, q_a))

    def _code(self, loc, q):
        return dist.Delta(loc, event_dim=1) if self.deterministic else q

    # ------------------------------------------------------------------ codes and auxiliary terms
    def codes(self, batch: Batch) -> dict:
        """The guide's mean codes ``{"z_y": ..., "z_a_<m>": ...}`` (one pass, no sampling)."""
        h = self.encode(batch)
        out, z_y = {}, None
        if self.shared:
            z_y = out["z_y"] = self.posterior_z_y(batch, h).mean
        for m in self.names if self.private else ():
            out[f"z_a_{m}"] = self.posterior_z_a(batch, h, m, z_y)[0]
        return out

    @property
    def label_sites(self) -> list[str]:
        """The latent sites the label depends on."""
        return ["z_y"] if self.shared else [f"z_a_{m}" for m in self.names]

    def representation(self, batch: Batch):
        """The code the label reads: the mean of z_y, or (without it) every z_a,m's, concatenated."""
        codes = self.codes(batch)
        return torch.cat([codes[s] for s in self.label_sites], dim=-1)

    def label_distribution(self, latents):
        """p(y | D(.)) for given codes: a tensor of z_y, or a dict of the sites in :attr:`label_sites`."""
        if not isinstance(latents, dict):
            latents = {"z_y": latents}
        f_y = self.G_y(latents["z_y"]) if self.shared else None
        f_a = {} if self.shared else {m: self.G[m](latents[f"z_a_{m}"]) for m in self.names}
        return self.D.distribution(self._label_input(f_y, f_a))

    def discriminative_loss(self, batch: Batch):
        """The ss-VAE's auxiliary loss, summed over labelled samples, on the observed modalities and on
        ``model.label_subsets`` random subsets of them (each of a uniformly drawn size, so that every subset, single
        modalities included, is trained to predict the label on its own):

        * ``model.label_samples = 0``: -log p(y | D(E_q[codes | x_S])), the label likelihood of the mean code;
        * ``model.label_samples = K``: -log (1/K) sum_k p(y | D(z_k)), z_k ~ q(z_y | x_S) reparameterised: the
          posterior predictive that prediction reports, so its spread is trained as well as its centre.
        """
        if self.D is None or batch.y is None:
            return torch.zeros(())
        unlabelled = batch.without_labels()
        batches = [unlabelled] + [_random_subset(unlabelled) for _ in range(self.config.label_subsets)]
        keep = batch.y_present.to(torch.get_default_dtype())
        loss = 0.0
        for b in batches:
            log_p = self._label_log_predictive(b, batch.y)
            loss = loss - (log_p * keep.to(log_p.dtype)).sum()
        return loss / len(batches)  # the mean over the passes: alpha keeps its meaning

    def _label_log_predictive(self, batch: Batch, y):
        k = self.config.label_samples
        if not self.shared:
            return self.label_distribution(self.codes(batch)).log_prob(y)
        q = self.posterior_z_y(batch)
        if not k:
            return self.label_distribution(q.mean).log_prob(y)
        log_p = self.label_distribution(q.rsample((k,))).log_prob(y)
        return torch.logsumexp(log_p, 0) - math.log(k)

    def surrogate_loss(self, batch: Batch):
        """sum over samples and present modalities m of ||S_m(x without m) - code_m(full x)||^2.

        Targets and inputs are the encoders' codes, detached: this term trains the surrogates alone.
        """
        batch = batch.without_labels()
        with torch.no_grad():
            h = self.encode(batch)
            full = self.codes(batch)
        loss = torch.zeros((), device=h[self.names[0]].device)
        for m in self.names:
            without = batch.observe_only([n for n in self.names if n != m])
            with torch.no_grad():
                z_y = self.posterior_z_y(without, h).mean if self.shared else None
            err = (self.surrogate(without, h, m, z_y) - full[f"z_a_{m}"]).pow(2).sum(-1)
            loss = loss + (err * batch.present[m].to(err.dtype)).sum()
        return loss
