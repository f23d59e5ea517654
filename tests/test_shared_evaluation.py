"""``evaluate`` encodes every modality once for all subsets (product of experts): the same numbers as encoding each
subset's passes anew, exactly; and where sharing cannot hold (the MFN reads all modalities at once) or would take
too much memory, it encodes per subset."""

import importlib

import numpy as np
import pyro
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.data.synthetic import LinearGaussianMFM
from pyro_mfm.model import MFM

evaluation = importlib.import_module("pyro_mfm.infer.evaluate")
prediction = importlib.import_module("pyro_mfm.infer.predict")  # (pyro_mfm.infer.predict is also the function)


@pytest.fixture(scope="module")
def data():
    gen = LinearGaussianMFM.random({"a": 5, "b": 4, "c": 3}, z_y_dim=2, seed=2)
    # missing entries in the data as well, so that a subset's batches mix observed and missing samples
    return gen.sample({"train": 64, "test": 70}, missing={"b": 0.3, "c": 0.2}, seed=0)


def _mfm(data, *overrides):
    cfg = Config().override(["model.hidden=16", "model.z_y_dim=2", "model.z_a_dim=2", *overrides])
    pyro.set_rng_seed(0)
    mfm = MFM(data.schema, cfg.model, feature_statistics(data["train"])).eval()
    # calibrated weights, so that each subset's experts are tempered by what else it observes
    mfm.guide.expert_log_temperature.copy_(torch.tensor([-0.3, 0.2, 0.1]))
    mfm.guide.expert_redundancy.copy_(torch.tensor([[0.0, 0.4, 0.1], [0.4, 0.0, 0.2], [0.1, 0.2, 0.0]]))
    return mfm


def _numbers(records):
    out = []
    for r in records:
        out += [v for v in r.get("label", {}).values()]
        out += [v for d in r.get("imputation", {}).values() for v in d.values()]
    return np.array(out, float)


@pytest.mark.parametrize(
    "overrides",
    [[], ["model.objective='wae'", "model.missing='surrogate'"], ["model.label_likelihood='normal'"]],
    ids=["elbo", "wae-surrogate", "normal-label"],
)
def test_shared_encoders_give_the_numbers_of_encoding_every_subset(data, overrides, monkeypatch):
    mfm, ds = _mfm(data, *overrides), data["test"]
    calls = []
    real = mfm.guide.features
    monkeypatch.setattr(mfm.guide, "features", lambda *a, **k: calls.append(1) or real(*a, **k))
    # batch_size 16: several passes, the last one short, so the shared rows must line up pass by pass
    shared = evaluation.evaluate(mfm, ds, num_samples=7, impute_samples=5, batch_size=16, progress=False)
    shared_calls = len(calls)
    monkeypatch.setattr(evaluation, "split_features", lambda *a, **k: None)
    anew = evaluation.evaluate(mfm, ds, num_samples=7, impute_samples=5, batch_size=16, progress=False)
    assert len(shared) == len(anew) == 7
    np.testing.assert_array_equal(_numbers(shared), _numbers(anew))
    passes = -(-len(ds) // 16)
    # once over the split (5 passes), against once per pass of every prediction and imputation
    assert shared_calls == passes and len(calls) - shared_calls > 7 * passes


def test_the_mfn_and_an_oversized_split_are_encoded_per_subset(data, monkeypatch):
    ds = data["test"]
    assert prediction.split_features(_mfm(data), ds) is not None
    monkeypatch.setattr(prediction, "SPLIT_FEATURES_BYTES", 1000)
    assert prediction.split_features(_mfm(data), ds) is None
    monkeypatch.undo()
    gen = LinearGaussianMFM.random({"a": (6, 3), "b": (6, 2), "c": (6, 2)}, z_y_dim=2, seed=1)
    seq = gen.sample({"train": 16, "test": 8}, seed=0)
    assert prediction.split_features(_mfm(seq, "model.fusion='mfn'", "model.lstm_hidden=4"), seq["test"]) is None
