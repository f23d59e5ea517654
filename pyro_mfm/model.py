"""The Multimodal Factorization Model (Tsai et al., ICLR 2019) as a Pyro model and guide.

Generative story, for each sample, with modalities m = 1..M::

    z_y    ~ N(0, I)                         shared multimodal discriminative factor
    z_a,m  ~ N(0, I)                         modality-specific generative factor, one per modality
    f_y    = G_y(z_y),   f_a,m = G_m(z_a,m)
    r      ~ Bernoulli(sigmoid(b + W z_y))   whether each modality that data lack is recorded (r_m: x_m is)
    x_m    ~ N(F_m(f_y, f_a,m), s_m^2)       the decoder of modality m sees only f_y and its own f_a,m
    y      ~ p(y | D(f_y))                   the label sees only f_y

A missing modality or label is an unobserved leaf of this graph: masking its likelihood (``.mask(present)``)
integrates it out exactly, in training and at test time. Imputation and prediction sample those sites from the
model (``poutine.uncondition`` + ``Predictive``). Whether a modality is recorded, r_m, is observed where the data
say so (present, or known absent), for each modality that some training samples lack: missing not at random, its
absence informs z_y (``model.missingness``; "ignorable": missing at random, and no r_m). The guide, q(z_y |
x_obs) prod_m q(z_a,m | x_m, z_y), is :class:`pyro_mfm.guide.Guide`; :class:`MFM` holds the two and the
discriminative term that ties them, a Pyro program of its own (:meth:`MFM.classify`, the ss-VAE's
``model_classify``).

The paper's ablations (``model.ablation``) change which factors exist and what each likelihood reads, fixed once
when the model is built: no z_y (the label reads every f_a,m), no z_a,m (every decoder reads f_y alone), or no
decoders at all.
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .config import ModelConfig
from .data.dataset import Batch
from .data.schema import Schema
from .data.stats import FeatureStats
from .guide import Features, Guide, missing_not_at_random
from .likelihoods import FeatureLikelihood, LabelLikelihood, resolve_label_kind
from .nets import FactorNet, make_decoder


class Model(nn.Module):
    """p(z_y) prod_m p(z_a,m) p(x_m | f_y, f_a,m) p(y | f_y) for one data-set schema (:meth:`forward`).

    Sample sites: ``z_y``, ``z_a_<m>``, ``x_<m>``, ``y``, and ``present`` (whether each of :attr:`recorded`, the
    modalities that the training split lacks somewhere, is recorded: ``model.missingness``); deterministic sites
    ``x_<m>_mean`` (the decoder's mean) and ``y_point`` (class probabilities or the label's mean) for
    Rao-Blackwellised predictions. The ablations drop sites: ``no_shared`` has no ``z_y``, ``shared_only`` no
    ``z_a_<m>``, ``discriminative`` neither ``z_a_<m>`` nor ``x_<m>``.
    """

    def __init__(self, schema: Schema, config: ModelConfig, stats: FeatureStats):
        super().__init__()
        self.schema, self.config, self.names = schema, config, schema.names
        h, dropout = config.hidden, config.dropout
        z_a = config.per_modality("z_a_dim", self.names)
        f_a = config.per_modality("f_a_dim", self.names)
        lambda_x = config.per_modality("lambda_x", self.names)
        # the scale of x_m's log density: lambda_x, per element of x_m with x_reduction = "mean"
        self.x_weight = {
            s.name: lambda_x[s.name] / (math.prod(s.shape) if config.x_reduction == "mean" else 1)
            for s in schema.modalities
        }
        # the latent factors, and what each likelihood reads
        self.shared_sites = ["z_y"] if config.has_z_y else []
        private = config.has_z_a
        self.private_sites = {m: [f"z_a_{m}"] if private else [] for m in self.names}
        self.size = {"z_y": config.z_y_dim, **{f"z_a_{m}": z_a[m] for m in self.names}}
        self.reads = {f"x_{m}": self.shared_sites + self.private_sites[m] for m in self.names}
        self.reads["y"] = self.shared_sites or [s for m in self.names for s in self.private_sites[m]]
        g_h = config.widths("factor_hidden", ["z_y", *self.names], h)
        if self.shared_sites:
            self.G_y = FactorNet(config.z_y_dim, config.f_y_dim, g_h["z_y"], dropout)
        if private:
            self.G = nn.ModuleDict({m: FactorNet(z_a[m], f_a[m], g_h[m], dropout) for m in self.names})
        # whether each modality that the training data lack is recorded: a logistic regression on z_y
        self.recorded = missing_not_at_random(config, stats, self.names)
        if self.recorded:
            self.R = nn.Linear(config.z_y_dim, len(self.recorded))
        f_dim = {"z_y": config.f_y_dim, **{f"z_a_{m}": f_a[m] for m in self.names}}
        decoded = schema.modalities if config.has_decoders else []
        self.F = nn.ModuleDict(
            {
                s.name: make_decoder(
                    s, config.sequence_net, sum(f_dim[r] for r in self.reads[f"x_{s.name}"]), h, dropout
                )
                for s in decoded
            }
        )
        self.p_x = nn.ModuleDict(
            {
                s.name: FeatureLikelihood(
                    s, stats.mean[s.name], stats.std[s.name], config.x_scale == "learned", config.x_fixed_scale
                )
                for s in schema.modalities
            }
        )
        self.D = None
        if schema.label is not None:
            self.D = LabelLikelihood(
                schema.label,
                config.label_likelihood,
                sum(f_dim[r] for r in self.reads["y"]),
                config.label_hidden or h,
                stats.label_mean,
                stats.label_std,
                dropout,
                config.label_scale,
            )
        # each modality's share of the label's log temperature where it is observed: the label's spread for a sample
        # observing S is the calibrated one times exp(sum over m in S of this), fitted on held-out data after
        # training (pyro_mfm.infer.calibrate), so that a subset of weak modalities can be wider than one with a
        # strong modality; 0 (no change) in training
        self.register_buffer("label_observed_log_temperature", torch.zeros(len(self.names)))
        # the label's log temperature where a modality is observed alone, added to the above: a prediction from one
        # modality draws z_y from its expert alone, whose posterior may span classes (a weak view alone is then
        # underconfident) where two views together count shared evidence twice (overconfident), which one label
        # temperature cannot serve both; fitted after it for a class label (pyro_mfm.infer.calibrate); 0 in training
        self.register_buffer("label_single_log_temperature", torch.zeros(len(self.names)))
        # the label's log temperature where a sample observes none of the modalities (a subset that it lacks): its
        # predictive is then the prior predictive, to which no modality's share applies; fitted with the shares for a
        # regression label (pyro_mfm.infer.calibrate); 0 in training
        self.register_buffer("label_empty_log_temperature", torch.zeros(()))
        # in an ensemble whose members differ in form (model.expert = "both"), this member's log weight in the
        # mixture of the members' predictives of the label, for a sample observing S: the first entry plus the sum
        # over m in S of the others, normalised over the members (pyro_mfm.ensemble); fitted on held-out data after
        # training (pyro_mfm.infer.calibrate.calibrate_ensemble); 0 (equal weights) otherwise
        self.register_buffer("mixture_log_weight", torch.zeros(len(self.names) + 1))
        self.register_buffer("_eye", torch.eye(config.z_y_dim), persistent=False)

    def factor(self, site: str, z):
        """f = G(z) for the latent site ``z_y`` or ``z_a_<m>``."""
        return self.G_y(z) if site == "z_y" else self.G[site[len("z_a_") :]](z)

    def prior(self, site: str):
        """N(0, I); z_y's written as a full-covariance Normal, so that its KL to the guide's is analytic."""
        if site == "z_y":
            return dist.MultivariateNormal(torch.zeros_like(self._eye[0]), scale_tril=self._eye)
        return dist.Normal(0.0, 1.0).expand([self.size[site]]).to_event(1)

    # ------------------------------------------------------------------ the generative story
    def forward(self, batch: Batch, means: bool = True):
        """Absent ``batch.x[m]``/``batch.y`` are sampled. A missing modality's z_a,m is masked out with its x_m: a
        leaf of the graph, integrated out exactly. ``means`` records the deterministic sites ``x_<m>_mean`` and
        ``y_point`` that prediction reads (the training objectives, which have no use for them, pass ``False``)."""
        with pyro.plate("data", len(batch)):
            z = {s: pyro.sample(s, self.prior(s)) for s in self.shared_sites}
            if self.recorded:
                self.observe_recorded(z["z_y"], batch)
            f = {s: self.factor(s, v) for s, v in z.items()}
            for m in self.names:
                with poutine.mask(mask=batch.present.get(m, True)):  # where x_m is missing, z_a,m and x_m are leaves
                    for s in self.private_sites[m]:
                        f[s] = self.factor(s, pyro.sample(s, self.prior(s)))
                    if m in self.F:
                        self.observe_x(m, self.F[m](self.read(f"x_{m}", f)), batch, means)
            if self.D is not None:
                self.observe_y(self.D.distribution(self.read("y", f)), batch, means)

    def observe_recorded(self, z_y, batch: Batch):
        """r: whether each modality of :attr:`recorded` is recorded, one site ``present`` with a value per modality,
        each observed where the batch knows it (present or known absent)."""
        present = batch.present_masks(self.recorded)
        known = present | batch.absent_masks(self.recorded)
        p_r = dist.Bernoulli(logits=self.R(z_y)).mask(known).to_event(1)
        pyro.sample("present", p_r, obs=present.to(z_y.dtype))

    def read(self, site: str, f: dict):
        """What the likelihood of ``site`` reads: its factors' features, concatenated (one factor's as they are)."""
        parts = [f[s] for s in self.reads[site]]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def observe_x(self, m: str, loc, batch: Batch, means: bool):
        p_x = self.p_x[m].distribution(loc, steps=batch.steps.get(m))
        if means:
            pyro.deterministic(f"x_{m}_mean", p_x.mean, event_dim=len(self.schema[m].shape))
        with poutine.scale(scale=self.x_weight[m]):
            pyro.sample(f"x_{m}", p_x, obs=batch.x.get(m))

    def observe_y(self, p_y, batch: Batch, means: bool):
        if means:
            pyro.deterministic("y_point", self.D.point(p_y), event_dim=1)
        if batch.y_present is not None:
            p_y = p_y.mask(batch.y_present)
        with poutine.scale(scale=self.config.lambda_y):
            pyro.sample("y", p_y, obs=batch.y)

    def modality_distribution(self, m: str, latents: dict, steps=None, factors: dict | None = None):
        """p(x_m | F_m(.)) for given codes: a dict holding the sites in ``reads["x_<m>"]`` (``steps``: which steps of a
        sequence are real, as ``batch.steps[m]``). ``factors``: a dict of the factors' features G(z) of these codes
        computed so far, which receives those computed here (so that decoding several modalities computes f_y once)."""
        return self.p_x[m].distribution(self.decode(m, latents, factors), steps=steps)

    def decode(self, m: str, latents: dict, factors: dict | None = None):
        """F_m(.) for given codes: the mean of p(x_m | .) in standardised units (as :meth:`modality_distribution`)."""
        site = f"x_{m}"
        f = {} if factors is None else factors
        for s in self.reads[site]:
            if s not in f:
                f[s] = self.factor(s, latents[s])
        return self.F[m](self.read(site, f))

    def label_distribution(self, latents, block: int | None = None, observed=None):
        """p(y | D(.)) for given codes: a tensor of z_y, or a dict of the sites in ``reads["y"]``. ``block``: run the
        networks on at most this many entries of the codes' first dimension (the draws) at a time, so that their
        activations stay in cache; the same values. ``observed``: masks ``(..., N, M)`` of the modalities each sample
        observes (aligned with the codes' dimensions after the first), whose calibrated shares of the label's log
        temperature (:attr:`label_observed_log_temperature`) then apply; ``None``: none apply (training)."""
        return self.label_from_output(self.label_output(latents, block), observed)

    def label_output(self, latents, block: int | None = None) -> torch.Tensor:
        """The label head's output D.head(f_y) for given codes (as :meth:`label_distribution`): what the label's
        temperatures act on (:meth:`label_from_output`)."""
        if not isinstance(latents, dict):
            latents = {"z_y": latents}
        latents = {s: latents[s] for s in self.reads["y"]}
        n = next(iter(latents.values())).shape[0]
        head = lambda lat: self.D.head(self.read("y", {s: self.factor(s, z) for s, z in lat.items()}))  # noqa: E731
        if block is None or block >= n:
            return head(latents)
        return torch.cat([head({s: z[k : k + block] for s, z in latents.items()}) for k in range(0, n, block)])

    def label_from_output(self, out: torch.Tensor, observed=None):
        """p(y | D(.)) from the head's output :meth:`label_output`, with the label's log temperature and, given
        ``observed`` (as :meth:`label_distribution`), the observed modalities' shares of it, where a sample
        observes one modality alone, that modality's own offset of it (:attr:`label_single_log_temperature`), and
        where it observes none, the offset of the prior predictive (:attr:`label_empty_log_temperature`)."""
        if observed is None:
            return self.D.from_output(out)
        shares, singles = self.label_observed_log_temperature, self.label_single_log_temperature
        observed = observed.to(shares.dtype)
        count = observed.sum(-1)
        alone = observed * (count == 1).unsqueeze(-1).to(shares.dtype)
        empty = (count == 0).to(shares.dtype) * self.label_empty_log_temperature
        return self.D.from_output(out, observed @ shares + alone @ singles + empty)


# The label term's random subsets are one modality half of the time. A subset's posterior is a product of its
# modalities' experts, so an expert that predicts the label alone is what every larger subset builds on; with sizes
# uniform on 1..M, each modality alone was 1 in 36 of the subsets on UCI's six views, and single views trailed
# their logistic regressions by 1.9-2.5 points (`docs/quality.md`). With two modalities the rule is the
# uniform one.
SINGLE = 0.5


def _random_subset(batch: Batch, single: float | None = None, absent=()) -> Batch:
    """``batch`` with each sample's observed modalities cut down to a random non-empty subset of them, its size
    drawn uniformly from 1 to the number observed (so a single modality is as likely as all of them); with
    ``single``, one modality with that probability and otherwise a size drawn uniformly from 2 to the number
    observed. The members are then drawn uniformly. With two modalities observed, ``single = 0.5`` is the uniform
    rule, draw for draw. ``absent``: the modalities whose absence is an observation (``model.missingness``), which
    count among a sample's observed ones where it is known absent (so that an absence alone is a subset too); the
    draws are the same where no sample lacks them."""
    names = list(batch.present)
    present = batch.present_masks(names)
    lacking = batch.absent_masks(names) & torch.tensor([m in absent for m in names], device=present.device)
    known = present | lacking
    count = known.sum(-1, keepdim=True)
    u = torch.rand(count.shape, device=present.device)
    if single is None:
        size = (u * count).floor().long() + 1
    else:  # u < single: one; else u rescaled to [0, 1) picks a size in 2..count
        rest = ((u - single) / (1 - single) * (count - 1)).floor().long() + 2
        size = torch.where(u < single, torch.ones_like(count), rest.minimum(count))
    keys = torch.where(
        known, torch.rand(known.shape, device=present.device), torch.full_like(known, 2.0, dtype=torch.float)
    )
    rank = keys.argsort(-1).argsort(-1)
    chosen = rank < size
    kept, gone = present & chosen, lacking & chosen
    return batch.with_present(
        {m: kept[:, i] for i, m in enumerate(names)}, {m: gone[:, i] for i, m in enumerate(names)}
    )


# old checkpoints hold one flat module: the guide's parts under these names, the model's under the rest
_GUIDE_KEYS = (
    "trunk.",
    "q_y.",
    "q_label.",
    "q_a.",
    "S.",
    "fusion.",
    "q_y_fused.",
    "expert_log_temperature",
    "expert_redundancy",
)


def upgrade_state_dict(state: dict) -> dict:
    """A state dict of :class:`MFM` in its current layout, from one written by an older version: weights of a single
    flat module (before the model and guide were separate modules), or without ``expert_redundancy``."""
    state = dict(state)
    if not any(k.startswith(("model.", "guide.")) for k in state):
        flat, state = state, {}
        for k, v in flat.items():
            state[("guide." if k.startswith(_GUIDE_KEYS) else "model.") + k] = v
            if k.startswith("p_x.") and k.endswith((".mean", ".std")):  # the encoders' input scaling
                state["guide.x_in." + k[len("p_x.") :]] = v
            if k in ("D.mean", "D.std"):
                state["guide.y_in." + k[len("D.") :]] = v
    if "guide.expert_log_temperature" in state and "guide.expert_redundancy" not in state:
        m = state["guide.expert_log_temperature"].shape[0]
        state["guide.expert_redundancy"] = torch.zeros(m, m)
    m = sum(1 for k in state if k.startswith("guide.x_in.") and k.endswith(".mean"))
    if "model.label_observed_log_temperature" not in state:  # written before the label's shares per modality
        state["model.label_observed_log_temperature"] = torch.zeros(m)
    if "model.label_single_log_temperature" not in state:  # written before the single modalities' offsets
        state["model.label_single_log_temperature"] = torch.zeros(m)
    if "model.mixture_log_weight" not in state:  # written before an ensemble's weights per form
        state["model.mixture_log_weight"] = torch.zeros(m + 1)
    if "model.label_empty_log_temperature" not in state:  # written before the offset where nothing is observed
        state["model.label_empty_log_temperature"] = torch.zeros(())
    refit = any(k.startswith("guide.subset_posteriors.") for k in state)
    if refit and "guide.subset_posteriors.log_scale" not in state:  # written before the refit's covariance scale
        state["guide.subset_posteriors.log_scale"] = torch.zeros(())
    return state


def discriminative_weight(schema: Schema, config: ModelConfig) -> float:
    """The weight of the discriminative term: ``model.alpha``, times, with ``model.label_weight = "auto"`` and a
    class or multilabel label, the features per sample (per step of a sequence, summed over the modalities) over
    the label's variables (one for a class label)."""
    label = schema.label
    if config.label_weight == "fixed" or label is None or label.kind == "regression":
        return config.alpha
    variables = 1 if label.kind == "categorical" else label.dim
    return config.alpha * sum(s.dim for s in schema.modalities) / variables


class MFM(nn.Module):
    """The MFM for one data-set schema: :attr:`model` (:class:`Model`) and :attr:`guide`
    (:class:`~pyro_mfm.guide.Guide`), both Pyro programs taking a :class:`Batch`, and the terms of the objective
    that use both (the discriminative term, the surrogate's)."""

    def __init__(self, schema: Schema, config: ModelConfig, stats: FeatureStats):
        super().__init__()
        config.validate()
        self.schema, self.config, self.names = schema, config, schema.names
        self.shared, self.private, self.generative = config.has_z_y, config.has_z_a, config.has_decoders
        self.model = Model(schema, config, stats)
        kind = resolve_label_kind(schema.label, config.label_likelihood) if schema.label is not None else None
        self.guide = Guide(schema, config, stats, kind)
        self.alpha = discriminative_weight(schema, config)

    @property
    def D(self) -> LabelLikelihood | None:
        """The label likelihood p(y | D(f_y)) (``None`` without a label)."""
        return self.model.D

    @property
    def p_x(self) -> nn.ModuleDict:
        """The modalities' likelihoods p(x_m | F_m(.))."""
        return self.model.p_x

    @property
    def expert_log_temperature(self) -> torch.Tensor:
        return self.guide.expert_log_temperature

    @property
    def expert_redundancy(self) -> torch.Tensor:
        return self.guide.expert_redundancy

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As :meth:`torch.nn.Module.load_state_dict`, also for checkpoints of older versions
        (:func:`upgrade_state_dict`)."""
        return super().load_state_dict(upgrade_state_dict(state_dict), strict=strict, assign=assign)

    # ------------------------------------------------------------------ what prediction reads
    def posterior_z_y(self, batch: Batch, features: Features | None = None):
        """q(z_y | observed modalities [, y]) (:meth:`Guide.posterior_z_y`)."""
        return self.guide.posterior_z_y(batch, features)

    def codes(self, batch: Batch) -> dict:
        """The guide's mean codes ``{"z_y": ..., "z_a_<m>": ...}`` (one pass, no sampling)."""
        return self.guide.codes(batch)

    def label_distribution(self, latents, block: int | None = None, observed=None):
        """p(y | D(.)) for given codes: a tensor of z_y, or a dict of the sites in :attr:`label_sites`
        (:meth:`Model.label_distribution`)."""
        return self.model.label_distribution(latents, block, observed)

    @property
    def label_sites(self) -> list[str]:
        """The latent sites the label depends on."""
        return self.model.reads["y"]

    def representation(self, batch: Batch):
        """The code the label reads: the mean of z_y, or (without it) every z_a,m's, concatenated."""
        codes = self.codes(batch)
        return torch.cat([codes[s] for s in self.label_sites], dim=-1)

    # ------------------------------------------------------------------ auxiliary terms of the objective
    def classify(self, batch: Batch, features: Features | None = None):
        """The discriminative term as a Pyro program, as in the ss-VAE's ``model_classify``: an observed site per
        pass of :meth:`label_log_predictives` (``y_aux`` on the observed modalities, ``y_aux_1``, ... on the random
        subsets), each the labelled samples' log predictive density of their label, scaled by alpha / the number of
        passes. It has no latent sites: with an empty guide, ``Trace_ELBO``'s loss of it is
        ``alpha * discriminative_loss(batch)``, which the ``elbo`` objective adds."""
        passes = self.label_log_predictives(batch, features)
        if not passes:
            return
        scale = self.alpha / len(passes)  # the mean over the passes: alpha keeps its meaning
        with pyro.plate("data", len(batch)), poutine.scale(scale=scale), poutine.mask(mask=batch.y_present):
            for i, log_p in enumerate(passes):
                pyro.factor(f"y_aux_{i}" if i else "y_aux", log_p)

    def discriminative_loss(self, batch: Batch, features: Features | None = None):
        """-(1 / passes) sum over passes and labelled samples of :meth:`label_log_predictives` (0 without labels)."""
        passes = self.label_log_predictives(batch, features)
        if not passes:
            return torch.zeros(())
        keep = batch.y_present
        return -sum(torch.where(keep, log_p, torch.zeros_like(log_p)).sum() for log_p in passes) / len(passes)

    def label_log_predictives(self, batch: Batch, features: Features | None = None) -> list:
        """The ss-VAE's auxiliary term, per sample: log p(y | x_S) on the observed modalities and on
        ``model.label_subsets`` random subsets of them (one modality half of the time, :data:`SINGLE`, so that every
        subset, single modalities first, is trained to predict the label on its own), one ``(B,)`` tensor per pass:

        * ``model.label_samples = 0``: log p(y | D(E_q[codes | x_S])), the label likelihood of the mean code;
        * ``model.label_samples = K``: log (1/K) sum_k p(y | D(z_k)), z_k ~ q(z_y | x_S) reparameterised: the
          posterior predictive that prediction reports, so its spread is trained as well as its centre.

        ``features``: what the guide computed from ``batch`` (:meth:`Guide.forward`; computed here when not given).
        Each expert (and each z_a,m's encoder) reads its own modality alone, so without dropout the features of the
        observed modalities are those of every subset of them (a subset masks the others out) and serve them all.
        With dropout in training each subset is encoded anew, with masks of its own: sharing the observed pass's
        masks made the main job's imputations worse on two seeds of two, and with the imputation term the label
        lower on the shape-descriptor subsets over six seeds; sharing them in the imputation term's subsets alone
        left single views lower over twelve seeds (`docs/quality.md` weighs that evidence). The MFN reads the
        modalities together, so with it each subset is encoded anew as well. Empty without a label or without labels
        in ``batch``.
        """
        if self.D is None or batch.y is None:
            return []
        unlabelled = batch.without_labels()
        features = self.guide.features(unlabelled) if features is None else features
        absent = self.guide.absent_names
        batches = [unlabelled] + [_random_subset(unlabelled, SINGLE, absent) for _ in range(self.config.label_subsets)]
        shared = self._subsets_share(features)
        return [
            self._label_log_predictive(b, batch.y, features if i == 0 or shared else None)
            for i, b in enumerate(batches)
        ]

    def _subsets_share(self, features: Features) -> bool:
        """Whether random subsets of the observed modalities may take their features from the observed pass's
        ``features``: the same values unless dropout draws new masks in each pass or the MFN reads the modalities
        together (:meth:`label_log_predictives`)."""
        dropout = self.training and (self.config.dropout > 0 or self.config.input_dropout > 0)
        return features.fused is None and not dropout

    def imputations(self, batch: Batch, features: Features | None = None):
        """The imputation term as a Pyro program with no latent sites, as :meth:`classify` is the label's: an
        observed site ``x_aux_<i>`` per pass of :meth:`hidden_log_likelihoods`, each scaled by 1 / the number of
        passes (their mean)."""
        passes = self.hidden_log_likelihoods(batch, features)
        if not passes:
            return
        with pyro.plate("data", len(batch)), poutine.scale(scale=1.0 / len(passes)):
            for i, log_p in enumerate(passes):
                pyro.factor(f"x_aux_{i}", log_p)

    def hidden_log_likelihoods(self, batch: Batch, features: Features | None = None) -> list:
        """Per sample, for each of ``model.impute_subsets`` random subsets S of the observed modalities, the sum over
        the modalities m observed but outside S of lambda_x,m log p(x_m | F_m(G_y(z_y), G_m(z_a,m))), with z_y ~
        q(z_y | x_S) and z_a,m ~ N(0, I), one reparameterised draw: the draws imputation makes from x_S, so that
        what it reports is trained (a lower bound on lambda_x,m log p(x_m | x_S)). One ``(B,)`` tensor per subset;
        empty without decoders or z_y. ``features`` as for :meth:`label_log_predictives`.

        Each decoder runs on the samples whose modality the subset hides, and on no other (a subset hides about one
        modality of six on UCI), with f_y = G_y(z_y) computed once for all of them; z_a,m is drawn for those
        samples alone."""
        if not self.config.impute_subsets or not self.generative or not self.shared:
            return []
        unlabelled = batch.without_labels()
        features = self.guide.features(unlabelled) if features is None else features
        shared = self._subsets_share(features)
        passes = []
        for _ in range(self.config.impute_subsets):
            subset = _random_subset(unlabelled, absent=self.guide.absent_names)
            z_y = self.posterior_z_y(subset, features if shared else None).rsample()
            f_y, total = self.model.factor("z_y", z_y), z_y.new_zeros(len(batch))
            for m in self.names:
                rows = (batch.present[m] & ~subset.present[m]).nonzero().squeeze(-1)
                if not len(rows):
                    continue
                codes, factors = {}, {"z_y": f_y[rows]}
                for s in self.model.private_sites[m]:
                    codes[s] = torch.randn(len(rows), self.model.size[s], dtype=z_y.dtype, device=z_y.device)
                steps = batch.steps.get(m)
                p_x = self.model.modality_distribution(
                    m, codes, steps=None if steps is None else steps[rows], factors=factors
                )
                total = total.index_add(0, rows, self.model.x_weight[m] * p_x.log_prob(batch.x[m][rows]))
            passes.append(total)
        return passes

    def _label_log_predictive(self, batch: Batch, y, features: Features | None):
        k = self.config.label_samples
        if not self.shared:
            return self.label_distribution(self.guide.codes(batch, features)).log_prob(y)
        q = self.posterior_z_y(batch, features)
        if not k:
            return self.label_distribution(q.mean).log_prob(y)
        log_p = self.label_distribution(q.rsample((k,))).log_prob(y)
        return torch.logsumexp(log_p, 0) - math.log(k)

    def fit_surrogates(self, batch: Batch):
        """The surrogates' regression as a Pyro program with no latent sites, like :meth:`classify`: a factor site
        ``surrogate_<m>`` per modality, -||S_m(x without m) - code_m(full x)||^2 over the samples where m is present,
        scaled by ``model.surrogate_weight`` (:meth:`surrogate_errors`). With an empty guide, ``Trace_ELBO``'s loss
        of it is ``surrogate_weight * surrogate_loss(batch)``, which the objective adds."""
        errors = self.surrogate_errors(batch)
        with pyro.plate("data", len(batch)), poutine.scale(scale=self.config.surrogate_weight):
            for m, err in errors.items():
                with poutine.mask(mask=batch.present[m]):
                    pyro.factor(f"surrogate_{m}", -err)

    def surrogate_loss(self, batch: Batch):
        """sum over samples and present modalities m of ||S_m(x without m) - code_m(full x)||^2."""
        return sum((err * batch.present[m].to(err.dtype)).sum() for m, err in self.surrogate_errors(batch).items())

    def surrogate_errors(self, batch: Batch) -> dict:
        """``{m: ||S_m(x without m) - code_m(full x)||^2}`` per sample, the surrogate's inference of z_a,m from the
        other modalities against the encoder's code of x_m (meaningful where x_m is present).

        Targets and inputs are the encoders' codes, detached: this term trains the surrogates alone.
        """
        batch = batch.without_labels()
        guide = self.guide
        with torch.no_grad():
            features = guide.features(batch)
            full = guide.codes(batch, features)
        errors = {}
        for m in self.names:
            without = batch.observe_only([n for n in self.names if n != m])
            with torch.no_grad():
                z_y = guide.posterior_z_y(without, guide.features(without, features.h)).mean if self.shared else None
            errors[m] = (guide.surrogate(without, features.h, m, z_y) - full[f"z_a_{m}"]).pow(2).sum(-1)
        return errors
