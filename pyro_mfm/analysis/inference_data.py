"""Posterior draws of an MFM as an :class:`arviz.InferenceData`, so that ArviZ's summaries and plots apply.

What the groups hold, for the labelled samples ``i`` of a data set and draws ``s`` of chain ``c``:

* ``posterior``: ``z_y`` (chain, draw, sample, z_y_dim), draws z_y ~ q(z_y | x_obs,i [, y_i]) from the guide, and
  ``y_point`` (chain, draw, sample, y_dim): the label's class probabilities or mean at that draw,
  p(y | D(G_y(z_y))), an identifiable function of z_y.
* ``posterior_predictive``: ``y`` drawn from p(y | D(G_y(z_y))) at each draw.
* ``log_likelihood``: ``y`` (chain, draw, sample): log p(y_i | z_y draw).
* ``observed_data``: ``y``, the held-out labels.

These are draws from a variational guide, not from an MCMC sampler, and the diagnostics mean something else:

* A chain is an independent SVI run (a model trained with another seed), or, for a single model, an independent
  set of guide draws. R-hat across SVI runs measures how much the runs disagree (optimisation variability, several
  optima), not whether a sampler mixed. Across draw sets of ONE model it is ~1 by construction and says nothing.
* The coordinates of z_y are not identified: the prior N(0, I) is rotation invariant, so two runs can learn the same
  posterior in rotated coordinates. R-hat of ``z_y`` across runs is then large even when both runs are equally
  good; compare runs on identifiable quantities (``y_point``, the log likelihood, predictions).
* Guide draws are independent given the run, so the ESS of a chain is about its number of draws by construction;
  the ESS ArviZ reports drops below the total number of draws only through disagreement between chains.
* PSIS-LOO (``az.loo``) assumes the draws come from the posterior GIVEN y_i. With ``condition_on_labels=True`` the
  draws come from q(z_y | x_obs, y) (the guide's label expert is used), and LOO importance-weights them back to
  the predictive given x_obs alone: its ``elpd_loo`` estimates sum_i log p(y_i | x_obs,i), and its Pareto k
  diagnoses how well the guide's label update matches the likelihood. With the default (draws from
  q(z_y | x_obs), which never saw y_i) the draws are already out of sample: the plain log predictive density
  (``Prediction.log_density``) is the answer and LOO would remove y_i a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

import arviz as az
import numpy as np
import pyro.distributions as dist
import torch
from pyro.infer import Predictive

from ..data.dataset import MultimodalDataset
from ..data.schema import DataError
from ..ensemble import Ensemble
from ..model import MFM
from ._rng import seeded


def _point(p_y) -> torch.Tensor:
    """Class probabilities (categorical) or the mean (regression, multilabel) of one label distribution."""
    return p_y.probs if isinstance(p_y, dist.Categorical) else p_y.mean


@torch.no_grad()
def _draw_chain(
    mfm: MFM, ds: MultimodalDataset, observed, num_samples: int, seed: int, given_labels: bool, batch_size: int
) -> dict[str, np.ndarray]:
    mfm.eval()
    device = next(mfm.parameters()).device
    posterior = Predictive(mfm.guide, num_samples=num_samples, return_sites=["z_y"], parallel=True)
    out = {"z_y": [], "y_point": [], "y_rep": [], "log_lik": []}
    with seeded(seed):
        for batch in ds.loader(batch_size, device=device):
            truth = batch.y
            batch = batch.observe_only(observed)
            z_y = posterior(batch if given_labels else batch.without_labels())["z_y"]
            # the label's calibrated spread for the observed modalities where z_y is inferred from them alone
            p_y = mfm.label_distribution(z_y, observed=None if given_labels else batch.present_masks(mfm.names))
            for key, value in (
                ("z_y", z_y),
                ("y_point", _point(p_y)),
                ("y_rep", p_y.sample()),
                ("log_lik", p_y.log_prob(truth)),
            ):
                out[key].append(value.cpu())
    return {k: torch.cat(v, 1).numpy() for k, v in out.items()}


def to_arviz(
    mfm: MFM | Sequence[MFM],
    dataset: MultimodalDataset,
    observed=None,
    num_samples: int = 100,
    seeds: Sequence[int] | None = None,
    condition_on_labels: bool = False,
    batch_size: int = 512,
) -> az.InferenceData:
    """Guide draws of z_y and the label for the labelled samples of ``dataset``, as ArviZ ``InferenceData``.

    Args:
        mfm: one trained model, or several (independent SVI runs, e.g. other seeds, or an ensemble's members): one
            chain each.
        dataset: the samples; those without a label are left out (``sample`` coordinates are their positions).
        observed: modalities conditioned on (default all).
        num_samples: draws per chain.
        seeds: one seed per chain. For one model, ``len(seeds)`` independent draw sets of that model (default one);
            for several models, their draw seeds (default ``0, 1, ...``).
        condition_on_labels: draw z_y from q(z_y | x_obs, y) instead of q(z_y | x_obs) (what ``az.loo`` assumes;
            see the module docstring).

    Dims: ``sample``, ``z_y_dim`` and ``y_dim`` (class names for a categorical label).
    """
    models = [mfm] if isinstance(mfm, MFM) else list(mfm.members) if isinstance(mfm, Ensemble) else list(mfm)
    if not models:
        raise ValueError("to_arviz: no model given")
    if seeds is None:
        seeds = list(range(len(models)))
    seeds = list(seeds)
    if len(models) == 1:
        models = models * len(seeds)
    elif len(seeds) != len(models):
        raise ValueError(f"to_arviz: {len(models)} models but {len(seeds)} seeds")
    label = models[0].schema.label
    if label is None or dataset.labels is None:
        raise DataError(f"{dataset._where()}: to_arviz needs a labelled data set and a model with a label")
    keep = np.flatnonzero(np.asarray(dataset.label_present))
    if len(keep) == 0:
        raise DataError(f"{dataset._where()}: no labelled samples")
    ds = dataset if len(keep) == len(dataset) else dataset.subset(keep)
    observed = models[0].schema.names if observed is None else models[0].schema.check_modalities(observed)
    chains = [
        _draw_chain(m, ds, observed, num_samples, s, condition_on_labels, batch_size) for m, s in zip(models, seeds)
    ]
    stack = {k: np.stack([c[k] for c in chains]) for k in chains[0]}
    y_obs = np.asarray(ds.labels)
    y_dims = ["sample"] + (["y_dim"] if y_obs.ndim == 2 else [])
    coords = {
        "sample": keep,
        "z_y_dim": np.arange(stack["z_y"].shape[-1]),
        "y_dim": list(label.names) if label.names else np.arange(stack["y_point"].shape[-1]),
    }
    attrs = {
        "inference": "draws from the variational guide (not MCMC)",
        "chains": "independent SVI runs" if len(set(map(id, models))) > 1 else "independent draw sets of one guide",
        "z_y_given": "observed modalities and the label" if condition_on_labels else "observed modalities",
        "observed_modalities": ",".join(observed),
    }
    idata = az.from_dict(
        posterior={"z_y": stack["z_y"], "y_point": stack["y_point"]},
        posterior_predictive={"y": stack["y_rep"]},
        observed_data={"y": y_obs},
        coords=coords,
        dims={"z_y": ["sample", "z_y_dim"], "y_point": ["sample", "y_dim"], "y": y_dims},
        attrs=attrs,
    )
    # the label's log likelihood is one number per sample (summed over the outputs of a multi-output label)
    ll = az.from_dict(
        log_likelihood={"y": stack["log_lik"]}, coords={"sample": keep}, dims={"y": ["sample"]}, attrs=attrs
    )
    idata.extend(ll)
    return idata
