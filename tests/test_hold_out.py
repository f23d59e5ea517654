"""A validation split held out of the training split where the data have none: whole groups, reproducible, kept
through the file formats, and what training selects and calibrates on."""

import math

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import DataError, from_arrays, load, save
from pyro_mfm.data.dataset import sample_groups
from pyro_mfm.data.importers.arrays import load_npz
from pyro_mfm.infer import fit
from pyro_mfm.report import best_epoch_line


def speakers_data(n=300, speakers=30, split=None, **kwargs):
    rng = np.random.default_rng(0)
    who = rng.integers(0, speakers, n)
    x = rng.normal(size=(n, 3)) + who[:, None] * 0.1
    return from_arrays(
        {"a": x, "b": x[:, :2] + rng.normal(size=(n, 2))},
        x.sum(1),
        groups=np.array([f"speaker{w}" for w in who]),
        split=split,
        **kwargs,
    )


def test_hold_out_takes_whole_groups_the_fraction_of_them_and_keeps_every_sample():
    data = speakers_data(split=np.where(np.arange(300) < 250, "train", "test"))
    held = data.hold_out(0.15, seed=3)
    train, valid, full = held["train"], held["valid"], data["train"]
    assert set(train.groups).isdisjoint(valid.groups)  # no speaker on both sides
    assert len(set(valid.groups)) == math.ceil(0.15 * len(set(full.groups)))  # 5 of the 30 speakers
    assert len(train) + len(valid) == len(full)
    assert sorted(np.concatenate([train.features["a"], valid.features["a"]]).sum(1)) == pytest.approx(
        sorted(np.asarray(full.features["a"]).sum(1))
    )
    assert held["test"] is data["test"] and valid.split == "valid"
    # the same seed draws the same speakers, another seed others
    assert list(data.hold_out(0.15, seed=3)["valid"].groups) == list(valid.groups)
    assert set(data.hold_out(0.15, seed=4)["valid"].groups) != set(valid.groups)


def test_hold_out_without_groups_is_stratified_by_class():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [200, 60, 40])  # unbalanced classes
    data = from_arrays({"a": rng.normal(size=(300, 2))}, y)
    for seed in range(3):
        valid = data.hold_out(0.2, seed=seed)["valid"]
        assert list(np.bincount(valid.labels)) == [40, 12, 8]  # each class's share, exactly
    # fewer samples to hold out than classes: still a split, not stratified
    tiny = from_arrays({"a": np.ones((12, 2))}, np.arange(12) % 10).hold_out(0.15)
    assert (len(tiny["train"]), len(tiny["valid"])) == (10, 2)


def test_hold_out_leaves_data_with_a_validation_split_or_fraction_zero_as_they_are():
    data = speakers_data(split=np.where(np.arange(300) < 200, "train", np.where(np.arange(300) < 250, "valid", "test")))
    assert data.hold_out(0.15) is data
    alone = speakers_data()
    assert alone.hold_out(0.0) is alone
    one = from_arrays({"a": np.ones((5, 2))}, np.zeros(5), groups=["x"] * 5)
    assert one.hold_out(0.15) is one  # a single group cannot be split


def test_groups_come_from_grouped_ids_else_each_sample_alone():
    ids = np.array(["vid1[0]", "vid1[1]", "vid2[0]", "vid3[4]"])
    ds = from_arrays({"a": np.ones((4, 2))}, np.zeros(4), ids=ids)["train"]
    assert list(sample_groups(ds)) == ["vid1", "vid1", "vid2", "vid3"]
    mmsa = np.array(["03bSnISJMiM$_$1", "03bSnISJMiM$_$12", "_dI--eQ6qVU$_$1", "a[b]$_$2"])  # MMSA's ids
    ds = from_arrays({"a": np.ones((4, 2))}, np.zeros(4), ids=mmsa)["train"]
    assert list(sample_groups(ds)) == ["03bSnISJMiM", "03bSnISJMiM", "_dI--eQ6qVU", "a[b]"]
    videos = np.repeat([f"vid{k}" for k in range(8)], 5)  # 8 videos of 5 segments, named as MMSA names them
    held = from_arrays({"a": np.ones((40, 2))}, np.zeros(40), ids=[f"{v}$_${i % 5}" for i, v in enumerate(videos)])
    held = held.hold_out(0.25, seed=0)
    train_videos, valid_videos = ({str(i).split("$_$")[0] for i in held[s].ids} for s in ("train", "valid"))
    assert len(held["valid"]) == 10 and not train_videos & valid_videos  # 2 whole videos of 8 held out
    plain = from_arrays({"a": np.ones((4, 2))}, np.zeros(4), ids=np.array(["a", "b[1]", "c", "d"]))["train"]
    assert list(sample_groups(plain)) == ["0", "1", "2", "3"]
    with pytest.raises(DataError, match=r"groups: shape \(3,\), expected \(4,\)"):
        from_arrays({"a": np.ones((4, 2))}, np.zeros(4), groups=["a", "b", "c"])


def test_groups_survive_the_native_file_and_npz(tmp_path):
    data = speakers_data()
    save(data, tmp_path / "d.h5")
    assert list(load(tmp_path / "d.h5")["train"].groups) == list(data["train"].groups)
    x = np.asarray(data["train"].features["a"])
    np.savez(tmp_path / "d.npz", a=x, label=x.sum(1), groups=data["train"].groups)
    assert list(load_npz(tmp_path / "d.npz")["train"].groups) == list(data["train"].groups)


def test_training_without_a_validation_split_selects_and_calibrates_on_the_held_out_groups(capsys):
    data = speakers_data(split=np.where(np.arange(300) < 250, "train", "test"))
    config = Config.from_dict(
        {
            "data": {"source": "speakers"},
            "model": {"hidden": 8, "z_y_dim": 2, "z_a_dim": 1},
            "train": {"epochs": 3, "kl_warmup": 0, "batch_size": 64, "seed": 1},
        }
    )
    result = fit(config, data)
    valid = data.hold_out(0.15, seed=1)["valid"]
    assert result.history[-1]["valid_n"] == len(valid)  # scored on the held-out speakers
    assert result.calibration  # and calibrated on them
    assert f"holding out {len(valid)} of the 250 training samples" in capsys.readouterr().out
    groups = len(set(valid.groups))
    assert result.held_out == {"samples": len(valid), "groups": groups, "fraction": 0.15}
    line = best_epoch_line(result)
    assert f"{len(valid)} training samples ({groups} whole groups; data.valid_fraction = 0.15)" in line
    # without groups, single samples are drawn, and the line says so
    plain = from_arrays({"a": np.asarray(data["train"].features["a"])}, np.asarray(data["train"].labels))
    single = fit(config, plain)
    assert single.held_out == {"samples": 38, "groups": 0, "fraction": 0.15}  # ceil(0.15 * 250)
    assert "38 training samples (single samples: the data name no groups" in best_epoch_line(single)
    # valid_fraction = 0: the whole training split, no validation score, no calibration
    whole = fit(config.override(["data.valid_fraction=0"]), data)
    assert not any(k.startswith("valid_") for k in whole.history[-1]) and not whole.calibration
    assert whole.held_out == {} and "held out" not in best_epoch_line(whole)


def test_csv_group_column_is_read_and_every_sample_needs_one(tmp_path, capsys):
    from pyro_mfm.cli import main

    def write(rows):
        (tmp_path / "a.csv").write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")

    write([["id", "label", "group", "f0"], ["u1", 0.5, "spk1", 1], ["u2", 1.5, "spk1", 2], ["u3", 2.5, "spk2", 3]])
    args = ["data", "convert", "--from", "csv", str(tmp_path / "a.csv"), "--out"]
    assert main(args + [str(tmp_path / "a.h5")]) == 0
    data = load(tmp_path / "a.h5")
    assert list(data["train"].groups) == ["spk1", "spk1", "spk2"]
    assert data.schema["a"].feature_names == ("f0",)  # the group column is not a feature
    capsys.readouterr()
    assert main(["data", "info", str(tmp_path / "a.h5")]) == 0
    assert "groups: 2 (speakers, videos, ...)" in capsys.readouterr().out
    write([["id", "label", "group", "f0"], ["u1", 0.5, "spk1", 1], ["u2", 1.5, "", 2]])
    capsys.readouterr()
    assert main(args + [str(tmp_path / "b.h5")]) == 2
    err = capsys.readouterr().err
    assert "column 'group': no group for ids 'u2'" in err and err.count("\n") == 1


def test_the_held_out_split_trains_exactly_as_the_same_split_given():
    """Training on data without a validation split is training on :meth:`hold_out`'s two splits given as such: the
    same selected epoch, the same weights, the same calibration (so every statistical test of training with a
    validation split, the oracle's in ``tests/test_train.py`` among them, holds for it)."""
    data = speakers_data(split=np.where(np.arange(300) < 250, "train", "test"))
    config = Config.from_dict(
        {
            "data": {"source": "speakers"},
            "model": {"hidden": 8, "z_y_dim": 2, "z_a_dim": 1},
            "train": {"epochs": 4, "kl_warmup": 1, "batch_size": 64, "seed": 2, "progress": False},
        }
    )
    held = fit(config, data)
    given = fit(config, data.hold_out(0.15, seed=2))
    assert held.best == given.best and held.calibration == given.calibration
    for name, value in held.mfm.state_dict().items():
        assert torch.equal(value, given.mfm.state_dict()[name]), name
