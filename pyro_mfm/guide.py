"""The MFM's amortized guide: q(z_y | observed modalities [, y]) prod_m q(z_a,m | x_m, z_y).

::

    q(z_y | x_obs)      = N(0, I) * prod_{m observed} N(mu_m(x_m), Lambda_m(x_m)^-1)  normalised product of experts
                          * prod_{m known absent} N(mu_m^absent, (Lambda_m^absent)^-1)
    q(z_a,m | x_m, z_y) = N(mu_a,m(x_m, z_y), sigma_a,m(x_m, z_y))   if x_m is observed,  N(0, I) otherwise

The product of experts takes any subset of observed modalities by construction. Where the model takes missingness
as informative (``model.missingness``), a modality's absence is an observation too, with a learned expert of its
own. In training, an observed label is one more expert (q(z_y | x_obs, y)): a guide blind to y would make the
label's scale absorb the posterior spread of z_y, which prediction then counts a second time (too-wide predictive
intervals). The modality factor's encoder also reads the drawn z_y, as the true posterior does: given x_m, what
z_a,m must explain is what f_y does not (a guide blind to z_y would pull the model towards explaining x_m with z_a,m
alone).

Options: the Memory Fusion Network reads every modality's sequence and gives a diagonal Gaussian q(z_y | x_obs)
(``fusion = "mfn"``); the ``wae`` objective's deterministic codes (the handler :class:`point_codes`: Delta sites at
the means, as :meth:`Guide.codes` uses too); the paper's surrogate inference of a missing modality's code from the
observed ones (``missing = "surrogate"``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn

from .config import MAX_REFIT_MODALITIES, ConfigError, ModelConfig
from .data.dataset import Batch
from .data.schema import Schema
from .data.stats import FeatureStats
from .likelihoods import LabelEncoding, Standardise
from .nets import (
    AbsenceExpert,
    ExpertEncoder,
    InformationExpert,
    LinearExpert,
    MemoryFusion,
    SubsetPosteriors,
    make_encoder,
    mlp,
    product_of_experts,
    step_mean,
)

# the standard deviation with which the wae objective's MFN code of z_y stands as a Gaussian (for consumers that
# take a distribution; draws from it are the code to 1e-6)
POINT_SCALE = 1e-6


class Features(NamedTuple):
    """What the guide computed from one batch's observed modalities, returned by :meth:`Guide.forward` so that a
    term of the objective on the same batch (the discriminative term) need not compute it again."""

    h: dict  # encoder features h_m of every modality
    experts: list | None  # (eta_m, Lambda_m) of each modality's expert of z_y, untempered (product of experts)
    fused: torch.Tensor | None  # the MFN's output for the batch's observed modalities (fusion = "mfn")


class Guide(nn.Module):
    """Encoders, experts, fusion and surrogates of the MFM, and the guide program (:meth:`forward`).

    Sites: ``z_y`` (without the ``no_shared`` ablation) and ``z_a_<m>`` (with modality factors), masked where x_m is
    missing; Delta sites at the codes for the ``wae`` objective.
    """

    def __init__(self, schema: Schema, config: ModelConfig, stats: FeatureStats, label_kind: str | None = None):
        super().__init__()
        self.schema, self.config, self.names = schema, config, schema.names
        h, dropout, layers = config.hidden, config.dropout, config.expert_layers
        z_a = config.per_modality("z_a_dim", self.names)
        lstm_h = config.per_modality("lstm_hidden", self.names)
        enc_h = config.widths("encoder_hidden", self.names, h)
        enc_lstm = config.widths("encoder_lstm_hidden", self.names, lstm_h)
        self.shared, self.private = config.has_z_y, config.has_z_a
        self.deterministic = config.objective == "wae"
        self.x_in = nn.ModuleDict({m: Standardise(stats.mean[m], stats.std[m]) for m in self.names})
        # dropout of the standardised inputs in training (model.input_dropout; none at 0, which draws nothing)
        self.drop_x = nn.Dropout(config.input_dropout) if config.input_dropout else nn.Identity()
        self.y_in = None
        if schema.label is not None:
            self.y_in = LabelEncoding(schema.label, label_kind, stats.label_mean, stats.label_std)
        self.trunk = nn.ModuleDict(
            {
                s.name: make_encoder(
                    s, config.sequence_net, enc_h[s.name], enc_lstm[s.name], dropout, config.sequence_mean
                )
                for s in schema.modalities
            }
        )
        k_y = config.z_y_dim * self.shared
        self.q_y = None
        if self.shared and config.fusion == "mfn":
            mfn_h = config.widths("mfn_hidden", MemoryFusion.PARTS, h)
            self.fusion = MemoryFusion(self._mfn_dims(), lstm_h, config.mfn_memory, mfn_h, dropout)
            # the MFN's output to q(z_y | x): loc and scale, or for wae, whose z_y is a point code, the code alone
            fused_in = self.fusion.out_dim + config.sequence_mean * sum(s.dim for s in schema.modalities)
            self.q_y_fused = nn.Linear(fused_in, (1 if self.deterministic else 2) * config.z_y_dim)
            if self.deterministic:
                self._register_load_state_dict_pre_hook(self._point_code_rows)
        elif self.shared and config.expert == "linear":
            linear = {s.name: LinearExpert(self._linear_dim(s), config.z_y_dim) for s in schema.modalities}
            self.q_y = nn.ModuleDict(linear)
            if config.linear_refit and len(self.names) > MAX_REFIT_MODALITIES:
                warnings.warn(
                    f"model.linear_refit: {schema.name or 'the data'} has {len(self.names)} modalities, more than "
                    f"{MAX_REFIT_MODALITIES} (one posterior per subset of them): the product of experts is kept",
                    RuntimeWarning,
                    stacklevel=2,
                )
            elif config.linear_refit:  # each subset's own posterior, fitted after training (infer/refit.py)
                dims = [self._linear_dim(s) for s in schema.modalities]
                self.subset_posteriors = SubsetPosteriors(dims, config.z_y_dim)
        elif self.shared:
            self.q_y = nn.ModuleDict(
                {m: InformationExpert(enc_h[m], config.z_y_dim, h, dropout, layers) for m in self.names}
            )
        # the modalities whose absence is an observation (model.missingness), each with an expert of z_y
        self.absent_names = missing_not_at_random(config, stats, self.names)
        if self.absent_names:
            self.q_absent = nn.ModuleDict({m: AbsenceExpert(config.z_y_dim) for m in self.absent_names})
        if self.shared and config.fusion != "mfn":
            if self.y_in is not None:  # the label's expert (training), an MLP whatever model.expert is
                self.q_label = InformationExpert(self.y_in.dim, config.z_y_dim, h, dropout, layers)
        if self.private:
            self.q_a = nn.ModuleDict({m: ExpertEncoder(enc_h[m] + k_y, z_a[m], h, dropout, layers) for m in self.names})
        if config.missing == "surrogate":
            others = {m: sum(enc_h[n] + 1 for n in self.names if n != m) for m in self.names}
            self.S = nn.ModuleDict({m: mlp([k_y + others[m], h, h, z_a[m]], dropout) for m in self.names})
        # log temperature of each modality's expert of z_y (its precision and information vector are multiplied by
        # exp(.)), fitted on held-out data after training by pyro_mfm.infer.calibrate; 0 (no change) in training
        self.register_buffer("expert_log_temperature", torch.zeros(len(self.names)))
        # redundancy r_mn = r_nm of modalities m and n (zero diagonal): where n is observed too, expert m's log
        # temperature is lowered by r_mn, so that two views that carry the same evidence are not counted twice;
        # fitted with the temperatures (pyro_mfm.infer.calibrate, train.calibrate = "all"); 0 in training
        self.register_buffer("expert_redundancy", torch.zeros(len(self.names), len(self.names)))

    def _linear_dim(self, spec) -> int:
        """The width of a linear expert's input (:meth:`linear_inputs`) for modality ``spec``."""
        flat = not spec.is_sequence or self.config.sequence_net == "mlp"
        return spec.dim * (spec.steps or 1) if flat else spec.dim

    def _point_code_rows(self, state, prefix, *args):
        """A ``wae`` checkpoint written when ``q_y_fused`` gave a scale as well keeps its code rows (the scale rows
        were never trained: the objective reads the code alone)."""
        for key in (prefix + "q_y_fused.weight", prefix + "q_y_fused.bias"):
            if key in state and state[key].shape[0] == 2 * self.config.z_y_dim:
                state[key] = state[key][: self.config.z_y_dim]

    def _mfn_dims(self) -> dict:
        lengths = {s.name: s.steps for s in self.schema.modalities}
        for s in self.schema.modalities:
            if not s.is_sequence or s.steps != self.schema.modalities[0].steps:
                raise ConfigError(
                    f"model.fusion = 'mfn': modality {s.name!r} has shape {s.shape}; the MFN needs "
                    f"every modality to be a sequence (T, d) of one length T (lengths: {lengths})"
                )
        return {s.name: s.dim for s in self.schema.modalities}

    # ------------------------------------------------------------------ the guide program
    def forward(self, batch: Batch, features: Features | None = None, modalities=None) -> Features:
        """q(z_y | x_obs [, y]) prod_m q(z_a,m | x_m, z_y) (:meth:`program`); for the ``wae`` objective, its codes
        (:class:`point_codes`: Delta sites at the means, a draw of q where x_m is missing). Returns the
        :class:`Features` it computed (``features``: already computed from ``batch``; ``modalities``: as for
        :meth:`program`)."""
        program = point_codes(masked="sample")(self.program) if self.deterministic else self.program
        return program(batch, features, modalities)

    def program(self, batch: Batch, features: Features | None = None, modalities=None) -> Features:
        """The variational distribution: z_y from the product of experts (or the MFN), then each z_a,m given x_m and
        the drawn z_y, masked where x_m is missing. ``modalities``: the z_a,m to draw (default: every modality's;
        a consumer that reads only some of them, such as imputation, names those)."""
        features = self.features(batch) if features is None else features
        with pyro.plate("data", len(batch)):
            z_y = None
            if self.shared:  # the wae codes read the modalities alone
                q_z_y = self.posterior_z_y(batch.without_labels() if self.deterministic else batch, features)
                z_y = pyro.sample("z_y", q_z_y)
            for m in (self.names if modalities is None else modalities) if self.private else ():
                loc_a, scale_a = self.posterior_z_a(batch, features.h, m, z_y)
                with poutine.mask(mask=batch.present[m]):
                    pyro.sample(f"z_a_{m}", dist.Normal(loc_a, scale_a).to_event(1))
        return features

    # ------------------------------------------------------------------ encoders
    def inputs(self, batch: Batch) -> dict:
        """Every modality standardised, zero where missing or padded."""
        return {m: self.drop_x(self.x_in[m](batch.x[m])) * self._input_mask(batch, m) for m in self.names}

    def steps(self, batch: Batch, m: str):
        """The real steps of sequence modality ``m`` where it is present (``None`` for a vector)."""
        return batch.steps[m] & batch.present[m][:, None] if self.schema[m].is_sequence else None

    def _input_mask(self, batch: Batch, m: str):
        real = self.steps(batch, m) if self.schema[m].is_sequence else batch.present[m]
        return real.unsqueeze(-1).to(batch.x[m].dtype)

    def encode(self, batch: Batch, inputs: dict | None = None) -> dict:
        """Encoder features h_m of every modality (zero input where missing)."""
        inputs = self.inputs(batch) if inputs is None else inputs
        return {m: self.trunk[m](inputs[m], self.steps(batch, m)) for m in self.names}

    def linear_inputs(self, batch: Batch, inputs: dict) -> dict:
        """What a linear expert reads (``model.expert = "linear"``): each modality's standardised features, flattened
        over the steps of a sequence that an MLP reads, averaged over the real steps of one that an LSTM reads."""
        out = {}
        for m in self.names:
            if self.schema[m].is_sequence and self.config.sequence_net != "mlp":
                out[m] = step_mean(inputs[m], self.steps(batch, m))
            else:
                out[m] = inputs[m].flatten(-2) if self.schema[m].is_sequence else inputs[m]
        return out

    def experts(self, h: dict, linear: dict | None = None) -> list:
        """(eta_m, Lambda_m) of every modality's expert of z_y, untempered: from the encoder features ``h``, or with
        ``model.expert = "linear"`` from ``linear`` (:meth:`linear_inputs`)."""
        if self.config.expert == "linear":
            return [self.q_y[m](linear[m]) for m in self.names]
        return [self.q_y[m](h[m]) for m in self.names]

    def features(self, batch: Batch, h: dict | None = None) -> Features:
        """The encoder features of ``batch`` (or the given ``h``), and the experts of z_y (product of experts) or the
        MFN's output."""
        mfn = self.shared and self.config.fusion == "mfn"
        linear = self.q_y is not None and self.config.expert == "linear"
        inputs = self.inputs(batch) if h is None or mfn or linear else None
        h = self.encode(batch, inputs) if h is None else h
        experts = None
        if self.q_y is not None:
            experts = self.experts(h, self.linear_inputs(batch, inputs) if linear else None)
        fused = None
        if mfn:
            steps = {m: self.steps(batch, m) for m in self.names}
            fused = self.fusion(inputs, steps)
            if self.config.sequence_mean:  # the time-averaged inputs beside the MFN's final states
                fused = torch.cat([fused] + [step_mean(inputs[m], steps[m]) for m in self.names], -1)
            fused = self.q_y_fused(fused)
        return Features(h, experts, fused)

    # ------------------------------------------------------------------ posteriors
    def posterior_z_y(self, batch: Batch, features: Features | None = None) -> dist.MultivariateNormal:
        """q(z_y | observed modalities [, y]); ``features``: :meth:`features` of a batch with the same modalities
        observed (computed here when not given).

        Product of experts: the prior times the experts of what is observed; where the batch carries labels, the
        label is an expert too (the posterior of z_y given x and y); prediction passes batches without labels.
        MFN: a diagonal Gaussian read from the MFN's [h_T of all; u_T] (missing modalities have zero states).
        With ``model.linear_refit``, outside training and without labels, a sample with no known absence takes its
        observed subset's own refitted posterior (:class:`~pyro_mfm.nets.SubsetPosteriors`) where one was fitted.
        """
        features = self.features(batch) if features is None else features
        if self.config.fusion == "mfn":
            if self.deterministic:  # the point code, as a Gaussian of negligible spread
                loc, raw = features.fused, torch.full_like(features.fused, POINT_SCALE)
            else:
                loc, raw = features.fused.chunk(2, dim=-1)
                raw = nn.functional.softplus(raw) + 1e-4
            return dist.MultivariateNormal(loc, scale_tril=torch.diag_embed(raw))
        weights = self.expert_weights(batch.present_masks(self.names))
        experts = list(features.experts)
        if self.absent_names:  # each known absence, with weight 1
            experts += self.absence_experts(weights.shape[:-1])
            weights = torch.cat([weights, batch.absent_masks(self.absent_names).to(weights.dtype)], -1)
        labelled = self.y_in is not None and batch.y is not None
        if labelled:
            experts.append(self.q_label(self.y_in(batch.y)))
            weights = torch.cat([weights, batch.y_present.unsqueeze(-1).to(weights.dtype)], -1)
        q = product_of_experts([e[0] for e in experts], [e[1] for e in experts], weights)
        refit = getattr(self, "subset_posteriors", None)
        if refit is None or self.training or labelled:
            return q
        # model.linear_refit: each observed subset's own posterior, where a sample has no known absence
        inputs = self.linear_inputs(batch, self.inputs(batch))
        present = batch.present_masks(self.names)
        return refit.posterior([inputs[m] for m in self.names], present, self.without_absence(batch), q)

    def without_absence(self, batch: Batch) -> torch.Tensor:
        """``(B,)``: the samples with no known absence among :attr:`absent_names` (those that
        ``model.linear_refit``'s subset posteriors serve)."""
        if not self.absent_names:
            return torch.ones(len(batch), dtype=torch.bool, device=batch.index.device)
        return ~batch.absent_masks(self.absent_names).any(-1)

    def absence_experts(self, batch_shape) -> list:
        """(eta, Lambda) of each modality's absence (in the order of :attr:`absent_names`), expanded to
        ``batch_shape``; empty where the model takes missingness as ignorable."""
        return [self.q_absent[m](batch_shape) for m in self.absent_names]

    def expert_weights(self, observed):
        """The weight of each modality's expert in the product (:func:`expert_weights` with this guide's
        ``expert_log_temperature`` and ``expert_redundancy``; training runs with t = 0 and r = 0: the weights are
        the masks), for ``observed``: (..., M) masks of the observed modalities."""
        return expert_weights(observed, self.expert_log_temperature, self.expert_redundancy)

    def posterior_z_a(self, batch: Batch, h: dict, m: str, z_y=None):
        """(loc, scale) of q(z_a,m | x_m, z_y) where x_m is observed; elsewhere the prior N(0, I), or the
        surrogate's prediction from the observed modalities (scale 1e-3: a point code)."""
        lead = z_y.shape[:-1] if z_y is not None else h[m].shape[:-1]
        present = batch.present[m].unsqueeze(-1)
        if not torch.is_grad_enabled() and self.config.missing != "surrogate" and not bool(present.any()):
            # no sample of the batch has x_m (imputing it): the prior, without running the encoder for nothing
            # (in training it runs, so that every step gives its parameters a gradient, zero or not, alike)
            zeros = h[m].new_zeros(lead + (self.q_a[m].z_dim,))
            return zeros, torch.ones_like(zeros)
        inp = [h[m].expand(lead + h[m].shape[-1:])] + ([z_y] if z_y is not None else [])
        loc, scale = self.q_a[m](torch.cat(inp, dim=-1))
        if self.config.missing == "surrogate":
            fill_loc, fill_scale = self.surrogate(batch, h, m, z_y), torch.full_like(scale, 1e-3)
        else:
            fill_loc, fill_scale = torch.zeros_like(loc), torch.ones_like(scale)
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

    def codes(self, batch: Batch, features: Features | None = None) -> dict:
        """The guide's mean codes ``{"z_y": ..., "z_a_<m>": ...}`` (:meth:`program` under :class:`point_codes`: one
        pass, no sampling); ``features`` as for :meth:`posterior_z_y`."""
        with poutine.block():  # a computation of its own: no site reaches a trace around the caller
            trace = poutine.trace(point_codes()(self.program)).get_trace(batch, features)
        return {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "sample"}


# model.missingness = "auto": a modality's absence is observed where the training split's test of its independence
# from the label (FeatureStats.absence_p) rejects at this family-wise level, Bonferroni-corrected over the modalities
# that training lacks (on data missing at random, the chance that any absence is observed is at most this).
# Observing an absence that tells nothing can cost: on UCI with 30% of the views hidden at random, one MFM's accuracy
# over the 63 subsets was 0.28 and 0.05 points lower on two draws of the hidden views (seeds 0-3, standard errors
# 0.12 and 0.15), the label term's random subsets being spent on absences (`docs/quality.md`); "auto" trains as
# with the absences ignored wherever the test finds nothing.
ABSENCE_LEVEL = 0.01


def missing_not_at_random(config: ModelConfig, stats: FeatureStats, names) -> list[str]:
    """The modalities whose absence the MFM observes (with z_y and a product of experts, to which an absence adds
    its expert): with ``model.missingness = "informative"`` those that some samples of the training split lack
    (``stats.missing``), with ``"auto"`` those of them whose absence the training split finds dependent on the label
    (``stats.absence_p`` below :data:`ABSENCE_LEVEL` over their number). The MFN has no such term: it reads a
    missing modality's zeroed states, from which a code without a cost of its own (``wae``) can spell out every
    absence, at the expense of what it carries of the rest (imputation on the sequence oracle lost a third of its
    gain over the training mean)."""
    if not config.observes_absences:
        return []
    lacking = [m for m in names if stats.missing.get(m, 0.0) > 0]
    if config.missingness == "informative":
        return lacking
    return [m for m in lacking if stats.absence_p.get(m, 1.0) * len(lacking) < ABSENCE_LEVEL]


def expert_weights(observed, log_temperature, redundancy):
    """The weight of each modality's expert (eta_m, Lambda_m) in the product of experts, exp(t_m - sum_n r_mn [n
    observed]) where m is observed and 0 where not, for ``observed``: (..., M) masks of the observed modalities, t:
    (M,) log temperatures, r: (M, M) symmetric redundancies with a zero diagonal. t_m < 0 lets modality m claim less
    precision about z_y than its network gives, and r_mn > 0 claims less where modality n, which carries the same
    evidence, is observed too (a held-out calibration, :mod:`pyro_mfm.infer.calibrate`)."""
    observed = observed.to(log_temperature.dtype)
    # r has a zero diagonal (an expert is not discounted for itself); r = 0 gives exactly the weights exp(t_m)
    return observed * (log_temperature - observed @ redundancy).exp()


class point_codes(Messenger):
    """Put every latent sample site of a guide at its distribution's mean, as a point mass (``Delta``): the ``wae``
    objective's deterministic codes, and :meth:`Guide.codes`.

    Where a site is masked out (a missing modality's z_a,m), the point is the mean too (``masked = "mean"``) or a
    draw of the site's distribution (``"sample"``: the prior or the surrogate's code, as the ``wae`` guide uses).
    """

    def __init__(self, masked: str = "mean"):
        if masked not in ("mean", "sample"):
            raise ValueError(f"point_codes: masked must be 'mean' or 'sample', not {masked!r}")
        super().__init__()
        self.masked = masked

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg):
            return
        fn, mask = msg["fn"], msg["mask"]
        value = fn.mean
        if self.masked == "sample" and torch.is_tensor(mask):
            keep = mask.reshape(mask.shape + (1,) * fn.event_dim)
            value = torch.where(keep, value, fn.sample())
        msg["fn"] = dist.Delta(value, event_dim=fn.event_dim)
