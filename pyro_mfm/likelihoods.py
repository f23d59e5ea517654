"""Likelihoods of the MFM: p(x_m | F_m(f_y, f_a,m)) for each modality and p(y | D(f_y)) for the label.

Networks work in standardised units; these modules map their outputs back to the data's own units, so every
sample site, log density and prediction is in the units of the data.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus

from .data.schema import LabelSpec, ModalitySpec
from .nets.mlp import mlp


def _inverse_softplus(x: float) -> float:
    return float(torch.log(torch.expm1(torch.tensor(x))))


# the label likelihoods of a discrete label (prediction reports class probabilities, selection accuracy)
DISCRETE_KINDS = ("categorical", "bernoulli")


def resolve_label_kind(label: LabelSpec, kind: str) -> str:
    """The label likelihood ``kind`` names (``"auto"``: the one that fits the label); ValueError if it does not fit."""
    if kind == "auto":
        kind = {"regression": "normal", "categorical": "categorical", "multilabel": "bernoulli"}[label.kind]
    allowed = {"regression": ("normal", "laplace"), "categorical": ("categorical",), "multilabel": ("bernoulli",)}
    if kind not in allowed[label.kind]:
        raise ValueError(
            f"label likelihood {kind!r} does not fit a {label.kind} label: expected one of {allowed[label.kind]}"
        )
    return kind


class Standardise(nn.Module):
    """x -> (x - mean) / std, with the training split's statistics: how an encoder reads a modality."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x):
        return (x - self.mean) / self.std


class LabelEncoding(nn.Module):
    """The label as an encoder's input: standardised values (Normal, Laplace), one-hot classes (Categorical) or
    0/1 labels (Bernoulli); ``dim`` wide."""

    def __init__(self, label: LabelSpec, kind: str, mean, std):
        super().__init__()
        self.kind, self.dim = kind, label.dim
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, y):
        if self.kind == "categorical":
            return torch.nn.functional.one_hot(y, self.dim).to(self.mean.dtype)
        if self.kind == "bernoulli":
            return y.to(self.mean.dtype)
        return (y - self.mean) / self.std


class FeatureLikelihood(nn.Module):
    """Normal likelihood of one modality with a learned (per feature) or fixed scale.

    ``distribution(loc_std, mask)`` takes the decoder's mean in standardised units and returns a distribution with
    event shape ``(d,)`` or ``(T, d)`` whose batch entries are masked by ``present`` (and padding steps by
    ``steps``), so a missing modality or a padded step contributes nothing.
    """

    def __init__(self, spec: ModalitySpec, mean, std, learned_scale: bool, fixed_scale: float = 1.0):
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.learned_scale = learned_scale
        if learned_scale:
            self.raw_scale = nn.Parameter(torch.full((spec.dim,), _inverse_softplus(fixed_scale)))
        else:
            self.register_buffer("fixed_scale", torch.full((spec.dim,), float(fixed_scale)))

    def scale(self):
        return softplus(self.raw_scale) + 1e-3 if self.learned_scale else self.fixed_scale

    def mixture_moments(self, centre_std, spread_std):
        """The mean and variance of x_m under an equal-weight mixture of this likelihood's Normals whose means (the
        decoder's outputs, in standardised units) have mean ``centre_std`` and variance ``spread_std`` over the
        mixture: the law of total variance, Var = scale^2 + the spread of the means, in the data's units."""
        return self.mean + self.std * centre_std, self.std.square() * (self.scale().square() + spread_std)

    def distribution(self, loc_std, present=None, steps=None):
        loc = self.mean + self.std * loc_std
        scale = (self.std * self.scale()).expand_as(loc)
        d = dist.Normal(loc, scale)
        if self.spec.is_sequence:
            if steps is not None:
                d = d.mask(steps.unsqueeze(-1))
            d = d.to_event(2)
        else:
            d = d.to_event(1)
        return d if present is None else d.mask(present)


class LabelLikelihood(nn.Module):
    """D: f_y -> p(y | f_y): Normal or Laplace regression (scale learned per output, or ``fixed_scale`` in the
    label's units), Categorical, or independent Bernoulli labels."""

    def __init__(
        self,
        label: LabelSpec,
        kind: str,
        f_dim: int,
        hidden: int,
        mean,
        std,
        dropout: float = 0.0,
        fixed_scale: float = 0.0,
    ):
        super().__init__()
        self.kind = kind = resolve_label_kind(label, kind)
        self.label = label
        self.head = mlp([f_dim, hidden, label.dim], dropout)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.fixed_scale = float(fixed_scale)
        if kind in ("normal", "laplace") and not self.fixed_scale:
            self.raw_scale = nn.Parameter(torch.full((label.dim,), _inverse_softplus(0.5)))
        # log of the held-out calibration's factor (pyro_mfm.infer.calibrate): on the scale of a Normal or Laplace
        # label per output, on the logits of a Bernoulli label per output, a temperature of the Categorical's logits;
        # 0 (no change) in training
        self.register_buffer("log_temperature", torch.zeros(1 if kind == "categorical" else label.dim))

    def scale(self):
        """The Normal or Laplace label likelihood's scale per output, in the label's units."""
        if self.fixed_scale:
            return torch.full_like(self.std, self.fixed_scale) * self.log_temperature.exp()
        return self.std * (softplus(self.raw_scale) + 1e-3) * self.log_temperature.exp()

    @property
    def is_discrete(self) -> bool:
        return self.kind in DISCRETE_KINDS

    def distribution(self, f_y):
        return self.from_output(self.head(f_y))

    def from_output(self, out, offset=None):
        """p(y | f_y) from the head's output ``head(f_y)``; ``offset``: a log temperature added to
        :attr:`log_temperature` per entry of ``out``'s leading dimensions (the observed modalities' share, see
        :meth:`pyro_mfm.model.Model.label_distribution`)."""
        t = self.log_temperature if offset is None else self.log_temperature + offset.unsqueeze(-1)
        if self.kind == "categorical":
            return dist.Categorical(logits=out * (-t).exp())
        if self.kind == "bernoulli":
            return dist.Bernoulli(logits=out * (-t).exp()).to_event(1)
        loc = self.mean + self.std * out
        scale = self.scale() if offset is None else self.scale() * offset.unsqueeze(-1).exp()
        scale = scale.expand_as(loc)
        base = dist.Normal(loc, scale) if self.kind == "normal" else dist.Laplace(loc, scale)
        return base.to_event(1)

    @staticmethod
    def join_draws(dists: list):
        """One label distribution of the draws of several models (an ensemble's members), each of batch shape
        ``(K_k, N)``: the draws along the first dimension, the same family and event shape (the predictive, the
        equal-weight mixture over every draw, is then what one model's draws give)."""
        if len(dists) == 1:
            return dists[0]
        first = dists[0]
        if isinstance(first, dist.Independent):
            inner = LabelLikelihood.join_draws([d.base_dist for d in dists])
            return inner.to_event(first.reinterpreted_batch_ndims)
        if isinstance(first, (dist.Categorical, dist.Bernoulli)):
            return type(first)(logits=torch.cat([d.logits for d in dists]))
        return type(first)(torch.cat([d.loc for d in dists]), torch.cat([d.scale for d in dists]))

    @staticmethod
    def point(d):
        """The predictive point summary of one label distribution: class probabilities, or the mean."""
        if isinstance(d, dist.Categorical):
            # its logits are normalised, so exp gives the probabilities (torch's softmax over 10 classes: 20x slower)
            return d.logits.exp()
        base = d.base_dist if isinstance(d, dist.Independent) else d
        return base.probs if isinstance(base, dist.Bernoulli) else base.mean
