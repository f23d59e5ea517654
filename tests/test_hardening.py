"""Hardening: no silent wrong result and no lost run. Integer labels give a classifier; bad arrays, run folders,
resumes, damaged checkpoints and imputed files end in one clear error; evaluation is reproducible."""

import numpy as np
import pytest

from pyro_mfm.config import Config
from pyro_mfm.data import from_arrays
from pyro_mfm.data.schema import DataError
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.model import MFM

TINY = ["train.progress=False", "model.z_y_dim=2", "model.z_a_dim=2", "model.hidden=8", "model.f_y_dim=4",
        "model.f_a_dim=4", "train.epochs=2", "train.kl_warmup=1", "train.batch_size=16", "train.valid_samples=2",
        "train.num_threads=1", "train.device='cpu'", "evaluate.num_samples=3", "train.calibrate='none'"]


def arrays(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return {"a": rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 4))}


# ------------------------------------------------------------------------------------ from_arrays: labels
def test_integer_labels_give_a_classifier():
    feats = arrays()
    labels = np.arange(30) % 3
    data = from_arrays(feats, labels)
    assert data.schema.label.kind == "categorical" and data.schema.label.dim == 3
    mfm = MFM(data.schema, Config().override(TINY).model, feature_statistics(data["train"]))
    assert mfm.D.kind == "categorical"  # label_likelihood 'auto' then picks a Categorical, not a Normal
    # integer 0/1 columns are multilabel targets; floats stay a regression; a declared kind wins
    assert from_arrays(feats, np.eye(3, dtype=int)[labels]).schema.label.kind == "multilabel"
    assert from_arrays(feats, labels.astype(float)).schema.label.kind == "regression"
    assert from_arrays(feats, labels, label_kind="regression").schema.label.kind == "regression"
    with pytest.raises(DataError, match=r"labels: integer array of shape \(30, 2\).*label_kind='regression'"):
        from_arrays(feats, np.stack([labels, labels + 5], 1))


def test_float_class_labels_that_would_be_truncated_are_refused():
    feats = arrays()
    y = (np.arange(30) % 3).astype(float)
    ok = from_arrays(feats, np.where(np.arange(30) == 4, np.nan, y), label_kind="categorical")
    assert ok["train"].labels.dtype == np.int64 and not ok["train"].label_present[4]
    y[7] = 1.5
    with pytest.raises(DataError, match=r"labels: value 1.5 at sample 7 is not a class index"):
        from_arrays(feats, y, label_kind="categorical")
    y[7] = np.inf
    with pytest.raises(DataError, match=r"at sample 7 is not a class index"):
        from_arrays(feats, y, label_kind="categorical")


# ------------------------------------------------------------------------------------ from_arrays: validation
@pytest.mark.parametrize("kwargs, message", [
    ({"split": np.array(["train"] * 29)}, r"split: array of shape \(29,\), expected \(30,\)"),
    ({"split": {"train": np.arange(20), "valid": np.arange(15, 30)}},
     r"split 'valid': 5 sample\(s\) also in split 'train', first sample 15; expected disjoint splits"),
    ({"split": {"train": np.array([0, 1, 1])}}, r"split 'train': sample 1 listed 2 times"),
    ({"split": {"train": np.arange(31)}}, r"split 'train': sample index 30 out of range; expected indices in \[0, 29\]"),
    ({"split": {"train": np.ones(30, bool)}}, r"split 'train': index array of dtype bool"),
    ({"present": {"video": np.ones(30, bool)}}, r"present: masks for unknown modalities \['video'\]"),
    ({"present": {"a": np.ones(29, bool)}}, r"present mask of modality 'a': shape \(29,\), expected \(30,\)"),
    ({"steps": {"a": np.ones((30, 3), bool)}}, r"steps: mask for modality 'a'.* not a sequence"),
    ({"label_present": np.ones(31, bool)}, r"label_present mask of labels: shape \(31,\), expected \(30,\)"),
    ({"ids": np.arange(29).astype(str)}, r"ids: shape \(29,\), expected \(30,\)"),
])
def test_from_arrays_rejects_inconsistent_arrays(kwargs, message):
    with pytest.raises(DataError, match=message):
        from_arrays(arrays(), np.zeros(30), **kwargs)


def test_from_arrays_mapping_may_leave_samples_out():
    data = from_arrays(arrays(), np.zeros(30), split={"train": np.array([5, 1, 3]), "test": np.array([0])})
    assert len(data["train"]) == 3 and len(data["test"]) == 1
