"""An ensemble of MFMs: K models of one schema and configuration, trained apart from seeds of their own, whose
posterior predictive is the equal mixture of theirs (deep ensembles, Lakshminarayanan, Pritzel and Blundell, NeurIPS
2017):

    p(y | x_S) = (1/K) sum_k p_k(y | x_S),   p(x_m | x_S) = (1/K) sum_k p_k(x_m | x_S)

for every observed subset S. Each member is an :class:`~pyro_mfm.model.MFM` with its own guide, and each answers
any subset; the mixture averages over what one training's initialisation, minibatch order and held-out draws
decide, which one trained model cannot. Prediction and imputation (:mod:`pyro_mfm.infer.predict`) draw an equal
share of the posterior draws from each member. The members' codes z_y live in spaces of their own (a latent space
is defined only up to rotation), so analyses of the codes read one member (:attr:`Ensemble.members`).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from .config import MAX_SEED
from .model import MFM


def member_seed(seed: int, k: int) -> int:
    """The seed of member ``k`` of an ensemble trained with ``train.seed = seed``: member 0 takes ``seed`` itself
    (so that an ensemble's first member is the single model of that seed), the others seeds drawn from
    ``(seed, k)``, so that the members of two ensembles with different seeds are never the same training."""
    if k == 0:
        return seed
    return int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0] % (MAX_SEED + 1))


class Ensemble(nn.Module):
    """K trained :class:`~pyro_mfm.model.MFM` members of one schema, whose predictive is the equal mixture of
    theirs. It answers what prediction, imputation and evaluation ask of a model as a whole (the schema, the label's
    likelihood, the configuration of the networks); each member's own guide and networks are
    ``members[k]``."""

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


def members_of(model) -> list:
    """The members of an :class:`Ensemble`, or ``[model]`` for a single model."""
    return list(model.members) if isinstance(model, Ensemble) else [model]
