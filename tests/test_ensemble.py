"""Ensembles of MFMs (``train.ensemble``): the members' seeds, the mixture that prediction and imputation report,
training into member folders, resume, loading, the command line, and what refuses an ensemble."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_mfm.analysis import factors
from pyro_mfm.cli import main
from pyro_mfm.config import Config
from pyro_mfm.data import load, save
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.ensemble import Ensemble, expert_form, member_expert, member_seed
from pyro_mfm.infer import CheckpointError, fit, impute, load_model, predict
from pyro_mfm.infer.calibrate import calibrate, calibrate_ensemble
from pyro_mfm.infer.checkpoint import folder_lock
from pyro_mfm.infer.evaluate import evaluate
from pyro_mfm.infer.train import ensemble_what
from pyro_mfm.model import MFM
from tests.test_cli_model import CONFIG
from tests.test_train import SMALL, tiny_data

# one member after the other in this process, except where a test trains them in processes of their own
FAST = SMALL + ["train.epochs=3", "train.kl_warmup=1", "train.batch_size=32", "train.valid_samples=3"]
FAST += ["train.ensemble_processes=1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two members, trained at once in processes of their own."""
    data = tiny_data()
    out = tmp_path_factory.mktemp("ensemble") / "run"
    return data, out, fit(Config().override(FAST + ["train.ensemble=2", "train.ensemble_processes=2"]), data, out)


def test_member_seeds_start_from_the_seed_and_never_repeat_another_ensembles():
    assert member_seed(7, 0) == 7
    seeds = {s: [member_seed(s, k) for k in range(8)] for s in range(20)}
    drawn = [x for s in seeds.values() for x in s[1:]]
    assert len(set(drawn)) == len(drawn)  # no member of one ensemble is a member of another
    assert not set(drawn) & set(range(20))  # nor the single model of a nearby seed
    assert all(0 <= x < 2**32 for x in drawn)


def test_an_ensemble_of_one_model_twice_predicts_what_the_model_predicts():
    """The mixture of two equal members, each with half the draws, is the model with all of them: the members draw
    in turn from one random stream, so the draws are the very same."""
    data = tiny_data()
    mfm = MFM(data.schema, Config().override(FAST).model, feature_statistics(data["train"])).eval()
    twice = Ensemble([mfm, copy.deepcopy(mfm)])
    test = data["test"]
    for observed in (None, ["a"]):
        one = predict(mfm, test, observed, num_samples=40, seed=3, batch_size=1000)
        two = predict(twice, test, observed, num_samples=40, seed=3, batch_size=1000)
        for a, b in ((one.point, two.point), (one.lower, two.lower), (one.upper, two.upper)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.log_density, two.log_density, rtol=1e-5, atol=1e-6)
        assert two.samples.shape == one.samples.shape


def test_members_take_the_experts_forms_in_turn():
    both = Config().override(["model.expert=both"]).model
    assert [member_expert(both, k) for k in range(4)] == ["mlp", "linear", "mlp", "linear"]
    mfn = Config().override(["model.expert=both", "model.fusion=mfn"]).model  # no experts: one form
    assert [member_expert(mfn, k) for k in range(3)] == ["mlp"] * 3
    linear = Config().override(["model.expert=linear"]).model
    assert [member_expert(linear, k) for k in range(2)] == ["linear"] * 2
    # a single MFM of "both" is the MLP form, and weighs as one beside MLP members
    assert expert_form(both) == "mlp" and expert_form(linear) == "linear"


def test_the_members_weights_for_what_a_sample_observes_weigh_their_predictives():
    """A member whose log weight is 30 below the other's where a sample observes ``a`` drops out of the mixture
    there: the ensemble then predicts what the other member predicts alone with its share of the draws (it draws
    first from the random stream, so the draws are the very same); where only ``b`` is observed the weights are
    equal, and the prediction is the unweighted ensemble's (as it is for a sample that observes neither)."""
    data = tiny_data()
    test = data["test"]
    has_a = np.asarray(test.present["a"])
    assert 0 < has_a.sum() < len(has_a)
    model = Config().override(FAST).model
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(MFM(data.schema, model, feature_statistics(data["train"])).eval())
    equal = Ensemble([members[0], copy.deepcopy(members[1])])
    members[1].model.mixture_log_weight = torch.tensor([0.0, -30.0, 0.0])  # [a, b_a, b_b]
    weighted = Ensemble(members)
    assert weighted.weighted and not equal.weighted
    alone = predict(members[0], test, ["a"], num_samples=20, seed=3, batch_size=1000)
    got = predict(weighted, test, ["a"], num_samples=40, seed=3, batch_size=1000)
    both = predict(equal, test, ["a"], num_samples=40, seed=3, batch_size=1000)
    for a, b, c in ((alone.point, got.point, both.point), (alone.lower, got.lower, both.lower)):
        np.testing.assert_allclose(a[has_a], b[has_a], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c[~has_a], b[~has_a], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone.upper[has_a], got.upper[has_a], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(alone.log_density[has_a], got.log_density[has_a], rtol=1e-5, atol=1e-5)
    # the two members' predictions differ, so the weights show
    assert np.abs(both.point[has_a] - got.point[has_a]).mean() > 1e-3
    mixed = predict(equal, test, ["b"], num_samples=40, seed=3, batch_size=1000)
    got = predict(weighted, test, ["b"], num_samples=40, seed=3, batch_size=1000)
    for a, b in ((mixed.point, got.point), (mixed.lower, got.lower), (mixed.upper, got.upper)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed.log_density, got.log_density, rtol=1e-5, atol=1e-5)
    assert got.samples.shape == mixed.samples.shape


def test_the_ensembles_imputation_is_the_mixture_of_its_members():
    """Mean and variance of the imputation of hidden b from a: those of the equal mixture of the two members'
    imputations, within the Monte Carlo error of 2,000 draws per member (the law of total variance across them).
    The members differ in their initialisation and in the statistics they standardise b with (the second's mean
    two standard deviations higher), as members that held out other samples do, so that the mixture's spread
    between them counts."""
    data = tiny_data()
    test, n = data["test"], 2000
    built = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        stats = feature_statistics(data["train"])
        stats.mean["b"] = stats.mean["b"] + 2 * seed * stats.std["b"]
        built.append(MFM(data.schema, Config().override(FAST).model, stats).eval())
    members = [impute(m, test, ["a"], num_samples=n, seed=1) for m in built]
    both = impute(Ensemble(built), test, ["a"], num_samples=2 * n, seed=2)
    means = np.stack([m.mean["b"] for m in members])
    variances = np.stack([m.std["b"] ** 2 for m in members])
    mean = means.mean(0)
    variance = variances.mean(0) + ((means - mean) ** 2).mean(0)
    hidden = ~np.asarray(test.present["b"])
    se = np.sqrt(variance / n)  # standard error of each mean estimate, about (within 2 sd of 4 estimates)
    assert np.all(np.abs(both.mean["b"][hidden] - mean[hidden]) < 5 * se[hidden])
    np.testing.assert_allclose(both.std["b"][hidden] ** 2, variance[hidden], rtol=0.15)
    # and the two members differ, or the mixture would test nothing
    assert np.abs(means[0] - means[1])[hidden].mean() > 10 * se[hidden].mean()


def test_an_ensemble_trains_its_members_into_folders_of_their_own(trained):
    data, out, result = trained
    assert isinstance(result.mfm, Ensemble) and len(result.mfm) == len(result.members) == 2
    record = json.loads((out / "ensemble.json").read_text())
    assert record["folders"] == ["member-0", "member-1"] and record["seeds"] == [0, member_seed(0, 1)]
    for k, member in enumerate(result.members):
        assert (out / f"member-{k}" / "best.pt").exists() and member.out_dir == out / f"member-{k}"
        assert member.config.train.seed == record["seeds"][k] and member.config.train.ensemble == 1
    # member 0 is the single model of the ensemble's seed: trained in a process of its own, the same bits as here
    single = fit(Config().override(FAST), data)
    for a, b in zip(single.mfm.parameters(), result.members[0].mfm.parameters()):
        assert torch.equal(a, b)
    # the members differ, and the ensemble's predictive mixes them
    pa, pb = (predict(m, data["test"], num_samples=20, seed=0) for m in result.mfm.members)
    assert np.abs(pa.point - pb.point).mean() > 1e-3
    both = predict(result.mfm, data["test"], num_samples=40, seed=0)
    assert np.all(both.lower <= both.point) and np.all(both.point <= both.upper)
    records = evaluate(result.mfm, data["test"], num_samples=4, progress=False)
    assert len(records) == 3 and all(np.isfinite(r["label"]["mae"]) for r in records)


def test_the_ensemble_loads_from_its_folder_and_resumes_to_the_same_members(trained, tmp_path):
    data, out, result = trained
    loaded, config, payload = load_model(out)
    assert isinstance(loaded, Ensemble) and config.train.ensemble == 2 and payload["path"] == str(out)
    a = predict(result.mfm, data["test"], num_samples=10, seed=0)
    b = predict(loaded, data["test"], num_samples=10, seed=0)
    np.testing.assert_array_equal(a.point, b.point)
    # a run cut after two epochs of each member, then resumed one member after the other, gives the members of the
    # uninterrupted run (trained at once in processes of their own): the same bits
    cut = tmp_path / "cut"
    fit(Config().override(FAST + ["train.ensemble=2", "train.epochs=2"]), data, cut)
    resumed = fit(Config().override(FAST + ["train.ensemble=2"]), data, cut, resume=True)
    for full, again in zip(result.members, resumed.members):
        for x, y in zip(full.mfm.parameters(), again.mfm.parameters()):
            assert torch.equal(x, y)
    assert resumed.calibration == result.calibration
    # resuming a finished ensemble trains nothing more
    history = [len(r.history) for r in resumed.members]
    again = fit(Config().override(FAST + ["train.ensemble=2"]), data, cut, resume=True)
    assert [len(r.history) for r in again.members] == history
    # a folder in use by another training is refused before anything is read or written
    with folder_lock(cut), pytest.raises(CheckpointError, match="in use by another process"):
        fit(Config().override(FAST + ["train.ensemble=2"]), None, cut, resume=True)
    # a member without its best.pt is named
    (cut / "member-1" / "best.pt").unlink()
    (cut / "member-1" / "last.pt").unlink()
    with pytest.raises(CheckpointError, match="member-1 has no best.pt"):
        load_model(cut)
    (cut / "ensemble.json").write_text("{")  # a damaged record is one line naming the file
    with pytest.raises(CheckpointError, match="ensemble.json: not an ensemble's record"):
        load_model(cut)


def test_data_read_lazily_train_the_members_one_after_the_other_to_the_same_bits(trained, tmp_path):
    """Data read lazily from an HDF5 file cannot be pickled for member processes; with two processes asked for, the
    members then train one after the other in this process, and come out as the processes trained them."""
    data, _, result = trained
    save(data, tmp_path / "data.h5")
    lazy = load(tmp_path / "data.h5", lazy=True)
    try:
        again = fit(Config().override(FAST + ["train.ensemble=2", "train.ensemble_processes=2"]), lazy)
    finally:
        lazy.close()
    for full, member in zip(result.members, again.members):
        for x, y in zip(full.mfm.parameters(), member.mfm.parameters()):
            assert torch.equal(x, y)


def test_one_model_settings_refuse_an_ensemble(trained):
    data, _, result = trained
    with pytest.raises(ValueError, match="expected train.ensemble = 1"):
        mfm = MFM(data.schema, Config().override(FAST).model, feature_statistics(data["train"]))
        fit(Config().override(FAST + ["train.ensemble=2"]), data, model=mfm)
    with pytest.raises(ValueError, match="members' codes live in spaces of their own"):
        factors.posterior_codes(result.mfm, data["test"])


def test_the_command_line_trains_and_evaluates_an_ensemble(tmp_path):
    from pyro_mfm.data import LinearGaussianMFM

    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="categorical", num_classes=3, seed=0)
    save(gen.sample({"train": 80, "valid": 30, "test": 30}, missing=0.2, seed=0), tmp_path / "data.h5")
    (tmp_path / "tiny.toml").write_text(CONFIG.format(data="data.h5"))
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "tiny.toml"), "--out", str(run), "--set", "train.ensemble=2"]) == 0
    assert (run / "member-1" / "best.pt").exists()
    report = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--out", str(report), "--quiet"]) == 0
    got = json.loads(report.read_text())
    assert got["checkpoint"] == str(run) and len(got["subsets"]) == 3
    preds = tmp_path / "p.csv"
    assert main(["predict", str(run), "--out", str(preds)]) == 0
    assert len(preds.read_text().splitlines()) == 31
    # the main job: its report names the members, its imputed files the ensemble's folder, and evaluate reads it
    report = tmp_path / "report"
    assert main(["run", str(tmp_path / "tiny.toml"), "--out", str(report), "--set", "train.ensemble=2"]) == 0
    assert "An ensemble of 2 MFMs" in (report / "report.md").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    assert [m["expert"] for m in metrics["members"]] == ["mlp", "linear"]  # the default's two forms
    assert list(metrics["mixture_log_weight"]) == ["mlp", "linear"]
    assert "weighs the linear form's members" in (report / "report.md").read_text()
    # each form alone on the validation and the test split, per subset: the section of the report, and the numbers
    # are the forms' own predictions and the mixture's weights
    assert "## Each form of expert alone" in (report / "report.md").read_text()
    assert [r["observed"] for r in metrics["forms"]] == [["a"], ["b"], ["a", "b"]]
    ens, _, _ = load_model(report / "checkpoint")
    splits = load(tmp_path / "data.h5")
    test = splits["test"]
    coef = np.asarray(metrics["mixture_log_weight"]["linear"])
    for r in metrics["forms"]:
        logit = coef[0] + sum(coef[1 + ["a", "b"].index(m)] for m in r["observed"])
        assert r["linear_weight"] == pytest.approx(1 / (1 + np.exp(-logit)), rel=1e-5)
        # scored on the labelled samples that observe every modality of the subset (the data miss 20% at random)
        keep = {
            name: np.asarray(ds.label_present, bool) & np.all([ds.present[m] for m in r["observed"]], 0)
            for name, ds in (("validation", splits["valid"]), ("test", test))
        }
        assert {name: r[name]["n"] for name in keep} == {name: int(k.sum()) for name, k in keep.items()}
        assert r["test"]["n"] < len(test)
        for k, form in enumerate(["mlp", "linear"]):
            alone = predict(Ensemble([ens.members[k]]), test, r["observed"], num_samples=5, seed=0)
            accuracy = float((alone.point.argmax(-1) == np.asarray(test.labels))[keep["test"]].mean())
            assert r["test"][form] == pytest.approx(accuracy)
        assert r["test"]["difference"] == pytest.approx(r["test"]["linear"] - r["test"]["mlp"])
    assert main(["evaluate", str(report), "--out", str(tmp_path / "again.json"), "--quiet"]) == 0
    assert json.loads((tmp_path / "again.json").read_text())["checkpoint"] == str(report / "checkpoint")


def test_form_scores_compare_the_two_forms_of_an_ensemble_alone(trained):
    from pyro_mfm.analysis.forms import form_scores, opposite

    data, _, result = trained
    ens = result.mfm
    assert [expert_form(m.config) for m in ens.members] == ["mlp", "linear"]
    splits = {"validation": data["valid"], "test": data["test"]}
    records = form_scores(ens, splits, [("a",), ("a", "b")], num_samples=4)
    assert [r["observed"] for r in records] == [["a"], ["a", "b"]]
    for r in records:
        for name, ds in splits.items():  # each form's MAE is its member's prediction alone, where S is observed
            for k, form in enumerate(["mlp", "linear"]):
                alone = predict(Ensemble([ens.members[k]]), ds, r["observed"], num_samples=4, seed=0)
                keep = np.asarray(ds.label_present, bool) & np.all([ds.present[m] for m in r["observed"]], 0)
                mae = np.abs(alone.point.reshape(len(ds), -1) - np.asarray(ds.labels).reshape(len(ds), -1))
                assert r[name][form] == pytest.approx(mae.mean(-1)[keep].mean())
        assert r["opposite"] == opposite(r["validation"], r["test"])
    # one form, or no ensemble: nothing to compare
    assert form_scores(ens.members[0], splits) == []
    assert form_scores(Ensemble([ens.members[0], ens.members[0]]), splits) == []
    # opposite rankings: opposite signs, each beyond two of its standard errors
    assert opposite({"difference": 0.05, "se": 0.01}, {"difference": -0.05, "se": 0.02})
    assert not opposite({"difference": 0.05, "se": 0.01}, {"difference": -0.05, "se": 0.03})
    assert not opposite({"difference": 0.05, "se": 0.01}, {"difference": 0.05, "se": 0.01})


def test_the_reports_forms_section_names_the_subsets_ranked_the_other_way_round():
    from pyro_mfm.analysis.forms import opposite
    from pyro_mfm.report import _forms_lines

    def row(observed, valid, test):
        rec = {"observed": observed, "metric": "mae", "linear_weight": 0.25, "test": test}
        rec["opposite"] = valid is not None and opposite(valid, test)
        return rec if valid is None else {**rec, "validation": valid}

    split = lambda d, se: {"mlp": 1.0, "linear": 1.0 - d, "difference": d, "se": se, "n": 50}  # noqa: E731
    lines = "\n".join(
        _forms_lines(
            [
                row(["a"], split(-0.1, 0.02), split(0.1, 0.02)),  # opposite, each beyond two standard errors
                row(["b"], split(-0.1, 0.02), split(0.1, 0.08)),  # the test split cannot tell
                row(["a", "b"], None, split(0.1, 0.02)),  # no validation sample observes the subset
            ]
        )
    )
    assert "| a+b | n/a | 1.0000 / 0.9000 (+0.1000 ± 0.0200) | 0.25 |" in lines
    # only a is named (b's test split cannot tell the forms apart)
    assert "On a the validation split ranks the two forms" in lines and "from_arrays(groups=...)" in lines
    assert _forms_lines([]) == []


def test_the_ensemble_is_calibrated_as_a_mixture(trained):
    """Two members biased in opposite directions (the label's mean moved by half a standard deviation up in one and
    down in the other), each calibrated alone, widen their own spread to cover their bias; their mixture, centred,
    is then too wide, and the ensemble's calibration narrows it. Its offset is the one the mixture's held-out
    density prefers: the validation split's mean log predictive density over the observed subsets, with the same
    draws of z_y (temperatures do not move them), is lower with the offset moved by 0.3 either way."""
    data, out, result = trained
    record = result.calibration  # the trained ensemble's own fit, stored beside its members
    assert record["members"] == 2 and record["nlpd_after"] <= record["nlpd_before"]
    assert json.loads((out / "calibration.json").read_text())["nlpd_after"] == record["nlpd_after"]
    valid = data["valid"]
    members = [copy.deepcopy(m) for m in result.mfm.members]
    for m, sign in zip(members, (1, -1)):
        m.D.mean += sign * 0.5 * m.D.std
        calibrate(m, valid, experts=False)
    ensemble = Ensemble(members)
    alone = [float(m.D.log_temperature[0]) for m in members]
    fitted = calibrate_ensemble(ensemble, valid)
    assert fitted["label_log_temperature_offset"][0] < -0.1 and fitted["nlpd_after"] < fitted["nlpd_before"]
    assert [float(m.D.log_temperature[0]) for m in members] == pytest.approx(
        [a + fitted["label_log_temperature_offset"][0] for a in alone]
    )
    base = [m.D.log_temperature.clone() for m in members]

    def density(shift: float) -> float:
        for m, t in zip(members, base):
            m.D.log_temperature = t + shift
        subsets = (["a"], ["b"], ["a", "b"])
        return float(
            np.mean([np.nanmean(predict(ensemble, valid, o, num_samples=400, seed=5).log_density) for o in subsets])
        )

    at = density(0.0)
    assert at > density(0.3) and at > density(-0.3)


def test_an_ensemble_of_both_forms_weighs_them_for_each_subset_on_the_validation_split(tmp_path):
    """``model.expert = "both"``: the members alternate the MLP and linear forms, and the ensemble's calibration
    fits each form's weight for what a sample observes, stored in the members' ``best.pt`` (loading predicts the
    same) and in ``calibration.json``. Beside the trained MLP member, a linear member that was never trained and
    whose label is moved by three standard deviations gets little weight on any subset, and the held-out density
    of the mixture rises."""
    data = tiny_data()
    out = tmp_path / "run"
    result = fit(Config().override(FAST + ["train.ensemble=2", "model.expert=both"]), data, out)
    assert [m.config.model.expert for m in result.members] == ["mlp", "linear"]
    assert [m.config.expert for m in result.mfm.members] == ["mlp", "linear"]
    assert "weighs the linear form's members" in ensemble_what(result)  # the console's and the report's line
    record = json.loads((out / "calibration.json").read_text())
    assert list(record["mixture_log_weight"]) == ["mlp", "linear"]
    assert record["mixture_log_weight"]["mlp"] == [0.0, 0.0, 0.0]
    stored = result.mfm.members[1].model.mixture_log_weight.tolist()
    assert stored == pytest.approx(record["mixture_log_weight"]["linear"])
    loaded, _, _ = load_model(out)
    a = predict(result.mfm, data["test"], num_samples=10, seed=0)
    b = predict(loaded, data["test"], num_samples=10, seed=0)
    np.testing.assert_array_equal(a.point, b.point)
    # a trained member against an untrained one of the other form
    trained_mlp = copy.deepcopy(result.mfm.members[0])
    torch.manual_seed(5)
    linear = Config().override(FAST + ["model.expert=linear"]).model
    untrained = MFM(data.schema, linear, feature_statistics(data["train"])).eval()
    untrained.D.mean += 3 * untrained.D.std
    ensemble = Ensemble([trained_mlp, untrained])
    fitted = calibrate_ensemble(ensemble, data["valid"])
    assert fitted["nlpd_after"] < fitted["nlpd_before"] - 0.05
    observed = torch.tensor([[1, 0], [0, 1], [1, 1]])
    weights = ensemble.log_weights(observed).exp()  # (members, subsets)
    assert torch.all(weights[0] > 0.9), weights


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_without_a_main_guard_trains_its_members_in_its_own_process(tmp_path, guarded):
    """A script that trains an ensemble at its top level without `if __name__ == "__main__":` would be run again by
    every member process as it starts (multiprocessing's spawn), each run starting processes of its own: the members
    train one after the other in the script's process instead, with a warning naming the script and the guard.
    Under the guard they train in processes, with no warning."""
    work = (
        "result = fit(Config().override(SMALL + ['train.epochs=1', 'train.ensemble=2', "
        "'train.ensemble_processes=2']), tiny_data())\n"
        "print('members', len(result.members))\n"
    )
    script = tmp_path / "train_ensemble.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1])!r})\n"
        "from pyro_mfm.config import Config\n"
        "from pyro_mfm.infer import fit\n"
        "from tests.test_train import SMALL, tiny_data\n"
        + (
            'if __name__ == "__main__":\n' + "".join("    " + line + "\n" for line in work.splitlines())
            if guarded
            else work
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "members 2" in done.stdout
    warned = f"{script}: fit was called from the script's top level outside `if __name__" in done.stderr
    assert warned != guarded, done.stderr[-3000:]
