"""``inference/speaker_testbed.py``: the data it draws (speakers whole in one split, an identity constant over a
speaker's segments in audio and video only) and the table and JSON it writes, with tiny networks and one epoch."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    sys.path.insert(0, str(ROOT / "inference"))
    path = ROOT / "inference" / "speaker_testbed.py"
    spec = importlib.util.spec_from_file_location("speaker_testbed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speakers_are_whole_in_one_split_and_their_identity_is_constant_over_their_segments():
    testbed = _script()
    features, y, split, speakers = testbed.speaker_data(seed=3, identity=1.5)
    plain, y0, split0, speakers0 = testbed.speaker_data(seed=3, identity=0.0)
    assert {m: x.shape[1] for m, x in features.items()} == {"text": 100, "audio": 73, "video": 100}
    assert len(y) == len(split) == len(speakers) and np.abs(y).max() <= 3
    assert set(speakers[split == "train"]).isdisjoint(speakers[split == "test"])
    assert len(set(speakers[split == "train"])) == 62 and len(set(speakers[split == "test"])) == 31
    # the same draws but for the identity: text unchanged, audio and video shifted by one vector per speaker
    assert np.array_equal(y, y0) and np.array_equal(speakers, speakers0)
    assert np.array_equal(features["text"], plain["text"])
    for m in ("audio", "video"):
        shift = features[m] - plain[m]
        for g in np.unique(speakers)[:5]:
            rows = shift[speakers == g]
            assert np.allclose(rows, rows[0], atol=1e-4) and np.abs(rows[0]).max() > 0.1


def test_testbed_prints_every_subset_against_the_ridge_and_records_each_seed(tmp_path, capsys):
    out = tmp_path / "testbed.json"
    small = ["train.epochs=1", "train.kl_warmup=0", "model.hidden=8", "train.calibrate='none'"]
    _script().main(
        ["--seeds", "0,1", "--num-samples", "2", "--groups", "--forms", "--out", str(out), "--plots", str(tmp_path)]
        + [a for s in small for a in ("--set", s)]
    )
    printed = capsys.readouterr().out
    # the testbed's ridge records its MAE alone: the MFM against it per subset, and the nested pairs
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "testbed-mae-against-ridge.png",
        "testbed-nested-pairs.png",
    ]
    # the header and a row per subset, in the comparison and in the table of the forms (--forms)
    assert "held out by speaker" in printed and printed.count("\n| ") == 2 * (1 + 7)
    record = json.loads(out.read_text())
    assert record["groups"] and len(record["ridge"]) == 7 and len(record["nested"]) == 12
    # the ridge reads the sentiment from text: far below the spread of the scores; the weak modalities less so
    assert record["ridge"]["text"] < 0.7 < record["ridge"]["audio"]
    for name, values in record["per_seed"].items():
        assert len(values["mae"]) == 2
        assert record["mfm"][name]["mae"] == pytest.approx([np.mean(values["mae"]), np.std(values["mae"])])
    # --forms: the default ensemble's two forms scored alone on both splits; uncalibrated, the mixture weighs its
    # four members equally, so the linear form's two hold half the weight on every subset
    assert len(record["forms"]) == 7
    for seeds in record["forms"].values():
        assert len(seeds) == 2
        for row in seeds:
            assert row["linear_weight"] == pytest.approx(0.5)
            for split in ("held_out", "test"):
                assert 0 < row[split]["mlp"] < 5 and 0 < row[split]["linear"] < 5
                # the paired difference of the forms' scores (minus the absolute errors) is their MAEs' difference
                assert row[split]["difference"] == pytest.approx(row[split]["mlp"] - row[split]["linear"], abs=1e-6)


def test_mlp_baseline_reads_the_sentiment_from_text_and_picks_its_penalty_on_its_own_held_out_split():
    testbed = _script()
    features, y, split, _ = testbed.speaker_data(seed=0, identity=1.5)
    small = {"hidden": (16,), "max_iter": 60}
    text = testbed.mlp_baseline(features, y, split, ("text",), [0], alphas=(1e-4, 1e5), **small)
    audio = testbed.mlp_baseline(features, y, split, ("audio",), [0], alphas=(1e-4,), **small)
    # text carries the score strongly and audio weakly; a penalty of 1e5 flattens the network to a constant, which
    # its held-out split scores below the unpenalised fit, so the default penalty is the one chosen
    assert text[0] < 0.8 < audio[0]
    assert text[2] == 1e-4 and text[1] == text[0]
    # the table gains the two MLP columns and the record their values
    table, record = testbed.compare(
        [0],
        ["train.epochs=1", "train.kl_warmup=0", "model.hidden=8", "train.calibrate='none'"],
        1.5,
        False,
        num_samples=2,
        mlp={"alphas": (1e-4,), **small},
    )
    assert "| MLP MAE |" in table and len(record["mlp"]) == 7
    assert record["mlp"]["text"]["plain"] == pytest.approx(text[0])


def test_the_models_can_be_given_some_modalities_alone(tmp_path, capsys):
    """``--modalities audio``: the MFM and the ridge see audio alone (one subset, no nested pairs); the data are
    drawn as with all three, so the ridge's audio MAE is the full run's; an unknown modality is a usage error."""
    testbed = _script()
    out = tmp_path / "audio.json"
    small = ["train.epochs=1", "train.kl_warmup=0", "model.hidden=8", "train.calibrate='none'"]
    testbed.main(
        ["--seeds", "0", "--num-samples", "2", "--modalities", "audio", "--out", str(out)]
        + [a for s in small for a in ("--set", s)]
    )
    record = json.loads(out.read_text())
    assert record["modalities"] == ["audio"] and list(record["ridge"]) == ["audio"] and record["nested"] == []
    features, y, split, _ = testbed.speaker_data(0, 1.5)
    ridge = testbed.ridge_cv(features, y, split, ("audio",))
    assert record["ridge"]["audio"] == pytest.approx(float(np.abs(ridge - y[split == "test"]).mean()))
    with pytest.raises(SystemExit):
        testbed.main(["--modalities", "smell"])
    assert "expected some of ['text', 'audio', 'video']" in capsys.readouterr().err
