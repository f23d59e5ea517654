"""The researcher's workflow on the command line: predict, chosen subsets, --version, progress without a terminal,
own NPZ/CSV data, several seeds, TensorBoard logs and an Optuna search, each on a small native file."""

import csv
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest

from pyro_mfm import __version__
from pyro_mfm.cli import main
from pyro_mfm.data import LinearGaussianMFM, save
from tests.test_cli_model import CONFIG


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=0)
    save(gen.sample({"train": 80, "valid": 30, "test": 30}, missing=0.2, seed=0), root / "data.h5")
    reg = LinearGaussianMFM.random({"a": 3, "b": 2}, z_y_dim=2, label="regression", seed=1)
    save(reg.sample({"train": 80, "valid": 30, "test": 30}, missing=0.2, seed=1), root / "reg.h5")
    (root / "tiny.toml").write_text(CONFIG.format(data="data.h5"))
    (root / "reg.toml").write_text(CONFIG.format(data="reg.h5"))
    assert main(["train", str(root / "tiny.toml"), "--out", str(root / "run")]) == 0
    return root


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"pyro-mfm {__version__}"


def test_predict_csv_is_seeded_and_complete(project, capsys):
    out, again = project / "preds.csv", project / "preds2.csv"
    args = ["predict", str(project / "run"), "--data", str(project / "data.h5"), "--observed", "a", "--seed", "4"]
    assert main(args + ["--out", str(out)]) == 0
    assert main(args + ["--out", str(again)]) == 0
    assert out.read_text() == again.read_text()  # reproducible
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 30
    assert list(rows[0]) == ["id", "predicted", "prob_0", "prob_1", "prob_2", "true", "log_density"]
    for r in rows:
        assert abs(sum(float(r[f"prob_{k}"]) for k in range(3)) - 1) < 1e-4
        assert (r["log_density"] == "") == (r["true"] == "")
    assert any(r["log_density"] for r in rows) and float(rows[0]["log_density"] or -1) <= 0
    # never overwrite silently; an unknown modality or extension is one line and status 2
    assert main(args + ["--out", str(out)]) == 2 and "already exists" in capsys.readouterr().err
    assert main(args[:-4] + ["--observed", "zz", "--out", str(project / "x.csv")]) == 2
    assert "unknown modalities ['zz']" in capsys.readouterr().err
    assert (
        main(args + ["--out", str(project / "x.txt")]) == 2 and "expected one of .csv, .h5" in capsys.readouterr().err
    )


def test_predict_regression_interval_h5(project):
    assert main(["train", str(project / "reg.toml"), "--out", str(project / "reg_run")]) == 0
    out = project / "reg.h5.preds.h5"
    assert main(["predict", str(project / "reg_run"), "--split", "valid", "--out", str(out)]) == 0
    with h5py.File(out) as f:
        assert f.attrs["kind"] in ("normal", "laplace") and f.attrs["split"] == "valid"
        assert json.loads(f.attrs["observed"]) == ["a", "b"]
        lo, mean, hi = f["lower"][()], f["mean"][()], f["upper"][()]
        assert lo.shape == mean.shape == hi.shape == (30, 1) and np.all(lo <= hi)
        assert len(f["ids"]) == 30 and np.isfinite(f["log_density"][()][f["label_present"][()]]).all()
    csv_out = project / "reg.csv"
    assert main(["predict", str(project / "reg_run"), "--out", str(csv_out)]) == 0
    assert csv_out.read_text().splitlines()[0] == "id,mean,lower_90,upper_90,true,log_density"


def test_evaluate_chosen_subsets_with_overrides(project):
    report = project / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(project / "run"),
                "--out",
                str(report),
                "--observed",
                "a",
                "--observed",
                "a,b",
                "--set",
                "evaluate.num_samples=2",
                "--set",
                "data.test_split='valid'",
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads(report.read_text())
    assert [s["observed"] for s in got["subsets"]] == [["a"], ["a", "b"]] and got["split"] == "valid"
    assert got["subsets"][0]["label"]["n"] > 0


def test_training_writes_tensorboard_events(project):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(project / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "loss/train",
        "valid/accuracy",
        "valid/loss",
        "lr",
        "terms/nll/x_a",
        "terms/nll/x_b",
        "terms/nll/y",
        "terms/kl/z_y",
        "terms/kl/z_a_a",
        "expert_precision/a",
        "expert_precision/b",
    } <= tags
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert all(e.value > 0 for e in events.Scalars("expert_precision/a"))


def test_progress_without_a_terminal_is_one_line_per_epoch(project, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pyro_mfm",
            "train",
            str(project / "tiny.toml"),
            "--out",
            str(tmp_path / "r"),
            "--set",
            "train.progress=True",
            "--set",
            "train.epochs=3",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\r" not in r.stdout
    assert [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("epoch")] == [
        "epoch 1",
        "epoch 2",
        "epoch 3",
    ]


def test_bars_only_on_a_terminal():
    import io

    from pyro_mfm.infer.progress import bars_enabled

    class Tty(io.StringIO):
        def isatty(self):
            return True

    assert bars_enabled(True, Tty()) and not bars_enabled(False, Tty()) and not bars_enabled(True, io.StringIO())


def test_convert_npz(tmp_path, capsys):
    from pyro_mfm.data import native

    rng = np.random.default_rng(0)
    n = 10
    split = np.array(["train"] * 6 + ["valid"] * 2 + ["test"] * 2)
    a_present = np.ones(n, bool)
    a_present[3] = False
    steps = np.ones((n, 4), bool)
    steps[0, :2] = False
    label = rng.integers(0, 3, n)
    np.savez(
        tmp_path / "mine.npz",
        a=rng.normal(size=(n, 3)),
        b=rng.normal(size=(n, 4, 2)),
        label=label,
        a_present=a_present,
        b_steps=steps,
        split=split,
        ids=np.array([f"s{i}" for i in range(n)]),
    )
    out = tmp_path / "mine.h5"
    assert main(["data", "convert", "--from", "npz", str(tmp_path / "mine.npz"), "--out", str(out)]) == 0
    data = native.load(out)
    assert list(data.splits) == ["train", "valid", "test"] and data.schema.label.kind == "categorical"
    assert data.schema["b"].shape == (4, 2) and not data["train"].present["a"][3] and not data["train"].steps["b"][0, 0]
    assert list(data["test"].ids) == ["s8", "s9"] and list(data["train"].labels) == list(label[:6])
    # regression labels, and a mask that names no modality
    np.savez(tmp_path / "reg.npz", a=rng.normal(size=(n, 3)), label=rng.normal(size=n), c_present=a_present)
    assert main(["data", "convert", "--from", "npz", str(tmp_path / "reg.npz"), "--out", str(tmp_path / "r.h5")]) == 2
    assert "key 'c_present': a mask of modality 'c'" in capsys.readouterr().err
    np.savez(tmp_path / "reg.npz", a=rng.normal(size=(n, 3)), label=rng.normal(size=n))
    assert main(["data", "convert", "--from", "npz", str(tmp_path / "reg.npz"), "--out", str(tmp_path / "r.h5")]) == 0
    assert native.load(tmp_path / "r.h5").schema.label.kind == "regression"
    np.savez(tmp_path / "obj.npz", a=np.array([{"x": 1}] * n, dtype=object))
    assert main(["data", "convert", "--from", "npz", str(tmp_path / "obj.npz"), "--out", str(tmp_path / "o.h5")]) == 2
    assert "Python objects" in capsys.readouterr().err


def write_csv(path, rows):
    path.write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_convert_csv_one_file_per_modality(tmp_path, capsys):
    from pyro_mfm.data import native

    write_csv(
        tmp_path / "audio.csv",
        [
            ["id", "label", "split", "f0", "f1"],
            ["u1", "pos", "train", 1, 2],
            ["u2", "neg", "train", 3, 4],
            ["u3", "pos", "test", 5, 6],
            ["u4", "", "test", 7, 8],
        ],
    )
    write_csv(
        tmp_path / "video.csv", [["id", "present", "g0"], ["u3", 1, 0.5], ["u1", 1, 0.1], ["u2", 1, ""], ["u4", 0, 9]]
    )
    out = tmp_path / "own.h5"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "csv",
                str(tmp_path / "audio.csv"),
                f"vid={tmp_path / 'video.csv'}",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = native.load(out)
    tr, te = data["train"], data["test"]
    assert data.schema.names == ("audio", "vid") and data.schema.label.names == ("neg", "pos")
    assert data.schema["audio"].feature_names == ("f0", "f1")
    assert list(tr.ids) == ["u1", "u2"] and list(tr.labels) == [1, 0] and list(te.label_present) == [True, False]
    np.testing.assert_allclose(np.asarray(te.features["vid"])[:, 0], [0.5, 0.0])  # aligned by id, u4 absent
    assert list(tr.present["vid"]) == [True, False] and list(te.present["vid"]) == [True, False]
    # ids that do not match across files: one line naming the file and the ids
    write_csv(tmp_path / "video.csv", [["id", "g0"], ["u1", 1], ["u2", 2], ["u9", 3]])
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "csv",
                str(tmp_path / "audio.csv"),
                str(tmp_path / "video.csv"),
                "--out",
                str(tmp_path / "bad.h5"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "video.csv" in err and "'u3'" in err and "'u9'" in err
    write_csv(tmp_path / "video.csv", [["id", "g0"], ["u1", "x"], ["u2", 2], ["u3", 3], ["u4", 4]])
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "csv",
                str(tmp_path / "audio.csv"),
                str(tmp_path / "video.csv"),
                "--out",
                str(tmp_path / "bad.h5"),
            ]
        )
        == 2
    )
    assert "row 2, column 'g0': 'x' is not a number" in capsys.readouterr().err


def test_run_over_seeds_reports_mean_and_std(project, capsys):
    out = project / "seeds"
    assert (
        main(
            [
                "run",
                str(project / "tiny.toml"),
                "--out",
                str(out),
                "--seeds",
                "0,1",
                "--quiet",
                "--set",
                "train.epochs=1",
                "--set",
                "train.calibrate='none'",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and (out / "seed-1" / "report.md").exists()
    assert [s["observed"] for s in metrics["subsets"]] == [["a"], ["b"], ["a", "b"]]
    acc = metrics["subsets"][2]["label"]["accuracy"]
    assert len(acc["values"]) == 2 and acc["mean"] == pytest.approx(np.mean(acc["values"]))
    assert acc["std"] == pytest.approx(np.std(acc["values"], ddof=1))
    assert set(metrics["subsets"][0]["imputation"]["b"]) >= {"mse", "corr"}
    seed1 = json.loads((out / "seed-1" / "metrics.json").read_text())
    assert seed1["config"]["train"]["seed"] == 1
    # the MFM against each subset's linear model, over the seeds: the seeds' own numbers, summarised
    seed0 = json.loads((out / "seed-0" / "metrics.json").read_text())
    per_seed = [seed0["linear_baselines"], seed1["linear_baselines"]]
    assert [r["observed"] for r in metrics["linear_baselines"]] == [r["observed"] for r in per_seed[0]]
    for i, row in enumerate(metrics["linear_baselines"]):
        gains = [rows[i]["gain"] for rows in per_seed]
        assert row["gain"]["values"] == pytest.approx(gains) and row["gain"]["mean"] == pytest.approx(np.mean(gains))
        assert row["seeds_behind"] == sum(rows[i]["gain"] < -rows[i]["se"] for rows in per_seed)
        assert row["accuracy"]["linear"]["std"] == 0  # the linear model does not depend on the seed
    worse = [sum(p["worse"] for p in m["nested_pairs"]) for m in (seed0, seed1)]
    assert metrics["nested_pairs"] == 2 and metrics["nested_pairs_worse"]["values"] == worse
    text = (out / "report.md").read_text()
    assert "2 seeds" in text and " ± " in text and "| a+b |" in text
    assert "The MFM against a linear model per subset" in text and "Adding modalities" in text
    one = (out / "seed-0" / "report.md").read_text()  # the per-seed report reads at a glance
    assert "Best epoch 1 of 1 (valid accuracy" in one and "{" not in one
    assert "ratio to the training mean's" in one and "×)" in one and "NLPD (negative log predictive density)" in one
    assert (out / "seed-0" / "plots" / "confusion.png").exists() and (
        out / "seed-0" / "plots" / "reliability.png"
    ).exists()
    assert main(["run", str(project / "tiny.toml"), "--out", str(out), "--seeds", "0,x"]) == 2
    assert "'x' is not an integer" in capsys.readouterr().err
    # evaluate on the folder: its seed-<s> report folders evaluated alike; the seeded draws repeat the run's numbers
    assert main(["evaluate", str(out), "--out", str(out.parent / "seeds_eval.json"), "--quiet"]) == 0
    ev = json.loads((out.parent / "seeds_eval.json").read_text())
    assert ev["seeds"] == [0, 1] and ev["subsets"][2]["label"]["accuracy"]["values"] == acc["values"]


def test_train_and_evaluate_over_seeds(project, tmp_path, capsys):
    out = tmp_path / "seeds"
    args = [
        "train",
        str(project / "tiny.toml"),
        "--out",
        str(out),
        "--seeds",
        "0,1",
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.calibrate='none'",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    # the selection's score: validation accuracy averaged over all modalities and each alone (train.select_over)
    assert "seed 0: best epoch 1" in printed and "over seeds [0, 1]: accuracy_subsets" in printed
    summary = json.loads((out / "seeds.json").read_text())
    per_seed = [summary["per_seed"][s]["accuracy_subsets"] for s in ("0", "1")]
    assert summary["best"]["accuracy_subsets"]["mean"] == pytest.approx(np.mean(per_seed))
    cfg1 = json.loads((out / "seed-1" / "config.json").read_text())
    assert cfg1["train"]["seed"] == 1 and (out / "seed-0" / "best.pt").exists()
    before = (out / "seed-0" / "best.pt").read_bytes()
    assert main(args) == 2  # a second training into the folder is refused, nothing touched
    assert "is not empty" in capsys.readouterr().err and (out / "seed-0" / "best.pt").read_bytes() == before
    assert main(args + ["--resume"]) == 0  # finished seeds return at once
    assert (out / "seed-0" / "best.pt").read_bytes() == before
    # evaluate the folder: each seed alike, every metric as mean ± sd, each seed's records beside them
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(out), "--out", str(report), "--quiet", "--observed", "a,b", "--observed", "a"]) == 0
    ev = json.loads(report.read_text())
    assert ev["seeds"] == [0, 1] and [r["observed"] for r in ev["subsets"]] == [["a", "b"], ["a"]]
    acc = ev["subsets"][0]["label"]["accuracy"]
    assert acc["values"] == [ev["per_seed"][s][0]["label"]["accuracy"] for s in ("0", "1")]
    assert acc["std"] == pytest.approx(np.std(acc["values"], ddof=1))
    assert " ± " in report.with_suffix(".md").read_text()
    # a seed's own evaluation gives the same numbers as its row in the report over seeds
    assert (
        main(["evaluate", str(out / "seed-1"), "--out", str(tmp_path / "one.json"), "--quiet", "--observed", "a,b"])
        == 0
    )
    one = json.loads((tmp_path / "one.json").read_text())
    assert one["subsets"][0]["label"]["accuracy"] == acc["values"][1]


SPACE = """
[train.lr]
low = 1e-3
high = 1e-2
log = true

[model.hidden]
low = 8
high = 16
step = 8

[model.missing]
choices = ["poe", "surrogate"]
"""


def test_tune_resumes_and_writes_a_trainable_best_configuration(project, capsys):
    import optuna

    from pyro_mfm.config import Config

    (project / "space.toml").write_text(SPACE)
    out = project / "search"
    args = [
        "tune",
        str(project / "tiny.toml"),
        "--space",
        str(project / "space.toml"),
        "--out",
        str(out),
        "--set",
        "train.calibrate='none'",
    ]
    assert main(args + ["--trials", "2"]) == 0
    assert "best trial" in capsys.readouterr().out
    assert main(args + ["--trials", "3"]) == 0  # the same study, one more trial
    study = optuna.load_study(study_name="pyro-mfm", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 3 and study.direction.name == "MAXIMIZE"
    assert all(sorted(t.intermediate_values) == [0, 1] for t in study.trials)  # reported each epoch
    assert (out / "trial-0002" / "best.pt").exists()
    best = json.loads((out / "best.json").read_text())
    cfg = Config.load(out / "best.toml")
    assert cfg.model.hidden == best["best_params"]["model.hidden"] and cfg.model.missing in ("poe", "surrogate")
    assert cfg.train.lr == pytest.approx(best["best_params"]["train.lr"]) and cfg.train.epochs == 2
    assert best["best_value"] == study.best_value


def test_tune_prunes_and_reports_bad_spaces(project, tmp_path, monkeypatch, capsys):
    import optuna

    monkeypatch.setattr(optuna.trial.Trial, "should_prune", lambda self: self.number == 1)
    (tmp_path / "space.toml").write_text("[train.lr]\nlow = 1e-3\nhigh = 1e-2\n")
    args = [
        "tune",
        str(project / "tiny.toml"),
        "--space",
        str(tmp_path / "space.toml"),
        "--set",
        "train.calibrate='none'",
    ]
    assert main(args + ["--out", str(tmp_path / "s"), "--trials", "2"]) == 0
    study = optuna.load_study(study_name="pyro-mfm", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED"]
    assert sorted(study.trials[1].intermediate_values) == [0]
    (tmp_path / "bad.toml").write_text("[train.lrr]\nlow = 1\nhigh = 2\n")
    assert (
        main(
            [
                "tune",
                str(project / "tiny.toml"),
                "--space",
                str(tmp_path / "bad.toml"),
                "--out",
                str(tmp_path / "b"),
                "--trials",
                "1",
            ]
        )
        == 2
    )
    assert "[train.lrr] is not a configuration field" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("[model.hidden]\nlow = 8\n")
    assert (
        main(
            [
                "tune",
                str(project / "tiny.toml"),
                "--space",
                str(tmp_path / "bad.toml"),
                "--out",
                str(tmp_path / "b"),
                "--trials",
                "1",
            ]
        )
        == 2
    )
    assert "[model.hidden] needs low and high" in capsys.readouterr().err
    for name in ("train.select_metric", "train.select_over"):  # what the search is scored on
        (tmp_path / "bad.toml").write_text(f"[{name}]\nchoices = ['loss']\n")
        bad = ["tune", str(project / "tiny.toml"), "--space", str(tmp_path / "bad.toml"), "--trials", "1"]
        assert main(bad + ["--out", str(tmp_path / "b")]) == 2
        assert f"[{name}] cannot be searched" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    assert main(args + ["--out", str(tmp_path / "taken"), "--trials", "1"]) == 2
    assert "holds no study.db" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["predict", "tune"])
def test_new_subcommands_have_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and f"usage: pyro-mfm {command}" in capsys.readouterr().out


def test_predict_on_new_unlabelled_data_and_on_a_report_folder(project, tmp_path):
    from pyro_mfm.data import from_arrays, load

    test = load(project / "data.h5")["test"]
    new = from_arrays(
        {m: np.asarray(test.features[m]) for m in ("a", "b")},
        present={m: test.present[m] for m in ("a", "b")},
        split=np.array(["new"] * len(test)),
    )
    save(new, tmp_path / "new.h5")
    out = tmp_path / "p.csv"
    assert main(["predict", str(project / "run"), "--data", str(tmp_path / "new.h5"), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))  # the file's only split; no label, so no log density
    assert len(rows) == len(test) and all(r["true"] == "" and r["log_density"] == "" for r in rows)
    report = tmp_path / "report"
    assert main(["run", str(project / "tiny.toml"), "--out", str(report), "--quiet", "--set", "train.epochs=1"]) == 0
    assert main(["predict", str(report), "--out", str(tmp_path / "r.h5")]) == 0  # uses report/checkpoint/
    with h5py.File(tmp_path / "r.h5") as f:
        assert f["probabilities"].shape == (30, 3) and f.attrs["split"] == "test"


def test_plot_titles_match_their_axes():
    from pyro_mfm import plots

    fig = plots.metric_vs_rate(
        [1, 2],
        {"MFM": [0.5, 0.7]},
        metric="accuracy",
        xlabel="observed views (count)",
        title="accuracy against the number of observed views",
    )
    assert fig.axes[0].get_title().startswith("accuracy against the number of observed views")
    fig = plots.metric_by_observed([{"observed": ["a"], "accuracy": 0.5}, {"observed": ["a", "b"], "accuracy": 0.7}])
    assert "against the number of observed modalities" in fig.axes[0].get_title()
