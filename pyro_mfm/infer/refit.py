"""``model.linear_refit``: each observed subset's posterior of z_y fitted in closed form, after training, to the
model's own full posterior on the training and the validation split (features and posteriors; no labels).

For a sample observing the subset S, the posterior the model implies is its full posterior q(z_y | every observed
modality) with the modalities outside S integrated out. In the linear form of the experts that mixture's mean is
estimated by a ridge regression of the full posteriors' means on S's linear inputs (law of total expectation; the
penalty by leave-one-out, as scikit-learn's ``RidgeCV``), its covariance by the covariance of the regression's
leave-one-out residuals plus the full posteriors' mean covariance (law of total variance); where the samples name
their groups (speakers, videos, as the validation split holds them out), the penalty and the residuals come from
folds of whole groups instead. Trained by steps, with early stopping and the mean of the weights, a linear expert's
direction in its features is the weaker one on near-linear noisy data (``docs/quality.md``, "What the weak
modalities' predictions read on the testbed"); the regression reaches its optimum in one solve. The validation
split's posteriors are out of sample: on its own training samples the full posterior fits what features that tell
the training speakers apart then predict, which does not carry over to new ones. The subset of every modality keeps
the product of experts: that is the model's own posterior, which the regression would only estimate (with more
features than samples, loosely).
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import MultimodalDataset, held_out_groups

# the fewest training samples observing a subset for its posterior to be refitted (else: the product of experts)
MIN_SAMPLES = 20
# the ridge penalties searched by leave-one-out, on standardised inputs
ALPHAS = np.logspace(-2, 5, 15)
# where the training samples name their groups (speakers, videos): folds of whole groups instead of leave-one-out
GROUP_FOLDS = 5
# the most training samples the regressions read (a random subset of a larger split, the same every time): their
# inputs are held in memory in float64, and a ridge regression of a few hundred features is settled long before
MAX_SAMPLES = 50_000


def group_folds(groups, folds: int = GROUP_FOLDS):
    """The (train, test) index pairs of :data:`GROUP_FOLDS`-fold cross-validation by whole groups (scikit-learn's
    ``GroupKFold``), or ``None`` where the samples name no groups (:func:`~pyro_mfm.data.dataset.held_out_groups`:
    every sample a group of its own) or fewer groups than folds."""
    from sklearn.model_selection import GroupKFold

    count = 0 if groups is None else len(np.unique(groups))
    if count < folds or count == len(groups):  # no groups, too few, or every sample a group of its own
        return None
    return list(GroupKFold(n_splits=folds).split(groups, groups=groups))


def held_out_regression(features: np.ndarray, target: np.ndarray, groups=None):
    """The ridge regression of ``target`` on ``features`` (scikit-learn's ``RidgeCV``, the penalty among
    :data:`ALPHAS`) and its residuals on held-out samples: the penalty and the residuals by leave-one-out (the
    closed form ``RidgeCV`` scores every penalty with, its predictions kept by ``store_cv_results``; with more
    features than samples it works on the n x n kernel), or, where ``groups`` names groups of several samples
    (speakers, videos), by :data:`GROUP_FOLDS` folds of whole groups (:func:`group_folds`), so that the spread is the
    error on new groups, which features that tell a training group apart do not carry over to. The fitted residuals
    would understate the spread, by about p/n for p features and n samples."""
    from sklearn.linear_model import Ridge, RidgeCV
    from sklearn.model_selection import cross_val_predict

    folds = group_folds(groups)
    if folds is None:  # with a scoring, RidgeCV keeps each sample's leave-one-out prediction under every penalty
        reg = RidgeCV(alphas=ALPHAS, scoring="neg_mean_squared_error", store_cv_results=True).fit(features, target)
        return reg, target - reg.cv_results_[..., int(np.flatnonzero(ALPHAS == reg.alpha_)[0])]
    reg = RidgeCV(alphas=ALPHAS, cv=folds, scoring="neg_mean_squared_error").fit(features, target)
    return reg, target - cross_val_predict(Ridge(alpha=reg.alpha_), features, target, cv=folds)


@torch.no_grad()
def refit_subsets(mfm, data, batch_size: int = 512, return_held_out: bool = False):
    """Fit ``mfm.guide.subset_posteriors`` (present with ``model.linear_refit`` and linear experts) on ``data``, a
    :class:`MultimodalDataset` or a list of them (training calls it with the training and the validation split: the
    regressions read features and the model's posteriors, never labels), at most :data:`MAX_SAMPLES` samples in
    all; ``{subset: chosen penalty}`` for the subsets fitted (none without them). Samples with a known absence are
    left out, as prediction keeps their product of experts.

    With ``return_held_out``, also each sample's held-out means: per part of ``data`` (``None`` for a missing or
    empty one), ``{code: (n, k) tensor}`` for each fitted subset (bit i of ``code``: modality i), the refitted mean
    of z_y of each of the part's samples that observe the subset, from the regression that held the sample out
    (:func:`held_out_regression`: leave-one-out, or the fold of its group), NaN for the others (not observing it,
    a known absence, left out by the cap). The calibration (:func:`~pyro_mfm.infer.calibrate.calibrate`) scores
    the validation split's predictions with them: the refit read that split's samples, so its own means there are
    fitted in sample, and rate the refitted posteriors above what they predict for new samples."""
    guide = mfm.guide
    refit = getattr(guide, "subset_posteriors", None)
    given = [data] if isinstance(data, MultimodalDataset) else list(data)
    empty = ({}, [None] * len(given)) if return_held_out else {}
    if refit is None:
        return empty
    refit.reset()  # the targets are the product of experts, not an earlier refit
    which = [i for i, d in enumerate(given) if d is not None and d.n]
    parts = [given[i] for i in which]
    index = [np.arange(d.n) for d in parts]  # each row's sample in its part of ``data``
    total = sum(d.n for d in parts)
    if total > MAX_SAMPLES:  # each part its share of the cap
        rng = np.random.default_rng(0)
        # sorted, as the subset holds them
        index = [np.sort(rng.choice(d.n, max(1, d.n * MAX_SAMPLES // total), replace=False)) for d in parts]
        parts = [d.subset(i) for d, i in zip(parts, index)]
    was = mfm.training
    mfm.eval()
    names = list(guide.names)
    device = refit.bias_1.device
    means, inputs, present, kept = [], {m: [] for m in names}, [], []
    cov_sum: dict[int, torch.Tensor] = {}
    count: dict[int, int] = {}
    for batch in (batch for ds in parts for batch in ds.loader(batch_size, device=device)):
        b = batch.without_labels()
        keep = guide.without_absence(b)
        q = guide.posterior_z_y(b)
        mask = b.present_masks(names)[keep]
        codes = refit.codes(mask)
        cov = q.covariance_matrix.expand(q.loc.shape + q.loc.shape[-1:])[keep].double()
        for code in codes.unique().tolist():
            rows = codes == code
            cov_sum[code] = cov_sum.get(code, 0) + cov[rows].sum(0).cpu()
            count[code] = count.get(code, 0) + int(rows.sum())
        means.append(q.mean[keep].double().cpu())
        lin = guide.linear_inputs(b, guide.inputs(b))
        for m in names:
            inputs[m].append(lin[m][keep].double().cpu())
        present.append(mask.cpu())
        kept.append(keep.cpu())
    mfm.train(was)
    if not means:
        return empty
    mean = torch.cat(means).numpy()
    x = {m: torch.cat(v).numpy() for m, v in inputs.items()}
    observed = torch.cat(present).numpy()
    # the samples' groups (speakers, videos; as the validation split holds them out), in the order of the rows kept
    # (each loader goes through its part in order); a part that names none, each sample a group of its own
    named = [held_out_groups(ds) for ds in parts]
    groups = None
    if any(g is not None for g in named):  # each prefixed with its part, so that no two parts share a group
        own = [np.arange(ds.n) if g is None else g for g, ds in zip(named, parts)]
        groups = np.concatenate([np.char.add(f"{i}:", g.astype(str)) for i, g in enumerate(own)])
        groups = groups[torch.cat(kept).numpy()]
    # each row's part of ``data`` and sample there
    part_of = np.concatenate([np.full(len(i), p) for p, i in enumerate(index)])[torch.cat(kept).numpy()]
    sample_of = np.concatenate(index)[torch.cat(kept).numpy()]
    held_out = [{} if i in which else None for i in range(len(given))]
    chosen = {}
    for code in range(1, refit.subsets):  # not the last code, every modality's: its posterior is the product
        subset = [i for i in range(len(names)) if code >> i & 1]
        rows = observed[:, subset].all(-1)
        if rows.sum() < MIN_SAMPLES:
            continue
        features = np.concatenate([x[names[i]][rows] for i in subset], -1)
        reg, residual = held_out_regression(features, mean[rows], None if groups is None else groups[rows])
        # the full posteriors' mean covariance over the samples observing the subset (each code's sum counted)
        within = sum(cov_sum[c] for c in cov_sum if c & code == code) / sum(count[c] for c in count if c & code == code)
        covariance = np.cov(residual.T, bias=True) + within.numpy()
        weight, bias, factor = refit.parts(code)
        weight.copy_(torch.as_tensor(np.atleast_2d(reg.coef_), dtype=weight.dtype))
        bias.copy_(torch.as_tensor(np.atleast_1d(reg.intercept_), dtype=bias.dtype))
        factor.copy_(torch.as_tensor(np.linalg.cholesky(covariance), dtype=factor.dtype))
        chosen["+".join(names[i] for i in subset)] = float(reg.alpha_)
        if return_held_out:
            for j, p in enumerate(which):
                here = part_of[rows] == j
                table = torch.full((given[p].n, mean.shape[1]), float("nan"))  # float32: what z_y's draws hold
                table[sample_of[rows][here]] = torch.as_tensor((mean[rows] - residual)[here], dtype=table.dtype)
                held_out[p][code] = table
    return (chosen, held_out) if return_held_out else chosen
