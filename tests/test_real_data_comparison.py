"""``inference/real_data_comparison.py`` end to end on the embedded UCI data, with tiny networks and one epoch: the
tables it prints and the JSON it writes, each seed's numbers included."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    path = ROOT / "inference" / "real_data_comparison.py"
    spec = importlib.util.spec_from_file_location("real_data_comparison", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_uci_comparison_prints_every_subset_and_records_each_seed(tmp_path, capsys):
    out = tmp_path / "comparison.json"
    small = ["train.epochs=1", "train.kl_warmup=0", "model.hidden=8", "train.calibrate='none'", "model.label_samples=0"]
    argv = ["--data", "uci", "--seeds", "0,1", "--num-samples", "2", "--out", str(out), "--plots", str(tmp_path)]
    _script().main(argv + [a for s in small for a in ("--set", s)])
    printed = capsys.readouterr().out
    assert printed.count("\n| ") >= 63 + 1  # a row per subset under the header
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["uci-accuracy-against-logistic-regression.png", "uci-nested-pairs.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in tmp_path.glob("*.png"))
    record = json.loads(out.read_text())["uci"]
    assert len(record["subsets"]) == 63 and len(record["nested"]) == 602
    for name, values in record["per_seed"].items():
        accuracy = values["accuracy"]
        assert len(accuracy) == 2 and all(0 <= a <= 1 for a in accuracy)
        # the summary's mean and standard deviation are those of the seeds' values
        assert record["mfm"][name]["accuracy"] == pytest.approx([np.mean(accuracy), np.std(accuracy)])
        # a paired standard error over 400 test samples of differences in [-1, 1] is at most 1 / sqrt(399)
        assert 0 <= record["paired_se"][name] <= 1 / np.sqrt(399)
        floor, p = record["calibrated_ece"][name]
        assert 0 < floor < 1 and 0 <= p <= 1


def _two_ratings(n=90, seed=0):
    """Audio and video vectors with two regression ratings, split 60 / 15 / 15 (as POM's modalities and labels)."""
    from pyro_mfm.data import from_arrays

    rng = np.random.default_rng(seed)
    audio, video = rng.normal(size=(n, 4)), rng.normal(size=(n, 3))
    y = np.stack([audio[:, 0] + rng.normal(size=n), video[:, 0] + rng.normal(size=n)], 1)
    split = np.array(["train"] * 60 + ["valid"] * 15 + ["test"] * 15)
    return from_arrays({"audio": audio, "video": video}, y, split=split)


def test_each_rating_becomes_a_task_of_its_own(tmp_path):
    """``one_rating`` keeps the features and splits and takes one rating as the label: its value, or 1 above the
    training split's median; ``compare_pom_ratings`` gives a row per rating, paired over the tasks."""
    from pyro_mfm.config import Config

    script, data = _script(), _two_ratings()
    ratings = {s: np.asarray(data[s].labels)[:, 1] for s in ("train", "valid", "test")}
    median = np.median(ratings["train"])
    binary, value = script.one_rating(data, 1, binary=True), script.one_rating(data, 1, binary=False)
    for s in ("train", "valid", "test"):
        assert np.array_equal(np.asarray(binary[s].labels), (ratings[s] > median).astype(int))
        np.testing.assert_array_equal(np.asarray(value[s].labels).ravel(), ratings[s])
        np.testing.assert_array_equal(np.asarray(binary[s].features["audio"]), np.asarray(data[s].features["audio"]))
    assert binary.schema.label.kind == "categorical" and value.schema.label.kind == "regression"
    config = Config.from_dict(
        {"data": {"source": str(tmp_path)}, "model": {"hidden": 8}, "train": {"epochs": 1, "kl_warmup": 0}}
    )
    text, record = script.compare_pom_ratings(data, config, [0], num_samples=2, binary=True)
    table = np.array(record["per_task"])
    assert table.shape == (2, 7) and ((0 <= table[:, :6]) & (table[:, :6] <= 1)).all()
    positive = (ratings["test"] > median).mean()
    assert table[1, 6] == pytest.approx(max(positive, 1 - positive))  # the majority class's share of the test split
    assert text.count("\n| ") == 2 + 1 and "better on" in text
    _, record = script.compare_pom_ratings(data, config, [0], num_samples=2, binary=False)
    ridge = script.ridge_baseline(value, ("audio",)).ravel()  # a single rating: one value per sample
    assert record["per_task"][1][4] == pytest.approx(np.abs(ridge - ratings["test"]).mean())


def test_the_ratings_above_their_medians_become_one_multilabel_target(tmp_path):
    """``multilabel`` takes every rating above its training median as one 0/1 label of a multilabel target;
    ``compare_pom_multilabel`` scores one MFM against a logistic regression per subset and label, whose accuracy is
    that of the per-label fits by hand."""
    from pyro_mfm.config import Config

    script, data = _script(), _two_ratings()
    task = script.multilabel(data)
    median = np.median(np.asarray(data["train"].labels), 0)
    assert task.schema.label.kind == "multilabel" and task.schema.label.dim == 2
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(np.asarray(task[s].labels), np.asarray(data[s].labels) > median)
    config = Config.from_dict(
        {"data": {"source": str(tmp_path)}, "model": {"hidden": 8}, "train": {"epochs": 1, "kl_warmup": 0}}
    )
    text, record = script.compare_pom_multilabel(data, config, [0, 1], num_samples=2)
    y = np.asarray(task["test"].labels)
    by_hand = np.stack([script.logistic_baseline(task, ("audio",), k)[:, 1] > 0.5 for k in range(2)], 1)
    assert record["logistic_regression"]["audio"]["accuracy"] == pytest.approx((by_hand == y).mean())
    for obs in ("audio + video", "audio", "video"):
        assert 0 <= record["mfm"][obs]["accuracy"][0] <= 1 and len(record["per_seed"][obs]["accuracy"]) == 2
        assert 0 <= record["mfm"][obs]["ece"][0] <= 1
    assert text.count("\n| ") == 1 + 3 and len(record["nested"]) == 2  # the header and a row per subset
    label, metrics, _ = script.baseline_values(record)  # the plot's points: the regressions' accuracy per subset
    assert label == "logistic regression"
    assert metrics == {"accuracy": {o: record["logistic_regression"][o]["accuracy"] for o in record["mfm"]}}
    paths = script.write_plots("pom-multilabel", record, tmp_path / "plots")
    assert [p.name for p in paths] == [
        "pom-multilabel-accuracy-against-logistic-regression.png",
        "pom-multilabel-nested-pairs.png",
    ]


def test_a_smaller_training_split_keeps_the_validation_and_test_samples():
    """``fewer_training`` keeps N training samples (distinct, the same on every call) with their features, steps and
    labels, and every validation and test sample; a size outside 1 to the training split's is an error."""
    script, data = _script(), _two_ratings()
    small = script.fewer_training(data, 20)
    again = script.fewer_training(data, 20)["train"].features["audio"]
    assert len(small["train"]) == 20 and np.array_equal(np.asarray(again), np.asarray(small["train"].features["audio"]))
    train_x = np.asarray(data["train"].features["audio"])
    rows = [int(np.flatnonzero((train_x == x).all(1))[0]) for x in np.asarray(small["train"].features["audio"])]
    assert len(set(rows)) == 20
    np.testing.assert_array_equal(np.asarray(small["train"].labels), np.asarray(data["train"].labels)[rows])
    for s in ("valid", "test"):
        for m in ("audio", "video"):
            np.testing.assert_array_equal(np.asarray(small[s].features[m]), np.asarray(data[s].features[m]))
        np.testing.assert_array_equal(np.asarray(small[s].labels), np.asarray(data[s].labels))
    for size in (0, 61):
        with pytest.raises(SystemExit, match="--train-size"):
            script.fewer_training(data, size)


def test_the_tasks_keep_which_modality_each_sample_lacks():
    """``one_rating`` and ``fewer_training`` keep the presence masks: a sample without video stays without it (POM
    lacks video for about half its videos), not a sample with zero features."""
    from pyro_mfm.data import from_arrays

    script, full = _script(), _two_ratings()
    lacks = np.arange(90) % 3 == 0
    joined = script.joined(full)
    data = from_arrays(
        joined["features"],
        joined["labels"],
        present={"video": ~lacks},
        split=np.array(["train"] * 60 + ["valid"] * 15 + ["test"] * 15),
    )
    for task in (script.one_rating(data, 1, binary=True), script.fewer_training(data, 60)):
        for s, rows in (("train", slice(0, 60)), ("valid", slice(60, 75)), ("test", slice(75, 90))):
            np.testing.assert_array_equal(np.asarray(task[s].present["video"]), ~lacks[rows])
            assert np.asarray(task[s].present["audio"]).all()


def test_no_valid_moves_the_validation_samples_into_the_training_split():
    """``--no-valid``: the MFM's data hold the training and validation samples as one training split, with their
    features, masks and labels, and no validation split; the test split stays as it is."""
    from pyro_mfm.data import from_arrays

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=40)
    split = np.array(["train"] * 25 + ["valid"] * 5 + ["test"] * 10)
    present = {"a": rng.random(40) > 0.2}
    data = from_arrays({"a": x}, y, split=split, present=present)
    merged = _script().without_validation(data)
    assert list(merged.splits) == ["train", "test"] and len(merged["train"]) == 30
    np.testing.assert_allclose(np.asarray(merged["train"].labels)[:, 0], y[:30], rtol=1e-6)
    assert list(merged["train"].present["a"]) == list(present["a"][:30])
    np.testing.assert_array_equal(np.asarray(merged["test"].features["a"]), np.asarray(data["test"].features["a"]))


def test_pom_comparison_with_the_mlp_baseline_adds_its_columns_for_every_subset(tmp_path):
    """``split_arrays`` gives the training and test samples' features and labels as they are in the data, in that
    order; ``compare_pom(mlp=...)`` adds a plain MLP's two columns to each subset's row and its values to the record,
    the same as :func:`mlp_baseline` gives on those arrays."""
    from pyro_mfm.config import Config

    script, data = _script(), _two_ratings()
    features, labels, split = script.split_arrays(data)
    assert list(split) == ["train"] * 60 + ["test"] * 15
    np.testing.assert_array_equal(features["video"][60:], np.asarray(data["test"].features["video"]))
    np.testing.assert_array_equal(labels[:60], np.asarray(data["train"].labels))
    config = Config.from_dict(
        {"data": {"source": str(tmp_path)}, "model": {"hidden": 8}, "train": {"epochs": 1, "kl_warmup": 0}}
    )
    small = {"alphas": (1e-4, 1.0), "hidden": (8,), "max_iter": 30}
    text, record = script.compare_pom(data, config, [0], 2, "two ratings", mlp=small)
    assert "| MLP MAE |" in text and text.count("\n| ") == 1 + 3
    assert set(record["mlp"]) == {"audio + video", "audio", "video"}
    plain, chosen, alpha = script.mlp_baseline(features, labels, split, ("audio",), [0], **small)
    assert record["mlp"]["audio"] == pytest.approx({"plain": plain, "chosen": chosen, "alpha": alpha})
    assert alpha in small["alphas"] and 0 < plain < 3


def test_pom_comparison_scores_each_form_of_expert_alone_on_the_validation_and_the_test_split(tmp_path):
    """``compare_pom(forms=True)``: a table of the default ensemble's two forms per subset, and each seed's
    :func:`pyro_mfm.analysis.form_scores` on the data's validation split and the test split in the record."""
    from pyro_mfm.config import Config

    script, data = _script(), _two_ratings()
    config = Config.from_dict(
        {
            "data": {"source": str(tmp_path)},
            "model": {"hidden": 8},
            "train": {"epochs": 1, "kl_warmup": 0, "ensemble": 2, "ensemble_processes": 1},
        }
    )
    text, record = script.compare_pom(data, config, [0, 1], 2, "two ratings", forms=True)
    assert "| validation split, MLP / linear |" in text and text.count("\n| ") == 2 * (1 + 3)
    assert set(record["forms"]) == {"audio + video", "audio", "video"}
    for seeds in record["forms"].values():
        assert len(seeds) == 2
        for row in seeds:
            assert row["held_out"]["n"] == 15 and row["test"]["n"] == 15  # the data's own validation split
            assert 0 < row["linear_weight"] < 1
            for split in ("held_out", "test"):
                assert row[split]["difference"] == pytest.approx(row[split]["mlp"] - row[split]["linear"], abs=1e-6)


def test_pom_comparison_splits_a_subset_by_whether_the_samples_observe_it(tmp_path):
    """Where some test samples lack every modality of a subset (video here), ``compare_pom`` scores the MFM and the
    ridge on the samples that observe it and on those that do not (the MFM's prior predictive) apart."""
    from pyro_mfm.config import Config
    from pyro_mfm.data import from_arrays

    script, full = _script(), _two_ratings()
    features = {
        m: np.asarray(np.concatenate([full[s].features[m] for s in ("train", "valid", "test")]))
        for m in full.schema.names
    }
    labels = np.concatenate([np.asarray(full[s].labels) for s in ("train", "valid", "test")])
    split = np.array(["train"] * 60 + ["valid"] * 15 + ["test"] * 15)
    has_video = np.arange(90) % 3 != 0  # 5 of the 15 test samples lack video
    data = from_arrays(features, labels, split=split, present={"video": has_video})
    config = Config.from_dict(
        {
            "data": {"source": str(tmp_path)},
            "model": {"hidden": 8},
            "train": {"epochs": 1, "kl_warmup": 0, "ensemble": 1},
        }
    )
    text, record = script.compare_pom(data, config, [0], 2, "two ratings")
    split_by = record["observed_or_not"]
    assert set(split_by) == {"video"} and split_by["video"]["n"] == [10, 5]  # audio and audio + video: every sample
    assert "- video, on the 10 test samples that observe some of it / the 5 that observe none of it" in text
    # the two groups' MAEs make up the subset's MAE over all 15
    whole = record["mfm"]["video"]["mae"][0]
    assert whole == pytest.approx((10 * split_by["video"]["mfm"][0] + 5 * split_by["video"]["mfm"][1]) / 15, rel=1e-5)
    assert record["ridge"]["video"]["mae"] == pytest.approx(
        (10 * split_by["video"]["ridge"][0] + 5 * split_by["video"]["ridge"][1]) / 15, rel=1e-5
    )
    assert all(0 <= c <= 1 for c in split_by["video"]["coverage"])


def test_plots_of_pom_draw_mae_and_correlation_and_none_for_the_tasks(tmp_path):
    """POM's record holds the ridge's MAE, MSE and correlation per subset: both metrics are drawn against it; the
    one-rating-at-a-time comparisons record tasks, not subsets, and draw nothing."""
    subsets = ["audio + video", "audio", "video"]
    entry = {
        "mfm": {s: {"mae": [0.92, 0.004], "corr": [0.3, 0.01], "coverage": [0.88, 0.003]} for s in subsets},
        "ridge": {s: {"mae": 0.95, "mse": 1.4, "corr": 0.2} for s in subsets},
        "nested": [
            {"smaller": ["audio"], "larger": ["audio", "video"], "gain": 0.004, "se": 0.005, "worse": False},
            {"smaller": ["video"], "larger": ["audio", "video"], "gain": -0.02, "se": 0.01, "worse": True},
        ],
    }
    written = _script().write_plots("pom-vectors", entry, tmp_path)
    assert [p.name for p in written] == [
        "pom-vectors-mae-against-ridge.png",
        "pom-vectors-corr-against-ridge.png",
        "pom-vectors-nested-pairs.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    tasks = {"metric": "mae", "columns": subsets, "per_task": [[0.9, 0.95, 0.97]]}
    assert _script().write_plots("pom-one-rating", tasks, tmp_path / "tasks") == []
    assert not (tmp_path / "tasks").exists()


def test_hidden_views_are_missing_at_random_in_every_split_and_keep_one_view():
    """``--hide``: each view of each sample is hidden with the given probability, in every split, drawn once (the
    same data on every call), every sample keeping at least one view; the features of a hidden view are zeroed."""
    from pyro_mfm.data import load_embedded

    script = _script()
    data = load_embedded()
    hidden, again = script.hidden_at_random(data, 0.3), script.hidden_at_random(data, 0.3)
    names = data.schema.names
    for split, ds in hidden.splits.items():
        present = np.stack([np.asarray(ds.present[m]) for m in names], 1)
        assert present.any(1).all()
        n = present.size
        # hidden with probability 0.3, less the few a sample keeps: within four binomial standard errors of 0.3
        assert abs((1 - present.mean()) - 0.3) < 4 * np.sqrt(0.3 * 0.7 / n) + 0.3**6, split
        assert np.array_equal(present, np.stack([np.asarray(again[split].present[m]) for m in names], 1))
        for i, m in enumerate(names):
            assert not np.asarray(ds.features[m])[~present[:, i]].any()
    with pytest.raises(SystemExit) as e:  # POM's own missingness is the data's
        script.main(["--data", "uci,pom-vectors", "--hide", "0.3"])
    assert e.value.code == 2
