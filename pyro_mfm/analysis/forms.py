"""Each form of expert of an ensemble alone (``model.expert = "both"``), on the validation split that weighed the
forms and on the test split: whether the validation split ranks the forms as the test split does.

The ensemble's label predictive weighs its MLP and linear members per observed subset by how well each predicts the
validation split's labels (:func:`~pyro_mfm.infer.calibrate.calibrate_ensemble`). Where the validation samples share
groups with the training samples (segments of the training speakers or videos) and the test samples do not, the
validation split rewards what a network learnt of the training groups, and can rank the forms the other way round
from the test split (`docs/quality.md`, "Where the weights go wrong on the testbed"). :func:`form_scores` measures
that on a user's data. (It predicts with :mod:`pyro_mfm.infer`, as the report does.)
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.dataset import MultimodalDataset
from ..ensemble import FORMS, Ensemble, expert_form, members_of
from ..infer.evaluate import observed_subsets
from ..infer.predict import predict
from .baselines import _paired, sample_scores

OPPOSITE_SE = 2.0
"""How many paired standard errors each split's difference between the forms must exceed for :func:`form_scores`
to call the splits' rankings opposite."""


def form_scores(
    mfm,
    splits: dict[str, MultimodalDataset],
    subsets=None,
    num_samples: int = 100,
    batch_size: int = 512,
    seed: int | None = 0,
) -> list[dict]:
    """Per observed subset, each form's members alone (their mixture, as the ensemble calibrated them) scored on each
    of ``splits`` (name -> split with labels), and the linear form's weight in the ensemble's mixture.

    Returns one record per subset (all of them by default): ``{"observed": [...], "metric": "accuracy" or "mae",
    "linear_weight": w, "opposite": bool, <split>: {"mlp": value, "linear": value, "difference": d, "se": s, "n":
    n}}`` (a split without such samples left out), where ``d`` is the linear form's per-sample score minus the
    MLP form's (higher is better: accuracy, or minus the absolute error) averaged over the split's labelled samples
    that observe every modality of the subset (``n``) and ``s`` its paired standard error; ``opposite``: the first
    two splits rank the forms in opposite orders, each by more than :data:`OPPOSITE_SE` standard errors. Empty
    unless ``mfm`` is an ensemble with members of both forms and a class or regression label."""
    if not has_both_forms(mfm):
        return []
    members = members_of(mfm)
    forms = {f: [m for m in members if expert_form(m.config) == f] for f in FORMS}
    by_form = {f: Ensemble(ms) for f, ms in forms.items()}
    names = mfm.schema.names
    subsets = observed_subsets(names) if subsets is None else [tuple(s) for s in subsets]
    metric = "accuracy" if mfm.D.kind == "categorical" else "mae"
    records = []
    for obs in subsets:
        rec: dict = {"observed": list(obs), "metric": metric}
        rec["linear_weight"] = float(mfm.form_weight(torch.tensor([m in obs for m in names]), "linear"))
        for split, ds in splits.items():
            # the labelled samples that observe every modality of the subset: where one is missing, neither form
            # reads it, and those samples would only dilute the difference
            keep = np.asarray(ds.label_present, bool) & np.all([np.asarray(ds.present[m], bool) for m in obs], 0)
            if not keep.any():  # nothing to score the forms on
                continue
            y = np.asarray(ds.labels)
            scores = {}
            for f, sub in by_form.items():
                pred = predict(sub, ds, obs, num_samples, batch_size=batch_size, keep_samples=False, seed=seed)
                scores[f] = sample_scores(pred, y)[keep]
            d, se = _paired(scores["linear"] - scores["mlp"])
            sign = 1.0 if metric == "accuracy" else -1.0
            rec[split] = {f: sign * float(s.mean()) for f, s in scores.items()}
            rec[split].update({"difference": d, "se": se, "n": int(keep.sum())})
        first, second = (rec.get(s) for s in list(splits)[:2]) if len(splits) > 1 else (None, None)
        rec["opposite"] = first is not None and second is not None and opposite(first, second)
        records.append(rec)
    return records


def has_both_forms(mfm) -> bool:
    """Whether ``mfm`` is an ensemble with members of both forms of expert and a class or regression label: what
    :func:`form_scores` compares."""
    if not isinstance(mfm, Ensemble) or mfm.D is None or mfm.D.kind not in ("categorical", "normal", "laplace"):
        return False
    return {expert_form(m.config) for m in mfm.members} == set(FORMS)


def opposite(first: dict, second: dict) -> bool:
    """Whether two splits' paired differences between the forms (``{"difference", "se"}`` of :func:`form_scores`)
    have opposite signs, each beyond :data:`OPPOSITE_SE` of its standard errors."""
    return bool(
        first["difference"] * second["difference"] < 0
        and abs(first["difference"]) > OPPOSITE_SE * first["se"]
        and abs(second["difference"]) > OPPOSITE_SE * second["se"]
    )
