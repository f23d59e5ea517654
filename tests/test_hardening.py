"""Hardening: no silent wrong result and no lost run. Integer labels give a classifier; bad arrays, run folders,
resumes, damaged checkpoints and imputed files end in one clear error; evaluation is reproducible."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from pyro_mfm.cli import main
from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, from_arrays, load, save
from pyro_mfm.data.schema import DataError
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.infer import CheckpointError, fit, impute, predict
from pyro_mfm.infer.checkpoint import (
    epoch_checkpoints,
    folder_lock,
    load_model,
    payload_digest,
    read_checkpoint,
    read_resume,
)
from pyro_mfm.infer.objective import Objective
from pyro_mfm.model import MFM

TINY = [
    "train.progress=False",
    "train.ensemble=1",
    "model.z_y_dim=2",
    "model.z_a_dim=2",
    "model.hidden=8",
    "model.f_y_dim=4",
    "model.f_a_dim=4",
    "train.epochs=2",
    "train.kl_warmup=1",
    "train.batch_size=16",
    "train.valid_samples=2",
    "train.num_threads=1",
    "train.device='cpu'",
    "evaluate.num_samples=3",
    "train.calibrate='none'",
]


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
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"split": np.array(["train"] * 29)}, r"split: array of shape \(29,\), expected \(30,\)"),
        (
            {"split": {"train": np.arange(20), "valid": np.arange(15, 30)}},
            r"split 'valid': 5 sample\(s\) also in split 'train', first sample 15; expected disjoint splits",
        ),
        ({"split": {"train": np.array([0, 1, 1])}}, r"split 'train': sample 1 listed 2 times"),
        (
            {"split": {"train": np.arange(31)}},
            r"split 'train': sample index 30 out of range; expected indices in \[0, 29\]",
        ),
        ({"split": {"train": np.ones(30, bool)}}, r"split 'train': index array of dtype bool"),
        ({"present": {"video": np.ones(30, bool)}}, r"present: masks for unknown modalities \['video'\]"),
        ({"present": {"a": np.ones(29, bool)}}, r"present mask of modality 'a': shape \(29,\), expected \(30,\)"),
        ({"steps": {"a": np.ones((30, 3), bool)}}, r"steps: mask for modality 'a'.* not a sequence"),
        ({"label_present": np.ones(31, bool)}, r"label_present mask of labels: shape \(31,\), expected \(30,\)"),
        ({"ids": np.arange(29).astype(str)}, r"ids: shape \(29,\), expected \(30,\)"),
    ],
)
def test_from_arrays_rejects_inconsistent_arrays(kwargs, message):
    with pytest.raises(DataError, match=message):
        from_arrays(arrays(), np.zeros(30), **kwargs)


@pytest.mark.parametrize(
    "labels, kind, dim",
    [(np.zeros(0), "regression", 1), (np.zeros((0, 2)), "regression", 2), (np.zeros(0, int), "categorical", 1)],
)
def test_from_arrays_with_no_sample_keeps_the_label_shape(labels, kind, dim):
    data = from_arrays({"a": np.zeros((0, 3))}, labels)
    assert (data.schema.label.kind, data.schema.label.dim, len(data["train"])) == (kind, dim, 0)


def test_from_arrays_mapping_may_leave_samples_out():
    data = from_arrays(arrays(), np.zeros(30), split={"train": np.array([5, 1, 3]), "test": np.array([0])})
    assert len(data["train"]) == 3 and len(data["test"]) == 1


# ------------------------------------------------------------------------------------------- run folders (CLI)
CONFIG = """
[data]
source = "data.h5"
[model]
z_y_dim = 2
z_a_dim = 2
f_y_dim = 4
f_a_dim = 4
hidden = 8
[train]
ensemble = 1
epochs = 2
kl_warmup = 1
batch_size = 16
valid_samples = 2
progress = false
num_threads = 1
device = "cpu"
calibrate = "none"
keep_last = 2
[evaluate]
num_samples = 3
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A small native file, a tiny configuration, and one trained run folder (``trained``; copy it to change it)."""
    root = tmp_path_factory.mktemp("hardening")
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=0)
    save(gen.sample({"train": 48, "valid": 16, "test": 16}, missing=0.2, seed=0), root / "data.h5")
    (root / "tiny.toml").write_text(CONFIG)
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "trained")]) == 0
    return root


def copy_run(project, tmp_path, name="run"):
    shutil.copytree(project / "trained", tmp_path / name)
    return tmp_path / name


def snapshot(folder):
    """Every file under ``folder`` (TensorBoard's events included) and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train(project, out, *extra):
    return main(["train", str(project / "tiny.toml"), "--out", str(out), *extra])


def test_train_refuses_a_non_empty_run_folder_unless_overwrite(project, tmp_path, capsys):
    run = copy_run(project, tmp_path)
    before = snapshot(run)
    capsys.readouterr()
    assert train(project, run, "--set", "train.seed=5") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"run folder {run} is not empty" in err and "--overwrite" in err
    assert snapshot(run) == before  # nothing touched
    (run / "notes.txt").write_text("mine")
    assert train(project, run, "--overwrite") == 2
    assert "notes.txt" in capsys.readouterr().err and (run / "notes.txt").exists()
    (run / "notes.txt").unlink()
    (run / "epoch-0009.pt").write_bytes(b"an old run's epoch")
    assert train(project, run, "--overwrite", "--set", "train.epochs=1") == 0
    assert not (run / "epoch-0009.pt").exists()  # the old run is gone, not mixed in
    assert [p.name for p in epoch_checkpoints(run)] == ["epoch-0001.pt"]
    assert train(project, run, "--resume", "--overwrite") == 2


def test_a_second_training_into_a_locked_folder_is_refused(project, tmp_path, capsys):
    run = copy_run(project, tmp_path)
    with folder_lock(run):  # another training holds it
        capsys.readouterr()
        assert train(project, run, "--resume", "--set", "train.epochs=3") == 2
        err = capsys.readouterr().err
        assert f"run folder {run} is in use by another process" in err and err.count("\n") == 1
        with pytest.raises(CheckpointError, match="in use by another process"):
            fit(Config.load(project / "tiny.toml"), None, run, resume=True)
    assert train(project, run, "--resume", "--set", "train.epochs=3") == 0  # released


def test_two_real_trainings_into_one_folder(project, tmp_path, capsys):
    """A second `pyro-mfm train` into the folder a running one writes to stops at once with one line."""
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "pyro_mfm",
        "train",
        str(project / "tiny.toml"),
        "--out",
        str(run),
        "--set",
        "train.epochs=1000",
    ]
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.poll() is None, first.communicate()
        capsys.readouterr()
        assert train(project, run, "--resume", "--set", "train.epochs=1000") == 2
        assert "is in use by another process" in capsys.readouterr().err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM


def test_resume_refuses_a_changed_configuration_unless_allowed(project, tmp_path, capsys):
    run = copy_run(project, tmp_path)
    config_before = (run / "config.json").read_text()
    capsys.readouterr()
    assert train(project, run, "--resume", "--set", "train.lr=0.01", "--set", "train.batch_size=8") == 2
    err = capsys.readouterr().err
    assert "train.lr 0.001 -> 0.01" in err and "train.batch_size 16 -> 8" in err and "--allow-config-change" in err
    assert (run / "config.json").read_text() == config_before
    # a longer run is no change of result: allowed, and it says where it resumed
    assert train(project, run, "--resume", "--set", "train.epochs=3") == 0
    assert f"resumed from {run / 'last.pt'} at epoch 3, step 0" in capsys.readouterr().err
    assert (
        train(project, run, "--resume", "--set", "train.epochs=4", "--set", "train.lr=0.01", "--allow-config-change")
        == 0
    )
    assert "configuration changed: train.epochs 3 -> 4; train.lr 0.001 -> 0.01" in capsys.readouterr().err
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    events = [r for r in log if r.get("event") == "resume"]
    assert events == [
        {
            "event": "resume",
            "from": str(run / "last.pt"),
            "at_epoch": 3,
            "at_step": 0,
            "changed": {"train.lr": [0.001, 0.01]},
        }
    ]
    assert [r["epoch"] for r in log if "event" not in r] == [0, 1, 2, 3] and log[3] == events[0]
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.01


# ------------------------------------------------------------------------------------------------ pyro-mfm run
def test_run_stops_on_a_signal_in_training_without_a_report(project, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = Objective.__call__

    def call(self, batch, **kwargs):
        if self.mfm.training:
            calls["n"] += 1
            if calls["n"] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(Objective, "__call__", call)
    out = tmp_path / "report"
    assert main(["run", str(project / "tiny.toml"), "--out", str(out), "--quiet"]) == 130
    assert "stopped by SIGINT; no report written" in capsys.readouterr().err
    assert (out / "checkpoint" / "last.pt").exists()
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()


def test_run_stops_on_a_signal_in_evaluation_without_a_report(project, tmp_path, monkeypatch, capsys):
    from pyro_mfm.infer import job

    original = job.evaluate

    def evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(job, "evaluate", evaluate)
    out = tmp_path / "report"
    assert main(["run", str(project / "tiny.toml"), "--out", str(out), "--quiet", "--set", "train.epochs=1"]) == 143
    assert "stopped by SIGTERM" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and not (out / "report.md").exists()
    assert main(["run", str(project / "tiny.toml"), "--out", str(out), "--quiet"]) == 2  # not empty: --resume
    before = (out / "checkpoint" / "last.pt").read_bytes()
    assert (
        main(
            [
                "run",
                str(project / "tiny.toml"),
                "--out",
                str(out),
                "--quiet",
                "--overwrite",
                "--set",
                "train.seed=4",
                "--set",
                "train.epochs=1",
            ]
        )
        == 143
    )
    assert (out / "checkpoint" / "last.pt").read_bytes() != before  # replaced by the new run


# ------------------------------------------------------------------------------------------------ reproducible
def test_evaluation_prediction_and_imputation_are_seeded(project, tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for out, extra in ((a, []), (b, []), (c, ["--seed", "7"])):
        assert main(["evaluate", str(project / "trained"), "--out", str(out), "--quiet", *extra]) == 0
    assert a.read_text() == b.read_text()  # two evaluations of one checkpoint: the same numbers
    assert (
        json.loads(c.read_text())["seed"] == 7
        and json.loads(c.read_text())["subsets"] != json.loads(a.read_text())["subsets"]
    )
    mfm, _, _ = load_model(project / "trained")
    test = load(project / "data.h5")["test"]
    torch.manual_seed(123)
    state = torch.get_rng_state()
    p1, p2 = (predict(mfm, test, ["a"], num_samples=4, seed=0) for _ in range(2))
    np.testing.assert_array_equal(p1.samples, p2.samples)
    i1, i2 = (impute(mfm, test, ["a"], num_samples=4, seed=0) for _ in range(2))
    np.testing.assert_array_equal(i1.std["b"], i2.std["b"])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is left alone


# ------------------------------------------------------------------------------------------------------ best.pt
def test_a_training_within_the_kl_warmup_writes_best_pt(project, tmp_path):
    config = Config.load(project / "tiny.toml", ["train.epochs=1", "train.kl_warmup=5"])
    with pytest.warns(RuntimeWarning, match=r"within the KL warm-up .*the best model is the last epoch"):
        result = fit(config, load(project / "data.h5"), tmp_path / "run")
    assert (tmp_path / "run" / "best.pt").exists() and result.best["epoch"] == 0
    (tmp_path / "run" / "best.pt").unlink()
    with pytest.warns(RuntimeWarning, match="has no best.pt .*using last.pt"):
        load_model(tmp_path / "run")  # a folder without best.pt: the fallback is said
    with pytest.warns(RuntimeWarning, match="within the KL warm-up"):
        assert fit(config, load(project / "data.h5")).best["epoch"] == 0  # in memory as well


# ---------------------------------------------------------------------------------------------- imputed files
def test_an_imputed_file_records_what_was_imputed_and_is_not_evaluated_against(project, tmp_path, capsys):
    out = tmp_path / "imputed.h5"
    assert main(["impute", str(project / "trained"), "--observed", "a", "--out", str(out)]) == 0
    data = load(out)
    ds = data["test"]
    truth = load(project / "data.h5")["test"]
    assert data.imputation["observed"] == ["a"] and data.imputation["imputed"] == ["b"]
    assert data.imputation["checkpoint"] == str(project / "trained" / "best.pt")
    assert data.imputation["checkpoint_sha256"] == read_checkpoint(project / "trained" / "best.pt")["checksum"]
    assert data.imputation["source"] == str(project / "data.h5") and data.imputation["seed"] == 0
    assert ds.imputed["b"].all() and not ds.imputed["a"].any()
    assert (ds.imputed_std["b"] > 0).all() and (ds.imputed_std["a"] == 0).all()
    np.testing.assert_array_equal(ds.present["a"], truth.present["a"])
    capsys.readouterr()
    assert main(["data", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "imputed: b from a" in info and "b 100.0% imputed, mean posterior sd" in info and "best.pt" in info
    assert main(["evaluate", str(project / "trained"), "--data", str(out), "--out", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err
    assert "modalities ['b'] hold values imputed from ['a']" in err and err.count("\n") == 1
    assert not (tmp_path / "e.json").exists()


# ------------------------------------------------------------------------------------------------- checksums
def test_a_bit_flip_inside_the_weights_is_found_and_resume_falls_back(project, tmp_path):
    run = copy_run(project, tmp_path)
    last = run / "last.pt"
    raw = bytearray(last.read_bytes())
    payload = read_checkpoint(last)
    weight = next(v for k, v in payload["model"].items() if v.dtype == torch.float32 and v.numel() >= 8)
    at = bytes(raw).find(weight.numpy().tobytes())
    assert at > 0
    raw[at + 5] ^= 0x10  # one flipped bit: torch still loads the file
    last.write_bytes(bytes(raw))
    torch.load(last, weights_only=False)
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt: its content does not match its checksum"):
        read_checkpoint(last)
    with pytest.warns(RuntimeWarning, match=r"resuming from .*epoch-0002\.pt: checkpoint .*last\.pt is corrupt"):
        payload = read_resume(run)
    assert payload["state"]["epoch"] == 1
    assert payload_digest(payload) == payload["checksum"]
