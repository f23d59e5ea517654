"""What the factors learned: how much each modality's reconstruction depends on z_y versus its own z_a,m, and
what the decoder generates when one factor is held fixed and the other varied.

The measure (per feature, and per step of a sequence) is a variance decomposition of the decoder's mean
mu_m(z_y, z_a,m) = E[x_m | z_y, z_a,m] over a grid of codes z_y^(i) x z_a,m^(j)::

    shared_j   = mean_j Var_i mu(z_y^(i), z_a^(j))     variation from z_y with z_a,m held fixed
    specific_j = mean_i Var_j mu(z_y^(i), z_a^(j))     variation from z_a,m with z_y held fixed

These are Sobol total effects: for mu = g(z_y) + h(z_a) each is the variance of its own term; an interaction
counts in both. ``shared / (shared + specific)`` is the fraction of the reconstruction driven by the shared factor
(1: z_a,m is ignored; 0: z_y is ignored). Codes come from the aggregate posterior (guide draws on real samples) or
from the prior; the decoder is read through the model's ``x_<m>_mean`` site, so any decoder works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pyro import poutine
from pyro.infer import Predictive

from ..data.dataset import Batch, MultimodalDataset
from ..ensemble import Ensemble
from ..model import MFM
from ._rng import seeded


@dataclass
class FactorContributions:
    """Variance of one modality's decoder mean due to z_y (``shared``) and to z_a,m (``specific``).

    Arrays have the modality's shape, ``(d,)`` or ``(T, d)``, in squared data units; ``total`` is the variance
    over all code pairs.
    """

    shared: np.ndarray
    specific: np.ndarray
    total: np.ndarray

    @property
    def shared_fraction(self) -> np.ndarray:
        """shared / (shared + specific) per feature (NaN where the decoder mean does not vary at all)."""
        den = self.shared + self.specific
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, self.shared / np.where(den > 0, den, 1.0), np.nan)

    def overall(self, std=None) -> float:
        """Shared fraction over all features; with ``std`` (per feature), of the standardised variances."""
        w = 1.0 if std is None else 1.0 / np.square(np.asarray(std, float))
        s, a = np.sum(self.shared * w), np.sum(self.specific * w)
        return float(s / (s + a)) if s + a > 0 else float("nan")

    def over_time(self) -> np.ndarray:
        """Sequences: the shared fraction of each step, features summed: ``(T,)``."""
        if self.shared.ndim != 2:
            raise ValueError("over_time: the modality is not a sequence")
        s, a = self.shared.sum(-1), self.specific.sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s + a > 0, s / np.where(s + a > 0, s + a, 1.0), np.nan)


def variance_contributions(mean_fn, z_y, z_a) -> FactorContributions:
    """The decomposition above for any ``mean_fn(z_y (n, k_y), z_a (n, k_a)) -> (n, ...)`` on the code grid."""
    z_y, z_a = torch.as_tensor(z_y), torch.as_tensor(z_a)
    n_y, n_a = len(z_y), len(z_a)
    grid_y = z_y[:, None].expand(n_y, n_a, z_y.shape[-1]).reshape(n_y * n_a, -1)
    grid_a = z_a[None, :].expand(n_y, n_a, z_a.shape[-1]).reshape(n_y * n_a, -1)
    with torch.no_grad():
        mu = torch.as_tensor(mean_fn(grid_y, grid_a)).double()
    mu = mu.reshape((n_y, n_a) + mu.shape[1:])
    shared = mu.var(0, unbiased=False).mean(0)
    specific = mu.var(1, unbiased=False).mean(0)
    total = mu.flatten(0, 1).var(0, unbiased=False)
    return FactorContributions(shared.cpu().numpy(), specific.cpu().numpy(), total.cpu().numpy())


def _one_model(mfm) -> None:
    """Refuse an ensemble: its members' codes live in spaces of their own, so codes and factors are one model's."""
    if isinstance(mfm, Ensemble):
        raise ValueError(
            f"an ensemble of {len(mfm)} MFMs: its members' codes live in spaces of their own; expected one model, "
            "e.g. mfm.members[0]"
        )


def _device(mfm: MFM):
    return next(mfm.parameters()).device


def _empty_batch(mfm: MFM, n: int) -> Batch:
    """``n`` samples with every modality and the label missing (all steps of a sequence real)."""
    dev = _device(mfm)
    mods = mfm.schema.modalities
    return Batch(
        x={s.name: torch.zeros((n,) + s.shape, device=dev) for s in mods},
        present={s.name: torch.zeros(n, dtype=torch.bool, device=dev) for s in mods},
        steps={s.name: torch.ones(n, s.shape[0], dtype=torch.bool, device=dev) for s in mods if len(s.shape) == 2},
        y=None,
        y_present=None,
        index=torch.arange(n, device=dev),
    )


@torch.no_grad()
def decoder_mean(mfm: MFM, modality: str, z_y, z_a, chunk: int = 4096) -> torch.Tensor:
    """E[x_m | z_y, z_a,m] for paired codes ``z_y (n, k_y)``, ``z_a (n, k_a)``: the model's ``x_<m>_mean`` site."""
    _one_model(mfm)
    mfm.schema.check_modalities([modality])
    mfm.eval()
    dev = _device(mfm)
    z_y, z_a = (
        torch.as_tensor(z_y, dtype=torch.float32, device=dev),
        torch.as_tensor(z_a, dtype=torch.float32, device=dev),
    )
    out = []
    for start in range(0, len(z_y), chunk):
        zy, za = z_y[start : start + chunk], z_a[start : start + chunk]
        model = poutine.condition(mfm.model, data={"z_y": zy, f"z_a_{modality}": za})
        trace = poutine.trace(model).get_trace(_empty_batch(mfm, len(zy)))
        out.append(trace.nodes[f"x_{modality}_mean"]["value"])
    return torch.cat(out)


@torch.no_grad()
def posterior_codes(
    mfm: MFM, dataset: MultimodalDataset, observed=None, seed: int = 0, batch_size: int = 512
) -> dict[str, np.ndarray]:
    """One guide draw per sample of ``z_y`` and every ``z_a_<m>`` given the ``observed`` modalities (default all).

    Together they are draws from the aggregate posterior (the codes the data actually use). A modality that is
    not observed for a sample has its z_a,m drawn from the prior.
    """
    _one_model(mfm)
    observed = mfm.schema.names if observed is None else mfm.schema.check_modalities(observed)
    mfm.eval()
    sites = ["z_y"] + [f"z_a_{m}" for m in mfm.schema.names]
    guide = Predictive(mfm.guide, num_samples=1, return_sites=sites, parallel=True)
    out = {s: [] for s in sites}
    with seeded(seed):
        for batch in dataset.loader(batch_size, device=_device(mfm)):
            draws = guide(batch.observe_only(observed).without_labels())
            for s in sites:
                out[s].append(draws[s][0].cpu())
    return {s: torch.cat(v).numpy() for s, v in out.items()}


def factor_contributions(
    mfm: MFM, dataset: MultimodalDataset, modality: str, codes: str = "posterior", num_codes: int = 64, seed: int = 0
) -> FactorContributions:
    """Shared and specific variance of modality ``modality``'s decoder mean (module docstring), per feature.

    Args:
        codes: ``"posterior"``: z_y and z_a,m drawn by the guide for ``num_codes`` random samples of ``dataset``
            that have the modality (all modalities observed); ``"prior"``: both drawn from N(0, I).
        num_codes: grid size per factor (the decoder runs ``num_codes ** 2`` times).
    """
    _one_model(mfm)
    mfm.schema.check_modalities([modality])
    rng = np.random.default_rng(seed)
    if codes == "posterior":
        have = np.flatnonzero(np.asarray(dataset.present[modality]))
        pick = np.sort(rng.choice(have, min(num_codes, len(have)), replace=False))
        drawn = posterior_codes(mfm, dataset.subset(pick), seed=seed)
        z_y, z_a = drawn["z_y"], drawn[f"z_a_{modality}"]
    elif codes == "prior":
        with seeded(seed):
            trace = poutine.trace(mfm.model).get_trace(_empty_batch(mfm, 1))
        k_y, k_a = trace.nodes["z_y"]["value"].shape[-1], trace.nodes[f"z_a_{modality}"]["value"].shape[-1]
        z_y, z_a = rng.standard_normal((num_codes, k_y)), rng.standard_normal((num_codes, k_a))
    else:
        raise ValueError(f"codes = {codes!r}: expected 'posterior' or 'prior'")
    return variance_contributions(lambda a, b: decoder_mean(mfm, modality, a, b), z_y, z_a)


def conditional_generation(mfm: MFM, modality: str, z_y, z_a) -> np.ndarray:
    """Decoder means of ``modality`` for every pair: ``(len(z_y), len(z_a)) + shape``, in data units.

    Row i holds z_y^(i) fixed while z_a,m varies along the row; column j holds z_a,m^(j) fixed while z_y varies.
    """
    _one_model(mfm)
    z_y, z_a = np.asarray(z_y, np.float32), np.asarray(z_a, np.float32)
    n_y, n_a = len(z_y), len(z_a)
    grid_y = np.repeat(z_y, n_a, axis=0)
    grid_a = np.tile(z_a, (n_y, 1))
    mu = decoder_mean(mfm, modality, grid_y, grid_a).cpu().numpy()
    return mu.reshape((n_y, n_a) + mu.shape[1:])
