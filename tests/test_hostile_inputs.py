"""Hostile input, property-based: random shapes, dtypes, NaN/inf, empty splits, all-missing samples, mismatched ids,
huge dimensions, truncated files and untrusted pickles, through the native format and every importer.

Every case must end in a clear :class:`DataError` (naming the file) or a correct result; nothing else may escape
from deep inside numpy, h5py or PyTorch, and a failed write never touches an existing file.
"""

import pickle

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_mfm.config import Config
from pyro_mfm.data import from_arrays, load, save
from pyro_mfm.data.importers.csd import read_csd
from pyro_mfm.data.importers.mfn import load_mfn
from pyro_mfm.data.importers.pickled import load_pickle
from pyro_mfm.data.importers.uci_mfeat import read_view
from pyro_mfm.data.schema import DataError
from pyro_mfm.infer import fit

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
DTYPES = st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.bool_, np.float16])


def outcome(fn, *args, **kwargs):
    """The result of ``fn``, or the DataError it raised; any other exception fails the test."""
    try:
        return fn(*args, **kwargs)
    except DataError as e:
        assert str(e), "an empty error message"
        return e


def _cast(dtype, v):
    with np.errstate(over="ignore"):  # float16 overflows to inf: one more hostile value
        return dtype(v)


@st.composite
def arrays_and_masks(draw):
    n = draw(st.integers(0, 12))
    mods = {}
    for name in draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3, unique=True)):
        shape = draw(st.sampled_from([(n, draw(st.integers(1, 5))), (n, draw(st.integers(1, 4)), 2)]))
        dtype = draw(DTYPES)
        hostile = np.issubdtype(dtype, np.floating) and draw(st.booleans())
        mods[name] = draw(hnp.arrays(dtype, shape, elements=FLOATS.map(lambda v: _cast(dtype, v)) if hostile else None))
    present = {m: draw(hnp.arrays(np.bool_, (n,))) for m in mods if draw(st.booleans())}
    labels = draw(hnp.arrays(np.float64, (n,), elements=FLOATS)) if draw(st.booleans()) else None
    split = draw(st.lists(st.sampled_from(["train", "valid", "test"]), min_size=n, max_size=n))
    return mods, present, labels, np.array(split, dtype=str)


@FAST
@given(arrays_and_masks(), st.booleans())
def test_from_arrays_then_native_round_trip(tmp_path, case, nan_as_missing):
    mods, present, labels, split = case
    data = outcome(
        from_arrays, mods, labels, present=present, split=split if len(split) else None, nan_as_missing=nan_as_missing
    )
    if isinstance(data, DataError):
        return
    for m in mods:  # accepted: the features are finite wherever the sample is marked present
        for ds in data.splits.values():
            assert np.isfinite(np.asarray(ds.features[m])).all()
    path = tmp_path / f"rt-{np.random.default_rng().integers(1 << 30)}.h5"
    save(data, path)
    back = load(path)
    assert back.schema.to_dict() == data.schema.to_dict()
    for s, ds in data.splits.items():
        for m in mods:
            np.testing.assert_array_equal(np.asarray(back[s].features[m]), np.asarray(ds.features[m]))
            np.testing.assert_array_equal(back[s].present[m], ds.present[m])
    # saving again onto it is refused, and leaves it as it was
    before = path.read_bytes()
    assert isinstance(outcome(save, data, path), DataError)
    assert path.read_bytes() == before


@pytest.fixture(scope="module")
def native_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    data = from_arrays(
        {"a": rng.normal(size=(40, 3)), "b": rng.normal(size=(40, 4, 2))},
        rng.normal(size=40),
        split={"train": np.arange(30), "valid": np.arange(30, 40)},
    )
    path = tmp_path_factory.mktemp("native") / "good.h5"
    save(data, path)
    return path


@FAST
@given(st.floats(0.0, 0.999))
def test_truncated_native_file_is_a_clear_error(tmp_path, native_file, fraction):
    raw = native_file.read_bytes()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(raw[: int(len(raw) * fraction)])
    for lazy in (False, True):
        result = outcome(load, bad, lazy=lazy)
        assert isinstance(result, DataError) and "cut.h5" in str(result)


@FAST
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=64))
def test_corrupted_bytes_in_a_native_file(tmp_path, native_file, offset, junk):
    raw = bytearray(native_file.read_bytes())
    offset %= len(raw)
    raw[offset : offset + len(junk)] = junk
    bad = tmp_path / "junk.h5"
    bad.write_bytes(bytes(raw))
    result = outcome(load, bad)
    if isinstance(result, DataError):
        assert "junk.h5" in str(result)
    else:  # the bytes hit padding or compressed-away space: the content must still be valid
        for ds in result.splits.values():
            for m in ds.schema.names:
                assert np.isfinite(np.asarray(ds.features[m])).all()


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["format", "format_version", "schema", "splits"]),
        st.one_of(st.text(max_size=20), st.integers(), st.just("[]"), st.just('{"modalities": 3}')),
        min_size=1,
    )
)
def test_native_root_attributes_rewritten(tmp_path, native_file, attrs):
    path = tmp_path / "attrs.h5"
    path.write_bytes(native_file.read_bytes())
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    result = outcome(load, path)
    assert isinstance(result, DataError) or set(result.splits) <= {"train", "valid"}


@FAST
@given(
    st.lists(
        st.sampled_from(["drop_present", "drop_features", "shape", "dtype", "labels", "split_attr_n"]),
        min_size=1,
        max_size=3,
        unique=True,
    )
)
def test_native_datasets_removed_or_reshaped(tmp_path, native_file, edits):
    path = tmp_path / "edit.h5"
    path.write_bytes(native_file.read_bytes())
    with h5py.File(path, "a") as f:
        g = f["train"]
        if "drop_present" in edits:
            del g["a/present"]
        if "drop_features" in edits:
            del g["b/features"]
        if "shape" in edits:
            del g["a/features"]
            g["a/features"] = np.zeros((30, 7), np.float32)
        if "dtype" in edits and "b/features" in g:
            del g["b/features"]
            g["b/features"] = np.array([["x"] * 2] * 4 * 30, dtype="S1").reshape(30, 4, 2)
        if "labels" in edits:
            del g["labels"]
            g["labels"] = np.full((30, 1), np.inf, np.float32)
        if "split_attr_n" in edits:
            g.attrs["n"] = 10**12
    result = outcome(load, path)
    if edits == ["split_attr_n"]:  # the attribute is informative only: sizes come from the arrays
        assert len(result["train"]) == 30
    else:
        assert isinstance(result, DataError) and "edit.h5" in str(result), result


# --------------------------------------------------------------------------------------------------- importers
@FAST
@given(
    st.dictionaries(
        st.sampled_from(["x", "y"]), st.tuples(st.integers(0, 6), st.integers(0, 4), DTYPES, st.booleans()), min_size=1
    )
)
def test_mfn_folder_of_random_arrays(tmp_path, spec):
    folder = tmp_path / f"mfn{np.random.default_rng().integers(1 << 30)}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for m, (n, d, dtype, poison) in spec.items():
            name = "y" if m == "y" else "text"
            shape = (n,) if name == "y" else (n, 3, d)
            x = (rng.normal(size=shape) * 3).astype(dtype)
            if poison and x.size and np.issubdtype(x.dtype, np.floating):
                x.flat[0] = np.nan if split == "train" else np.inf
            with h5py.File(folder / f"{name}_{split}.h5", "w") as f:
                f["d1"] = x
    result = outcome(load_mfn, folder)
    if not isinstance(result, DataError):
        for ds in result.splits.values():
            assert np.isfinite(np.asarray(ds.features["text"])).all()


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_as_every_file_format(tmp_path, blob):
    path = tmp_path / "blob"
    path.write_bytes(blob)
    for reader in (load, read_csd, lambda p: load_pickle(p, trust=True)):
        assert isinstance(outcome(reader, path), DataError)
    result = outcome(read_view, path)  # a CSV: random bytes may happen to be a valid table
    assert isinstance(result, (DataError, tuple))


@FAST
@given(
    st.recursive(
        st.one_of(
            st.none(),
            st.integers(),
            st.text(max_size=5),
            hnp.arrays(DTYPES, hnp.array_shapes(max_dims=3, max_side=4), elements=None),
        ),
        lambda inner: st.dictionaries(
            st.sampled_from(["train", "valid", "test", "text", "audio", "vision", "labels", "id"]), inner, max_size=4
        ),
        max_leaves=12,
    )
)
def test_trusted_pickle_of_any_shape(tmp_path, obj):
    path = tmp_path / "data.pkl"
    path.write_bytes(pickle.dumps(obj))
    result = outcome(load_pickle, path, trust=True)
    if not isinstance(result, DataError):
        for ds in result.splits.values():
            for m in ds.schema.names:
                assert np.isfinite(np.asarray(ds.features[m])).all()


def test_untrusted_pickle_is_refused_without_running_it(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, (f"open({str(tmp_path / 'ran.txt')!r}, 'w').write('ran')",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Boom()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_pickle(path)
    assert not (tmp_path / "ran.txt").exists()


@FAST
@given(
    st.lists(
        st.lists(
            st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)), min_size=0, max_size=4
        ),
        max_size=5,
    )
)
def test_uci_csv_with_random_cells(tmp_path, rows):
    path = tmp_path / "mfeat-fou.csv"
    path.write_text("h\n" + "\n".join(",".join(map(str, r)) for r in rows))
    result = outcome(read_view, path)
    if not isinstance(result, DataError):
        x, y = result
        assert len(x) == len(y) and (y >= 0).all()


@FAST
@given(st.integers(1, 5), st.integers(0, 4), st.booleans(), st.booleans())
def test_csd_with_mismatched_rows(tmp_path, n, d, mismatch, nan):
    path = tmp_path / "f.csd"
    x = np.ones((n, d)) * (np.nan if nan else 1.0)
    iv = np.stack([np.arange(n + mismatch), np.arange(n + mismatch) + 1.0], 1)
    with h5py.File(path, "w") as f:
        g = f.create_group("feat/data/vid1")
        g["features"], g["intervals"] = x, iv
    outcome(read_csd, path)


# ------------------------------------------------------------------------------------------- training on it
TINY = [
    "train.progress=False",
    "train.ensemble=1",
    "model.z_y_dim=2",
    "model.z_a_dim=2",
    "model.hidden=8",
    "model.f_y_dim=4",
    "model.f_a_dim=4",
    "train.epochs=1",
    "train.kl_warmup=0",
    "train.batch_size=8",
    "train.valid_samples=2",
]


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(st.integers(1, 10), st.booleans(), st.booleans(), st.booleans())
def test_training_on_degenerate_data_is_a_result_or_a_clear_error(n, all_missing, no_labels, empty_valid):
    rng = np.random.default_rng(n)
    present = {"a": np.zeros(n, bool) if all_missing else rng.random(n) < 0.5}
    labels = np.full(n, np.nan) if no_labels else rng.normal(size=n)
    feats = {"a": rng.normal(size=(n, 2)), "b": rng.normal(size=(n, 3))}
    # the validation split is a copy of the training samples (splits of one array never share a sample)
    twice = lambda v: np.concatenate([v, v])  # noqa: E731
    split = {"train": np.arange(n), "valid": np.arange(n, n if empty_valid else 2 * n)}
    data = from_arrays(
        {m: twice(v) for m, v in feats.items()},
        twice(labels),
        present={m: twice(v) for m, v in present.items()},
        split=split,
    )
    result = outcome(fit, Config().override(TINY), data)
    if not isinstance(result, DataError):
        assert np.isfinite(result.history[-1]["train_loss"])


# ------------------------------------------------------------------------------- commands on hostile paths and data
import errno  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from pyro_mfm.cli import main  # noqa: E402
from pyro_mfm.outputs import OutputError, atomic_write, write_json  # noqa: E402

RUN_CONFIG = """
[data]
source = "{data}"
[model]
z_y_dim = 2
z_a_dim = 2
f_y_dim = 4
f_a_dim = 4
hidden = {hidden}
[train]
ensemble = 1
epochs = 2
kl_warmup = 0
batch_size = 16
valid_samples = 2
progress = false
[evaluate]
num_samples = 3
"""


def _classes(n_train=40, n_valid=12, n_test=12, seed=0, names=("a", "b")):
    rng = np.random.default_rng(seed)
    n = n_train + n_valid + n_test
    y = rng.integers(0, 3, n)
    mods = {m: rng.normal(size=(n, 2 + i)) + y[:, None] for i, m in enumerate(names)}
    return from_arrays(
        mods,
        y,
        label_kind="categorical",
        split={
            "train": np.arange(n_train),
            "valid": np.arange(n_train, n_train + n_valid),
            "test": np.arange(n_train + n_valid, n),
        },
    )


def _config(folder, data, hidden=8, name="tiny.toml"):
    path = folder / name
    path.write_text(RUN_CONFIG.format(data=data, hidden=hidden))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small data file, its configuration and a run folder trained on it (2 epochs of tiny networks)."""
    root = tmp_path_factory.mktemp("trained")
    save(_classes(), root / "data.h5")
    cfg = _config(root, root / "data.h5")
    assert main(["train", str(cfg), "--out", str(root / "run")]) == 0
    return root


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert err.startswith("pyro-mfm: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def test_output_paths_that_are_files_or_under_files(trained, tmp_path, capsys, monkeypatch):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cfg = str(trained / "tiny.toml")
    for command in (["train", cfg], ["run", cfg]):
        for out in (a_file, a_file / "sub"):
            assert main(command + ["--out", str(out)]) == 2
            one_line_error(capsys, str(out), "is a file")
    run = str(trained / "run")
    # evaluate and impute check --out before any work
    import pyro_mfm.cli.evaluate as ev
    import pyro_mfm.cli.impute as im

    def no_work(args):
        raise AssertionError("the work started before --out was checked")

    monkeypatch.setattr(ev, "load_for_inference", no_work)
    monkeypatch.setattr(im, "load_for_inference", no_work)
    for out in (a_file / "e.json", tmp_path):  # under a file; a folder
        assert main(["evaluate", run, "--out", str(out), "--quiet"]) == 2
        one_line_error(capsys, str(out))
    assert main(["evaluate", run, "--out", str(tmp_path / "e.md"), "--quiet"]) == 2
    one_line_error(capsys, "e.md", "expected the JSON report's name")
    for out in (tmp_path, a_file / "i.h5"):
        assert main(["impute", run, "--observed", "a", "--out", str(out)]) == 2
        one_line_error(capsys, str(out))
    assert main(["impute", run, "--observed", "a", "--out", str(tmp_path), "--overwrite"]) == 2
    one_line_error(capsys, "is a folder")
    assert main(["data", "convert", "--from", "native", str(trained / "data.h5"), "--out", str(tmp_path)]) == 2
    one_line_error(capsys, "is a folder")
    assert a_file.read_text() == "x"


def test_a_full_disk_is_one_line_naming_the_file(trained, tmp_path, capsys, monkeypatch):
    report = tmp_path / "eval.json"
    report.write_text("old")

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    assert main(["evaluate", str(trained / "run"), "--out", str(report), "--quiet"]) == 2
    one_line_error(capsys, str(report), "No space left on device")
    assert report.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]
    assert main(["train", str(trained / "tiny.toml"), "--out", str(tmp_path / "run")]) == 2
    one_line_error(capsys, str(tmp_path / "run"), "No space left on device")
    assert main(["impute", str(trained / "run"), "--observed", "a", "--out", str(tmp_path / "i.h5")]) == 2
    one_line_error(capsys, "i.h5", "No space left on device")
    assert not (tmp_path / "i.h5").exists() and not list(tmp_path.glob(".i.h5.*"))
    with pytest.raises(OutputError, match="x.json: No space left on device"):
        write_json(tmp_path / "x.json", {})


def test_written_files_honour_the_umask(trained, tmp_path):
    for name in ("last.pt", "best.pt", "config.json", "log.jsonl"):
        assert (trained / "run" / name).stat().st_mode & 0o777 == 0o666 & ~_umask(), name
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
        from pyro_mfm import plots

        plots.save(plots.training_curves([{"epoch": 0, "train_loss": 1.0}]), tmp_path / "p.png")
        save(_classes(4, 0, 0), tmp_path / "d.h5")
    finally:
        os.umask(old)
    for name in ("f.bin", "p.png", "d.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o640, name


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def _strict_json(path):
    def refuse(token):
        raise AssertionError(f"{path}: non-standard JSON token {token}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_json_outputs_are_strict(tmp_path):
    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.array([1, 2])})
    assert _strict_json(tmp_path / "m.json") == {"a": None, "b": [None, 1.5], "c": [1, 2]}


def test_evaluate_on_data_of_another_schema(trained, tmp_path, capsys):
    save(_classes(names=("a", "audio")), tmp_path / "other.h5")
    assert (
        main(
            [
                "evaluate",
                str(trained / "run"),
                "--data",
                str(tmp_path / "other.h5"),
                "--out",
                str(tmp_path / "e.json"),
                "--quiet",
            ]
        )
        == 2
    )
    one_line_error(capsys, "other.h5", "no modality 'b'", "'audio' that the model was not trained on")
    save(_classes(names=("a", "b"), seed=1), tmp_path / "wide.h5")  # same names, other shapes
    data = _classes()
    wide = from_arrays(
        {"a": np.asarray(data["train"].features["a"]), "b": np.zeros((40, 7))},
        np.asarray(data["train"].labels),
        label_kind="categorical",
        split={"test": np.arange(40)},
    )
    save(wide, tmp_path / "wide.h5", overwrite=True)
    assert (
        main(
            [
                "evaluate",
                str(trained / "run"),
                "--data",
                str(tmp_path / "wide.h5"),
                "--out",
                str(tmp_path / "e.json"),
                "--quiet",
            ]
        )
        == 2
    )
    one_line_error(capsys, "modality 'b' of shape [7], the model expects [3]")
    assert main(["evaluate", str(trained / "run"), "--split", "nope", "--out", str(tmp_path / "e.json")]) == 2
    one_line_error(capsys, "no split 'nope'")


def test_num_samples_on_the_command_line_is_checked(trained, tmp_path, capsys):
    for command in (
        ["evaluate", "--out", str(tmp_path / "e.json")],
        ["impute", "--observed", "a", "--out", str(tmp_path / "i.h5")],
    ):
        for n in ("-5", "0"):
            assert main(command[:1] + [str(trained / "run"), "--num-samples", n] + command[1:]) == 2
            one_line_error(capsys, f"evaluate.num_samples = {n}: expected an integer in [1, ")
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "i.h5").exists()


def test_resume_with_another_architecture_is_one_line(trained, tmp_path, capsys):
    run = tmp_path / "run"
    cfg = str(trained / "tiny.toml")
    assert main(["train", cfg, "--out", str(run), "--set", "train.epochs=1"]) == 0
    assert main(["train", cfg, "--out", str(run), "--resume", "--set", "model.hidden=16"]) == 2
    one_line_error(capsys, "another architecture", "model.hidden = 8 -> 16")


def test_a_checkpoint_whose_weights_do_not_fit_is_one_line(trained, tmp_path):
    import torch

    from pyro_mfm.infer import CheckpointError
    from pyro_mfm.infer.checkpoint import load_model, payload_digest

    payload = torch.load(trained / "run" / "best.pt", weights_only=False)
    key = next(iter(payload["model"]))
    payload["model"][key] = torch.zeros(99)
    payload["checksum"] = payload_digest(payload)  # a consistent file whose weights do not fit, not a damaged one
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as e:
        load_model(tmp_path / "bad.pt")
    assert "\n" not in str(e.value) and f"{key}: [99] stored" in str(e.value)


def test_python_api_of_prediction_checks_its_arguments_and_the_data(trained):
    from pyro_mfm.infer.checkpoint import load_model
    from pyro_mfm.infer.evaluate import evaluate
    from pyro_mfm.infer.predict import impute, predict

    mfm, _, _ = load_model(trained / "run")
    test = _classes()["test"]
    for kwargs in ({"num_samples": 0}, {"num_samples": -5}, {"batch_size": 0}, {"num_samples": 2.5}):
        for fn in (predict, impute):
            with pytest.raises(ValueError, match=f"{next(iter(kwargs))} = "):
                fn(mfm, test, **kwargs)
    with pytest.raises(ValueError, match="interval = 1.5"):
        predict(mfm, test, interval=1.5)
    with pytest.raises(DataError, match="no modality 'b'"):
        evaluate(mfm, _classes(names=("a", "audio"))["test"], num_samples=2)


def _run_job(tmp_path, data, capsys):
    save(data, tmp_path / "d.h5")
    cfg = _config(tmp_path, tmp_path / "d.h5")
    return main(["run", str(cfg), "--out", str(tmp_path / "report"), "--quiet"])


def test_run_with_one_sample_per_split(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = from_arrays(
        {"a": rng.normal(size=(3, 2)), "b": rng.normal(size=(3, 3))},
        np.array([0, 1, 0]),
        label_kind="categorical",
        split={"train": [0], "valid": [1], "test": [2]},
    )
    assert _run_job(tmp_path, data, capsys) == 0
    metrics = _strict_json(tmp_path / "report" / "metrics.json")
    assert metrics["single_view_baselines"] == {} and len(metrics["subsets"]) == 3
    assert "No linear model for a, b alone" in (tmp_path / "report" / "report.md").read_text()


def test_run_with_a_modality_absent_from_the_test_split(tmp_path, capsys):
    data = _classes()
    present = {"b": np.r_[np.ones(52, bool), np.zeros(12, bool)]}
    data = from_arrays(
        {m: np.concatenate([np.asarray(data[s].features[m]) for s in ("train", "valid", "test")]) for m in ("a", "b")},
        np.concatenate([np.asarray(data[s].labels) for s in ("train", "valid", "test")]),
        label_kind="categorical",
        present=present,
        split={"train": np.arange(40), "valid": np.arange(40, 52), "test": np.arange(52, 64)},
    )
    assert _run_job(tmp_path, data, capsys) == 0
    metrics = _strict_json(tmp_path / "report" / "metrics.json")
    by = {tuple(r["observed"]): r for r in metrics["subsets"]}
    assert by[("b",)]["label"] == {"n": 0} and "no sample of split 'test' has b" in by[("b",)]["note"]
    assert by[("a",)]["imputation"]["b"]["n"] == 0 and by[("a",)]["imputation"]["b"]["mse"] is None
    assert by[("a",)]["label"]["n"] == 12 and set(metrics["single_view_baselines"]) == {"a"}
    assert "| b | - |" in (tmp_path / "report" / "report.md").read_text()
    assert (
        main(["evaluate", str(tmp_path / "report" / "checkpoint"), "--out", str(tmp_path / "e.json"), "--quiet"]) == 0
    )
    assert _strict_json(tmp_path / "e.json")["subsets"][1]["label"] == {"n": 0}


def test_features_near_1e20_in_any_split_are_one_line(trained, tmp_path, capsys):
    import h5py

    data = _classes()
    features = {
        m: np.concatenate([np.asarray(data[s].features[m]) for s in ("train", "valid", "test")]) for m in ("a", "b")
    }
    labels = np.concatenate([np.asarray(data[s].labels) for s in ("train", "valid", "test")])
    features["a"][45, 1] = 1e20  # sample 5 of the validation split
    with pytest.raises(
        DataError,
        match="split 'valid', modality 'a', key 'features': sample 5, feature 1 reaches "
        "1e\\+20 in magnitude; expected magnitudes up to 1e\\+18",
    ):
        from_arrays(
            features,
            labels,
            label_kind="categorical",
            split={"train": np.arange(40), "valid": np.arange(40, 52), "test": np.arange(52, 64)},
        )
    with pytest.raises(DataError, match="1 label\\(s\\) out of range.*up to 1e\\+18 in magnitude"):
        from_arrays({"a": np.ones((4, 2))}, np.array([1.0, -3e20, 2.0, 0.0]))
    # a file whose test split alone holds a huge value: the command that reads it stops in one line, before any work
    path = tmp_path / "huge.h5"
    path.write_bytes((trained / "data.h5").read_bytes())
    with h5py.File(path, "a") as f:
        x = f["test/b/features"][...]
        x[3, 2] = -4e19
        f["test/b/features"][...] = x
    assert main(["evaluate", str(trained / "run"), "--data", str(path), "--out", str(tmp_path / "e.json")]) == 2
    one_line_error(capsys, f"file {path}, split 'test', modality 'b'", "sample 3, feature 2 reaches -4e+19")
    assert not (tmp_path / "e.json").exists()
    assert main(["run", str(_config(tmp_path, path)), "--out", str(tmp_path / "report"), "--quiet"]) == 2
    one_line_error(capsys, "split 'test', modality 'b'", "expected magnitudes up to 1e+18")
    # a lazily read training file is checked as its statistics are computed
    lazy = from_arrays({"a": np.ones((4, 2))}, np.array([1.0, 2.0, 2.0, 0.0]))
    lazy["train"].labels[1] = -3e20
    with pytest.raises(DataError, match="split 'train': a regression label reaches 3e\\+20"):
        fit(Config().override(TINY), lazy)


def test_train_accepts_nan_as_missing(trained, tmp_path, capsys):
    import h5py

    path = tmp_path / "nan.h5"
    path.write_bytes((trained / "data.h5").read_bytes())
    with h5py.File(path, "a") as f:
        x = f["train/a/features"][...]
        x[3, 0] = np.nan
        f["train/a/features"][...] = x
    cfg = _config(tmp_path, path)
    assert main(["train", str(cfg), "--out", str(tmp_path / "r1"), "--set", "train.epochs=1"]) == 2
    one_line_error(capsys, "--nan-as-missing")
    assert main(["train", str(cfg), "--out", str(tmp_path / "r2"), "--set", "train.epochs=1", "--nan-as-missing"]) == 0
    # evaluating a trained model on such a file takes the same flag
    run = str(trained / "run")
    assert main(["evaluate", run, "--data", str(path), "--split", "train", "--out", str(tmp_path / "e.json")]) == 2
    one_line_error(capsys, "--nan-as-missing")
    assert (
        main(
            [
                "evaluate",
                run,
                "--data",
                str(path),
                "--split",
                "train",
                "--out",
                str(tmp_path / "e.json"),
                "--nan-as-missing",
                "--quiet",
            ]
        )
        == 0
    )


def test_output_into_a_closed_pipe_ends_quietly():
    p = subprocess.Popen(
        [sys.executable, "-m", "pyro_mfm", "data", "info", "uci_mfeat"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    p.stdout.close()  # the reader is gone before the command writes (as `| head -0` does)
    err = p.stderr.read().decode()
    assert p.wait(60) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_evaluate_and_predict_set_only_what_applies_to_a_trained_model(trained, tmp_path, capsys):
    run = str(trained / "run")
    for command, out in (("evaluate", "e.json"), ("predict", "p.csv")):
        assert main([command, run, "--out", str(tmp_path / out), "--set", "model.hidden=4"]) == 2
        one_line_error(capsys, "--set model.hidden=4", "only [data] and [evaluate] fields")
        assert not (tmp_path / out).exists()
    assert main(["predict", run, "--out", str(tmp_path / "p.csv"), "--set", "evaluate.interval=1.5"]) == 2
    one_line_error(capsys, "evaluate.interval = 1.5")
    assert main(["predict", run, "--out", str(tmp_path / "p.csv"), "--num-samples", "0"]) == 2
    one_line_error(capsys, "--num-samples")
