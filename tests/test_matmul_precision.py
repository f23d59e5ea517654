"""``train.matmul_precision``: float32 matrix products' internal precision, set for training and evaluation and
restored afterwards (:func:`pyro_mfm.infer.device.compute`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config, ConfigError
from pyro_mfm.data import from_arrays
from pyro_mfm.infer.device import compute, matmul_precision
from pyro_mfm.infer.predict import predict
from pyro_mfm.infer.resume import RESUME_FREE
from pyro_mfm.infer.train import fit
from tests.test_hardening import TINY


def test_the_block_runs_at_the_precision_asked_and_the_callers_is_restored():
    assert torch.get_float32_matmul_precision() == "highest"
    with matmul_precision("medium"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == "highest"
    tc = Config().override(["train.matmul_precision='high'", "train.num_threads=2"]).train
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="inside"):  # restored on an error too
        with compute(tc):
            assert torch.get_float32_matmul_precision() == "high" and torch.get_num_threads() == 2
            raise RuntimeError("inside")
    assert torch.get_float32_matmul_precision() == "highest" and torch.get_num_threads() == threads
    with compute(tc, threads=1):  # an ensemble member's process: its own thread count, the configuration's precision
        assert torch.get_float32_matmul_precision() == "high" and torch.get_num_threads() == 1


def test_a_precision_torch_has_not_is_a_one_line_configuration_error():
    with pytest.raises(ConfigError, match=r"train\.matmul_precision.*'low'.*highest.*high.*medium"):
        Config().override(["train.matmul_precision='low'"])
    assert "train.matmul_precision" in RESUME_FREE  # how the products run, as train.device: a resumed run may change it


def test_training_runs_at_the_configured_precision_and_predictions_agree_with_float32():
    rng = np.random.default_rng(0)
    n = 80
    y = rng.normal(size=n)
    data = from_arrays({"a": y[:, None] + rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 4))}, y)
    seen = []
    config = Config().override(TINY + ["train.matmul_precision='medium'"])
    result = fit(config, data, on_epoch=lambda record: seen.append(torch.get_float32_matmul_precision()))
    assert seen == ["medium", "medium"]  # every epoch of training ran at it
    assert torch.get_float32_matmul_precision() == "highest"  # and the caller's setting came back
    ds = data["train"]  # from_arrays without a split: every sample in it
    exact = predict(result.mfm, ds, num_samples=20, seed=0, keep_samples=False)
    with matmul_precision("medium"):
        fast = predict(result.mfm, ds, num_samples=20, seed=0, keep_samples=False)
    # where the hardware uses bfloat16 inputs, each operand of a product is rounded to 8 significant bits (relative
    # error at most 2**-8); a prediction passes through about eight products (the experts' layers, the draws' factor,
    # G_y's and the label head's), so to first order it moves by less than 8 x 2**-8 of the values' scale
    scale = np.abs(exact.point).max() + 1
    assert np.abs(fast.point - exact.point).max() <= 8 * 2**-8 * scale
