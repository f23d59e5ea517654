"""Importers: the MFN release layout (real POM files), MulT/MMSA pickles, UCI Multiple Features CSV views."""

import pickle

import h5py
import numpy as np
import pytest

from pyro_mfm.data import DataError
from pyro_mfm.data.importers import front_padding_mask, load_mfn, load_pickle, read_uci_mfeat, stratified_split


# ------------------------------------------------------------------------------------------------------------- MFN
def test_pom_real_files(shared_datasets):
    folder = shared_datasets / "pom"
    data = load_mfn(folder)
    assert list(data.splits) == ["train", "valid", "test"]
    assert [data[s].n for s in data] == [600, 100, 203]
    assert data.schema["audio"].shape == (20, 43) and data.schema["video"].shape == (20, 41)
    assert data.schema.label.kind == "regression" and data.schema.label.dim == 17
    with h5py.File(folder / "audio_valid.h5", "r") as f:
        raw = f["d1"][()]
    valid = data["valid"]
    assert np.array_equal(valid.features["audio"], raw.astype(np.float32))
    # leading all-zero steps are padding; a zero step after a real one stays real
    lead = np.cumprod(np.all(raw == 0, axis=-1), axis=1).astype(bool)
    assert np.array_equal(valid.steps["audio"], ~lead)
    assert (~valid.steps["audio"]).any() and valid.present["audio"].all()
    # video: samples whose every step is zero are missing
    with h5py.File(folder / "video_train.h5", "r") as f:
        all_zero = np.all(f["d1"][()] == 0, axis=(1, 2))
    assert np.array_equal(data["train"].present["video"], ~all_zero) and all_zero.sum() == 322
    with h5py.File(folder / "y_test.h5", "r") as f:
        assert np.allclose(data["test"].labels, f["d1"][()])


def test_front_padding_mask():
    x = np.zeros((2, 4, 2))
    x[0, 1] = 1
    x[0, 3] = 2  # step 2 is zero but after a real step
    assert front_padding_mask(x).tolist() == [[False, True, True, True], [False] * 4]


def write_h5(path, array, key="d1"):
    with h5py.File(path, "w") as f:
        f[key] = array


def test_mfn_errors_name_file_and_key(tmp_path):
    rng = np.random.default_rng(1)
    for s, n in (("train", 6), ("valid", 2), ("test", 3)):
        write_h5(tmp_path / f"audio_{s}.h5", rng.normal(size=(n, 4, 2)), key="data")
        write_h5(tmp_path / f"y_{s}.h5", rng.normal(size=(n, 1)))
    assert [len(v) for v in load_mfn(tmp_path).splits.values()] == [6, 2, 3]
    write_h5(tmp_path / "audio_test.h5", rng.normal(size=(4, 4, 2)))
    with pytest.raises(DataError, match=r"audio_test\.h5, modality 'audio': shape \(4, 4, 2\), expected \(3, 4, 2\)"):
        load_mfn(tmp_path)
    write_h5(tmp_path / "audio_test.h5", rng.normal(size=(3, 4, 2)), key="x")
    with pytest.raises(DataError, match=r"audio_test\.h5: no dataset under key 'd1' or 'data'; found \['x'\]"):
        load_mfn(tmp_path)
    write_h5(tmp_path / "audio_test.h5", rng.normal(size=(3, 4, 2)))
    (tmp_path / "y_valid.h5").unlink()
    with pytest.raises(DataError, match=r"y_valid\.h5: does not exist"):
        load_mfn(tmp_path)
    with pytest.raises(DataError, match=r"nowhere: does not exist"):
        load_mfn(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------------------- pickle
def mult_pickle(path, n=(8, 3, 4), nan=False):
    rng = np.random.default_rng(2)
    d = {}
    for split, k in zip(("train", "valid", "test"), n):
        d[split] = {
            "text": rng.normal(size=(k, 5, 6)).astype(np.float32),
            "audio": rng.normal(size=(k, 5, 3)),
            "vision": rng.normal(size=(k, 5, 4)),
            "labels": rng.uniform(-3, 3, size=(k, 1, 1)),
            "id": np.array([[f"{split}vid", str(i)] for i in range(k)]),
            "audio_lengths": np.full(k, 3),
        }
    if nan:
        d["valid"]["vision"][1, 2, 0] = np.nan
    with open(path, "wb") as f:
        pickle.dump(d, f)
    return d


def test_pickle_refused_unless_trusted(tmp_path):
    mult_pickle(tmp_path / "mosi.pkl")
    with pytest.raises(DataError, match=r"mosi\.pkl: refusing to unpickle: loading a pickle runs code.*trust=True"):
        load_pickle(tmp_path / "mosi.pkl")


def test_pickle_trusted(tmp_path):
    raw = mult_pickle(tmp_path / "mosi.pkl")
    data = load_pickle(tmp_path / "mosi.pkl", trust=True, label_range=(-3, 3))
    assert [data[s].n for s in data] == [8, 3, 4] and data.schema.names == ("text", "audio", "vision")
    assert data.schema["text"].shape == (5, 6) and data.schema.label.dim == 1
    assert np.array_equal(data["test"].features["text"], raw["test"]["text"])
    assert np.allclose(data["train"].labels[:, 0], raw["train"]["labels"][:, 0, 0])
    assert data["valid"].ids[1] == "validvid/1"
    assert data["train"].steps["audio"][0].tolist() == [True] * 3 + [False] * 2 and data["train"].steps["text"].all()


def test_pickle_errors(tmp_path):
    mult_pickle(tmp_path / "nan.pkl", nan=True)
    with pytest.raises(DataError, match=r"nan\.pkl, split 'valid', modality 'vision', key 'features': 1 NaN.*sample 1"):
        load_pickle(tmp_path / "nan.pkl", trust=True)
    assert not load_pickle(tmp_path / "nan.pkl", trust=True, nan_as_missing=True)["valid"].present["vision"][1]
    with pytest.raises(DataError, match=r"nan\.pkl, split 'train': missing key 'regression_labels'"):
        load_pickle(tmp_path / "nan.pkl", trust=True, label_key="regression_labels")
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match=r"junk\.pkl: not a readable pickle"):
        load_pickle(tmp_path / "junk.pkl", trust=True)


# ------------------------------------------------------------------------------------------------------------- UCI
def write_views(folder, n=12, bad_view=None):
    rng = np.random.default_rng(3)
    y = np.arange(n) % 3
    for view, d in (("fou", 3), ("fac", 2), ("kar", 2), ("pix", 4), ("zer", 2), ("mor", 1)):
        labels = y.copy()
        if view == bad_view:
            labels[5] = (labels[5] + 1) % 3
        table = np.column_stack([rng.normal(size=(n, d)), labels])
        header = ",".join(str(i) for i in range(d)) + ",0"
        np.savetxt(folder / f"mfeat-{view}.csv", table, delimiter=",", header=header, comments="", fmt="%.6g")


def test_uci_views_and_label_agreement(tmp_path):
    write_views(tmp_path)
    features, labels = read_uci_mfeat(tmp_path)
    assert list(features) == ["fou", "fac", "kar", "pix", "zer", "mor"] and features["pix"].shape == (12, 4)
    write_views(tmp_path, bad_view="zer")
    with pytest.raises(
        DataError,
        match=r"mfeat-zer\.csv, modality 'zer': label \d in data row 5 disagrees with .*"
        r"mfeat-fou\.csv",
    ):
        read_uci_mfeat(tmp_path)
    (tmp_path / "mfeat-kar.csv").write_text("0,1\n1,x\n")
    with pytest.raises(DataError, match=r"mfeat-kar\.csv: not a numeric CSV"):
        read_uci_mfeat(tmp_path)
    (tmp_path / "mfeat-fac.csv").unlink()
    with pytest.raises(DataError, match=r"mfeat-fac\.csv: does not exist"):
        read_uci_mfeat(tmp_path)


def test_uci_real_views(shared_datasets):
    features, labels = read_uci_mfeat(shared_datasets / "uci_mfeat")
    dims = {v: x.shape[1] for v, x in features.items()}
    assert dims == {"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6}
    assert np.array_equal(np.bincount(labels), np.full(10, 200))


def test_stratified_split_is_fixed_and_stratified():
    labels = np.repeat(np.arange(10), 200)
    a, b = stratified_split(labels), stratified_split(labels)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert [len(a[s]) for s in ("train", "valid", "test")] == [1400, 200, 400]
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(2000))
    assert np.array_equal(np.bincount(labels[a["valid"]]), np.full(10, 20))
