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

FAST = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

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
    data = outcome(from_arrays, mods, labels, present=present, split=split if len(split) else None,
                   nan_as_missing=nan_as_missing)
    if isinstance(data, DataError):
        return
    for m, x in mods.items():  # accepted: the features are finite wherever the sample is marked present
        for s, ds in data.splits.items():
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
    data = from_arrays({"a": rng.normal(size=(40, 3)), "b": rng.normal(size=(40, 4, 2))}, rng.normal(size=40),
                       split={"train": np.arange(30), "valid": np.arange(30, 40)})
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
    raw[offset:offset + len(junk)] = junk
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
@given(st.dictionaries(st.sampled_from(["format", "format_version", "schema", "splits"]),
                       st.one_of(st.text(max_size=20), st.integers(), st.just("[]"), st.just('{"modalities": 3}')),
                       min_size=1))
def test_native_root_attributes_rewritten(tmp_path, native_file, attrs):
    path = tmp_path / "attrs.h5"
    path.write_bytes(native_file.read_bytes())
    with h5py.File(path, "a") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
    result = outcome(load, path)
    assert isinstance(result, DataError) or set(result.splits) <= {"train", "valid"}


@FAST
@given(st.lists(st.sampled_from(["drop_present", "drop_features", "shape", "dtype", "labels", "split_attr_n"]),
                min_size=1, max_size=3, unique=True))
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
@given(st.dictionaries(st.sampled_from(["x", "y"]),
                       st.tuples(st.integers(0, 6), st.integers(0, 4), DTYPES, st.booleans()), min_size=1))
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
@given(st.recursive(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                              hnp.arrays(DTYPES, hnp.array_shapes(max_dims=3, max_side=4), elements=None)),
                    lambda inner: st.dictionaries(st.sampled_from(["train", "valid", "test", "text", "audio",
                                                                   "vision", "labels", "id"]), inner, max_size=4),
                    max_leaves=12))
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
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "ran.txt"),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": Boom()}))
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_pickle(path)
    assert not (tmp_path / "ran.txt").exists()


@FAST
@given(st.lists(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)),
                         min_size=0, max_size=4), max_size=5))
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
TINY = ["train.progress=False", "model.z_y_dim=2", "model.z_a_dim=2", "model.hidden=8", "model.f_y_dim=4",
        "model.f_a_dim=4", "train.epochs=1", "train.kl_warmup=0", "train.batch_size=8", "train.valid_samples=2"]


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
    data = from_arrays({m: twice(v) for m, v in feats.items()}, twice(labels),
                       present={m: twice(v) for m, v in present.items()}, split=split)
    result = outcome(fit, Config().override(TINY), data)
    if not isinstance(result, DataError):
        assert np.isfinite(result.history[-1]["train_loss"])
