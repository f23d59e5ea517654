"""The native HDF5 format: exact round trips, atomic writes, lazy reads, and a named DataError for each bad input."""

import json
import os

import h5py
import numpy as np
import pytest

from pyro_mfm.data import DataError, MultimodalData, from_arrays, native


def make_data(label_kind="regression") -> MultimodalData:
    rng = np.random.default_rng(0)
    n = 60
    seq = rng.normal(size=(n, 5, 3))
    steps = np.arange(5)[None, :] >= rng.integers(0, 4, size=n)[:, None]
    seq = seq * steps[..., None]
    present = {"vec": rng.random(n) > 0.2, "seq": rng.random(n) > 0.1}
    if label_kind == "regression":
        y = rng.uniform(-3, 3, size=(n, 2))
        y[::7] = np.nan  # missing labels
    else:
        y = rng.integers(0, 4, size=n)
    split = np.where(np.arange(n) < 40, "train", np.where(np.arange(n) < 50, "valid", "test"))
    data = from_arrays(
        {"vec": rng.normal(size=(n, 4)), "seq": seq},
        y,
        label_kind=label_kind,
        present=present,
        steps={"seq": steps},
        split=split,
        name="toy",
        attribution="made by the test",
        ids=[f"sample-{i}" for i in range(n)],
    )
    return data


def assert_same(a: MultimodalData, b: MultimodalData):
    assert a.schema == b.schema and a.schema.to_dict() == b.schema.to_dict()
    assert list(a.splits) == list(b.splits)
    for s in a.splits:
        x, y = a[s], b[s]
        for m in a.schema.names:
            fx, fy = np.asarray(x.features[m]), np.asarray(y.features[m])
            assert fx.dtype == fy.dtype == np.float32 and fx.tobytes() == fy.tobytes()
            assert np.array_equal(x.present[m], y.present[m])
            if m in x.steps:
                assert np.array_equal(x.steps[m], y.steps[m])
        assert np.asarray(x.labels).dtype == np.asarray(y.labels).dtype
        assert np.asarray(x.labels).tobytes() == np.asarray(y.labels).tobytes()
        assert np.array_equal(x.label_present, y.label_present)
        assert (x.ids is None and y.ids is None) or list(x.ids) == list(y.ids)


@pytest.mark.parametrize("label_kind", ["regression", "categorical"])
def test_round_trip_native_memory_native_is_exact(tmp_path, label_kind):
    data = make_data(label_kind)
    native.save(data, tmp_path / "a.h5")
    loaded = native.load(tmp_path / "a.h5")
    assert_same(data, loaded)
    native.save(loaded, tmp_path / "b.h5")
    assert_same(loaded, native.load(tmp_path / "b.h5"))
    assert loaded["train"].n == 40 and loaded["valid"].n == 10 and loaded["test"].n == 10
    assert not loaded["train"].present["vec"].all() and not loaded["train"].steps["seq"].all()


def test_file_layout_matches_the_documented_schema(tmp_path):
    native.save(make_data(), tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        assert f.attrs["format"] == "pyro-mfm" and f.attrs["format_version"] == 1
        assert json.loads(f.attrs["schema"])["name"] == "toy"
        assert json.loads(f.attrs["splits"]) == ["train", "valid", "test"]
        x = f["train/seq/features"]
        assert x.dtype == np.float32 and x.compression == "gzip" and x.chunks[1:] == (5, 3)
        assert f["train/seq/present"].dtype == bool and f["train/seq/steps"].shape == (40, 5)
        assert "steps" not in f["train/vec"]
        assert f["train/labels"].shape == (40, 2) and f["train/label_present"].dtype == bool
        assert f["test/ids"].asstr()[0] == "sample-50"


def test_save_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "a.h5"
    native.save(make_data(), path)
    with pytest.raises(DataError, match=r"a\.h5.*already exists.*overwrite"):
        native.save(make_data(), path)
    native.save(make_data("categorical"), path, overwrite=True)
    assert native.load(path).schema.label.kind == "categorical"


def test_failed_write_leaves_old_file_untouched_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "a.h5"
    native.save(make_data(), path)
    before = path.read_bytes()
    calls = []

    def failing(group, x, shape):
        calls.append(group.name)
        if len(calls) == 3:  # fail part way through the second split
            raise OSError("disk full (simulated)")
        return original(group, x, shape)

    original = native._write_features
    monkeypatch.setattr(native, "_write_features", failing)
    with pytest.raises(OSError, match="simulated"):
        native.save(make_data("categorical"), path, overwrite=True)
    with pytest.raises(OSError, match="simulated"):
        calls.clear()
        native.save(make_data(), tmp_path / "new.h5")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]


def test_lazy_load_reads_batches_from_the_open_file(tmp_path, monkeypatch):
    data = make_data()
    native.save(data, tmp_path / "a.h5")
    with native.load(tmp_path / "a.h5", lazy=True) as lazy:
        train = lazy["train"]
        assert isinstance(train.features["seq"], h5py.Dataset)
        assert isinstance(train.present["seq"], np.ndarray) and isinstance(train.labels, np.ndarray)
        eager = data["train"]
        for got, want in zip(train.loader(16, shuffle=True, seed=3), eager.loader(16, shuffle=True, seed=3)):
            assert got.x["seq"].equal(want.x["seq"]) and got.steps["seq"].equal(want.steps["seq"])
            assert got.index.equal(want.index)
        # a lazily loaded source is copied block by block when saved again
        monkeypatch.setattr(native, "COPY_ROWS_BYTES", 7 * 5 * 3 * 4)
        native.save(lazy, tmp_path / "b.h5")
        assert_same(data, native.load(tmp_path / "b.h5"))
    assert lazy.handle is None


# ------------------------------------------------------------------------------------------------------- bad input
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "bad.h5"
    native.save(make_data(), path)
    return path


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nothere\.h5: does not exist"):
        native.load(tmp_path / "nothere.h5")


def test_not_hdf5_and_truncated(tmp_path, saved):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.h5: not a readable HDF5 file"):
        native.load(text)
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad\.h5: .*(corrupt or truncated)"):
        native.load(saved)


def edit(path, fn):
    with h5py.File(path, "r+") as f:
        fn(f)


def test_wrong_format_and_version(saved):
    edit(saved, lambda f: f.attrs.__setitem__("format", "other"))
    with pytest.raises(DataError, match=r"bad\.h5: root attribute 'format' is 'other', expected 'pyro-mfm'"):
        native.load(saved)
    edit(saved, lambda f: (f.attrs.__setitem__("format", "pyro-mfm"), f.attrs.__setitem__("format_version", 7)))
    with pytest.raises(DataError, match=r"bad\.h5: root attribute 'format_version' is 7.*reads format_version 1"):
        native.load(saved)


def test_missing_key_names_split_modality_and_key(saved):
    edit(saved, lambda f: f.__delitem__("valid/seq/steps"))
    with pytest.raises(DataError, match=r"bad\.h5, split 'valid', modality 'seq': missing key 'steps'.*\(N, 5\)"):
        native.load(saved)


def test_shape_mismatch_across_modalities(saved):
    def shrink(f):
        del f["train/seq/features"]
        f["train/seq"].create_dataset("features", data=np.zeros((39, 5, 3), np.float32))

    edit(saved, shrink)
    with pytest.raises(
        DataError,
        match=r"bad\.h5, split 'train', modality 'seq', key 'features': shape \(39, 5, 3\), "
        r"expected \(40, 5, 3\).*'vec'",
    ):
        native.load(saved)


def test_nan_and_inf_features(saved):
    def poke(value):
        def fn(f):
            x = f["test/vec/features"][()]
            x[3, 1] = value
            f["test/vec/features"][...] = x

        return fn

    edit(saved, poke(np.nan))
    with pytest.raises(DataError, match=r"bad\.h5, split 'test', modality 'vec', key 'features': 1 NaN.*sample 3"):
        native.load(saved)
    data = native.load(saved, nan_as_missing=True)
    assert not data["test"].present["vec"][3] and not np.isnan(data["test"].features["vec"]).any()
    edit(saved, poke(np.inf))
    with pytest.raises(DataError, match=r"modality 'vec', key 'features': .*inf.*sample 3"):
        native.load(saved, nan_as_missing=True)
    assert native.load(saved, validate=False)["test"].n == 10


def test_labels_outside_declared_range(tmp_path):
    data = make_data()
    schema = data.schema
    from dataclasses import replace

    bounded = replace(schema, label=replace(schema.label, low=-3.0, high=3.0))
    for ds in data.splits.values():
        ds.schema = bounded
    data.schema = bounded
    data["valid"].labels[2, 0] = 4.5
    data["valid"].label_present[2] = True
    native.save(data, tmp_path / "y.h5")
    with pytest.raises(
        DataError,
        match=r"y\.h5, split 'valid', key 'labels': 1 label\(s\) out of range, first at "
        r"sample 2.*\[-3.0, 3.0\]",
    ):
        native.load(tmp_path / "y.h5")
    with pytest.raises(DataError, match=r"key 'labels': 1 label\(s\) out of range"):
        native.load(tmp_path / "y.h5", lazy=True)


def test_new_file_gets_normal_permissions(tmp_path):
    native.save(make_data(), tmp_path / "a.h5")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.h5").stat().st_mode & 0o777 == 0o666 & ~umask


def test_from_arrays_declares_the_label_range_and_names():
    """``label_range`` and ``label_names`` reach the schema of the data and of every split; a label outside the
    range, a range of a class label, a bad range and names of the wrong count are one-line errors; a sentiment
    label in [-3, 3] is scored with the field's metrics."""
    from pyro_mfm.infer.metrics import label_metrics
    from pyro_mfm.infer.predict import Prediction

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 3)), rng.uniform(-3, 3, size=20)
    data = from_arrays({"a": x}, y, label_range=(-3, 3), label_names=["sentiment"])
    for schema in (data.schema, data["train"].schema):
        assert (schema.label.low, schema.label.high, schema.label.names) == (-3.0, 3.0, ("sentiment",))
    with pytest.raises(DataError, match=r"split 'train', key 'labels': 1 label\(s\) out of range, first at sample 4"):
        from_arrays({"a": x}, np.where(np.arange(20) == 4, 3.5, y), label_range=(-3, 3))
    with pytest.raises(DataError, match=r"label_range: the label is categorical"):
        from_arrays({"a": x}, np.arange(20) % 2, label_range=(0, 1))
    for bad in ((3, -3), ("low", "high"), 3, (0, np.inf), (0, 1, 2)):
        with pytest.raises(DataError, match=r"label_range = .*: expected \(low, high\), two finite numbers"):
            from_arrays({"a": x}, y, label_range=bad)
    with pytest.raises(DataError, match=r"label_range or label_names given, but the data have no label"):
        from_arrays({"a": x}, label_names=["y"])
    with pytest.raises(DataError, match=r"label_names: 2 names; expected 3, one per class"):
        from_arrays({"a": x}, np.arange(20) % 3, label_names=["no", "yes"])
    classes = from_arrays({"a": x}, np.arange(20) % 3, label_names=["neg", "neu", "pos"])
    assert classes.schema.label.names == ("neg", "neu", "pos")
    point, nan = (y + 0.1)[:, None], np.full((20, 1), np.nan)
    pred = Prediction(point, nan, nan, None, np.zeros(20), None, ("a",), interval=0.9, kind="normal")
    scored = label_metrics(pred, y[:, None], np.ones(20, bool), data.schema.label)
    unranged = label_metrics(pred, y[:, None], np.ones(20, bool), from_arrays({"a": x}, y).schema.label)
    assert "acc2_has0" in scored and "acc7" in scored and "acc7" not in unranged
