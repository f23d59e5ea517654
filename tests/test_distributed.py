"""Data-parallel SVI: `torchrun --nproc_per_node 2 -m pyro_mfm train` (gloo on CPU) ends where one process with the
same global batch ends.

The objective is made deterministic so that the two runs do the same arithmetic up to the order of sums: the
paper's WAE with deterministic codes and no MMD term (the MMD is a statistic of the whole minibatch, and the ELBO
draws its noise per rank). Modality dropout stays on: its draws are made for the global batch on every rank.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, load_data, save
from pyro_mfm.infer import fit
from pyro_mfm.infer.distributed import Dist, shard

CONFIG = """
[data]
source = "data.h5"
[model]
z_y_dim = 2
z_a_dim = 2
f_y_dim = 8
f_a_dim = 4
hidden = 16
objective = "wae"
lambda_mmd = 0.0
[train]
ensemble = 1
epochs = 2
kl_warmup = 0
batch_size = 16
modality_dropout = 0.25
valid_samples = 2
progress = false
num_threads = 1
device = "cpu"
"""


def test_shards_of_a_global_batch_are_disjoint_and_cover_it():
    idx = np.arange(100, 117)  # 17 samples on 3 ranks: 6, 6, 5
    parts = [shard(idx, Dist(rank=r, world=3)) for r in range(3)]
    assert [len(p) for p in parts] == [6, 6, 5]
    assert np.array_equal(np.concatenate(parts), idx)
    assert shard(idx, Dist()) is idx


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=0)
    save(gen.sample({"train": 90, "valid": 24}, missing=0.2, seed=0), tmp_path / "data.h5")  # last batch: 10
    (tmp_path / "ddp.toml").write_text(CONFIG)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "pyro_mfm",
            "train",
            str(tmp_path / "ddp.toml"),
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("best epoch") == 1  # only rank 0 prints
    config = Config.load(tmp_path / "ddp.toml")
    fit(config, load_data(config), tmp_path / "one")
    one = torch.load(tmp_path / "one" / "last.pt", weights_only=False)
    two = torch.load(tmp_path / "two" / "last.pt", weights_only=False)
    assert two["state"]["world_size"] == 2 and len(two["state"]["rng_ranks"]) == 2
    for k, v in one["model"].items():
        torch.testing.assert_close(two["model"][k], v, rtol=1e-5, atol=1e-6, msg=k)
    # the training loss is reduced over ranks: the mean over all training samples, as in one process
    assert [r["train_loss"] for r in two["state"]["history"]] == pytest.approx(
        [r["train_loss"] for r in one["state"]["history"]], rel=1e-6
    )
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
