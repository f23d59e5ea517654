"""An ensemble of MFMs: K models of one schema and configuration, trained apart from seeds of their own, whose
posterior predictive is the equal mixture of theirs (deep ensembles, Lakshminarayanan, Pritzel and Blundell, NeurIPS
2017):

    p(y | x_S) = (1/K) sum_k p_k(y | x_S),   p(x_m | x_S) = (1/K) sum_k p_k(x_m | x_S)

for every observed subset S (with ``model.expert = "both"``, the label's mixture weighted per subset: below). Each
member is an :class:`~pyro_mfm.model.MFM` with its own guide, and each answers any subset; the mixture averages
over what one training's initialisation, minibatch order and held-out draws decide, which one trained model cannot.
Prediction and imputation (:mod:`pyro_mfm.infer.predict`) draw an equal share of the posterior draws from each
member. The members' codes z_y live in spaces of their own (a latent space is defined only up to rotation), so
analyses of the codes read one member (:attr:`Ensemble.members`).

With ``model.expert = "both"`` the members take two forms of the experts of z_y in turn (:func:`member_expert`),
and the label's predictive is the mixture sum_k w_k(S) p_k(y | x_S), with each member's log weight affine in
which modalities S holds (its ``model.mixture_log_weight``), normalised over the members: the weights of the two
forms for each subset, fitted on the validation split (stacking of predictive distributions, Yao, Vehtari,
Simpson and Gelman, Bayesian Analysis 2018; :func:`~pyro_mfm.infer.calibrate.calibrate_ensemble`). Imputation
keeps the equal mixture.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .config import MAX_SEED, ModelConfig
from .model import MFM


def member_seed(seed: int, k: int) -> int:
    """The seed of member ``k`` of an ensemble trained with ``train.seed = seed``: member 0 takes ``seed`` itself
    (so that an ensemble's first member is the single model of that seed), the others seeds drawn from
    ``(seed, k)``, so that the members of two ensembles with different seeds are never the same training."""
    if k == 0:
        return seed
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0] % (MAX_SEED + 1))


FORMS = ("mlp", "linear")
"""The experts' forms the members of an ensemble with ``model.expert = "both"`` take in turn."""


def member_expert(config: ModelConfig, k: int) -> str:
    """The form of the experts of z_y of an ensemble's member ``k``: with ``model.expert = "both"`` and a product
    of experts, :data:`FORMS` in turn (member 0 the MLP, so that it is the single model of its seed), with the MFN
    (no experts) the MLP; otherwise ``model.expert``."""
    if config.expert != "both":
        return config.expert
    if config.fusion != "poe" or not config.has_z_y:
        return FORMS[0]
    return FORMS[k % len(FORMS)]


def expert_form(config: ModelConfig) -> str:
    """The form of the experts a model of ``config`` has: ``model.expert``, where ``"both"`` (a single MFM, or a
    member built outside an ensemble's training) is the MLP form."""
    return FORMS[0] if config.expert == "both" else config.expert


class Ensemble(nn.Module):
    """K trained :class:`~pyro_mfm.model.MFM` members of one schema, whose predictive is the mixture of theirs
    (equal, or for the label weighted per form: :meth:`log_weights`). It answers what prediction, imputation and
    evaluation ask of a model as a whole (the schema, the label's likelihood, the configuration of the networks);
    each member's own guide and networks are ``members[k]``."""

    def __init__(self, members: list[MFM]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        for k, m in enumerate(members[1:], 1):
            if m.schema.to_dict() != first.schema.to_dict():
                raise ValueError(f"ensemble member {k} was trained on another schema than member 0")
        self.members = nn.ModuleList(members)
        self.schema, self.config, self.names = first.schema, first.config, first.names
        self.shared, self.private, self.generative = first.shared, first.private, first.generative

    def __len__(self) -> int:
        return len(self.members)

    @property
    def D(self):
        """The label's likelihood (its kind and point summary are the members')."""
        return self.members[0].D

    @property
    def weighted(self) -> bool:
        """Whether the members' weights in the label's mixture differ from equal ones (``model.mixture_log_weight``
        fitted)."""
        return any(bool(m.model.mixture_log_weight.any()) for m in self.members)

    def log_weights(self, observed: torch.Tensor) -> torch.Tensor:
        """The members' log weights in the mixture of their predictives of the label, ``(K, ...)``, for samples
        observing ``observed``: masks ``(..., M)`` of the modalities. Each member's ``a + sum over observed m of
        b_m`` (:attr:`~pyro_mfm.model.Model.mixture_log_weight` = [a, b_1 .. b_M]), normalised over the members."""
        coef = torch.stack([m.model.mixture_log_weight for m in self.members])
        return mixture_log_weights(coef, observed.to(coef.device, coef.dtype))

    def form_weight(self, observed: torch.Tensor, form: str) -> torch.Tensor:
        """The weight of the members of ``form`` (:func:`expert_form`) together in the mixture of the label's
        predictives, ``(...)``, for samples observing ``observed``: masks ``(..., M)`` (:meth:`log_weights`)."""
        weights = self.log_weights(observed).exp()
        of_form = torch.tensor([expert_form(m.config) == form for m in self.members], device=weights.device)
        return weights[of_form].sum(0)


def mixture_log_weights(coef: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """Log weights ``(K, ...)`` of K members whose coefficients are ``coef`` (K, M + 1), for samples observing
    ``observed`` ((..., M) masks): each member's a + sum over observed m of b_m, normalised over the members."""
    raw = coef[:, 0].reshape((-1,) + (1,) * (observed.dim() - 1)) + torch.einsum("...m,km->k...", observed, coef[:, 1:])
    return torch.log_softmax(raw, 0)


def members_of(model) -> list:
    """The members of an :class:`Ensemble`, or ``[model]`` for a single model."""
    return list(model.members) if isinstance(model, Ensemble) else [model]
