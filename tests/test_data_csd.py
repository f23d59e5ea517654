"""CMU-MultimodalSDK computational sequences: the real CMU-MOSI labels file, folds, and alignment of features."""

import h5py
import numpy as np
import pytest

from pyro_mfm.data import DataError, native
from pyro_mfm.data.importers import CMU_MOSI_FOLDS, align_csd, read_csd, write_csd


@pytest.fixture(scope="module")
def mosi_labels(shared_datasets):
    return shared_datasets / "cmu_mosi_labels" / "CMU_MOSI_Opinion_Labels.csd"


def test_read_real_labels_csd(mosi_labels):
    seq = read_csd(mosi_labels)
    assert seq.root == "Opinion Segment Labels" and len(seq.data) == 93
    assert sum(len(x) for x, _ in seq.data.values()) == 2199
    assert all(x.shape[1] == 1 and iv.shape == (len(x), 2) for x, iv in seq.data.values())
    y = np.concatenate([x for x, _ in seq.data.values()])
    assert y.min() >= -3 and y.max() <= 3
    assert seq.metadata["dataset name"] == "CMU-MOSI" and seq.metadata["dimension names"] == ["sentiment score"]
    with pytest.raises(
        DataError,
        match=r"CMU_MOSI_Opinion_Labels\.csd: root attribute 'format' is None, expected "
        r"'pyro-mfm' \(this looks like a CMU-MultimodalSDK \.csd file",
    ):
        native.load(mosi_labels)


def test_standard_folds_split_the_real_labels_1284_229_686(mosi_labels, tmp_path):
    labels = read_csd(mosi_labels)
    assert [len(CMU_MOSI_FOLDS[s]) for s in ("train", "valid", "test")] == [52, 10, 31]
    # a feature sequence covering every video: a step every 0.5 s, feature = the step's start time
    feats = {}
    for video, (_, iv) in labels.data.items():
        t = np.arange(0, iv.max() + 1, 0.5)
        feats[video] = (np.stack([t, -t], axis=1).astype(np.float32), np.stack([t, t + 0.5], axis=1))
    write_csd(tmp_path / "clock.csd", "Clock", feats)
    data = align_csd(mosi_labels, {"clock": tmp_path / "clock.csd"}, steps=8, label_range=(-3, 3))
    assert [data[s].n for s in ("train", "valid", "test")] == [1284, 229, 686]
    assert data.schema.label.low == -3 and data.schema.label.names == ("sentiment score",)
    assert data.schema.extra["videos_without_fold"] == []
    test = data["test"]
    assert set(i.split("[")[0] for i in test.ids) == set(CMU_MOSI_FOLDS["test"])
    # ids point back at the labels file's rows, labels are the file's values
    video, row = test.ids[5][:-1].split("[")
    assert test.labels[5, 0] == labels.data[video][0][int(row), 0]
    # the last aligned step starts before the segment's end, and steps are in time order
    start, end = labels.data[video][1][int(row)]
    x = test.features["clock"][5][test.steps["clock"][5]]
    assert x[-1, 0] < end and np.all(np.diff(x[:, 0]) > 0) and x[-1, 0] + 0.5 > start


def small_labels(tmp_path):
    write_csd(
        tmp_path / "labels.csd",
        "Labels",
        {
            "vidA": (np.array([[1.0], [-2.0]], np.float32), np.array([[0.0, 2.0], [2.0, 3.0]])),
            "vidB": (np.array([[0.5]], np.float32), np.array([[10.0, 11.0]])),
        },
        {"dataset name": "tiny", "dimension names": ["score"]},
    )
    return tmp_path / "labels.csd"


def test_alignment_pads_truncates_and_averages(tmp_path):
    labels = small_labels(tmp_path)
    t = np.arange(0, 3, 0.5)  # vidA steps 0, .5, ..., 2.5; value = 10 * start
    write_csd(tmp_path / "feat.csd", "Feat", {"vidA": ((10 * t)[:, None], np.stack([t, t + 0.5], 1))})
    folds = {"train": ["vidA"], "test": ["vidB"]}
    seq = align_csd(labels, {"f": tmp_path / "feat.csd"}, steps=3, folds=folds)
    tr = seq["train"]
    assert list(tr.ids) == ["vidA[0]", "vidA[1]"]
    # segment [0, 2): steps 0..1.5 (4 steps) -> last 3 kept; segment [2, 3): steps 2, 2.5 -> front-padded
    assert np.allclose(tr.features["f"][0, :, 0], [5, 10, 15]) and tr.steps["f"][0].all()
    assert np.allclose(tr.features["f"][1, :, 0], [0, 20, 25]) and list(tr.steps["f"][1]) == [False, True, True]
    assert np.allclose(tr.labels[:, 0], [1.0, -2.0])
    # vidB is absent from the feature file: the modality is missing
    assert not seq["test"].present["f"][0] and seq["test"].features["f"].sum() == 0
    vec = align_csd(labels, {"f": tmp_path / "feat.csd"}, steps=None, folds=folds)
    assert vec.schema["f"].shape == (1,)
    assert np.allclose(vec["train"].features["f"][:, 0], [7.5, 22.5])


def test_non_finite_steps_raise_or_are_dropped(tmp_path):
    labels = small_labels(tmp_path)
    t = np.arange(0, 3, 0.5)
    x = (10 * t)[:, None]
    x[1] = -np.inf
    write_csd(tmp_path / "feat.csd", "Feat", {"vidA": (x, np.stack([t, t + 0.5], 1))})
    with pytest.raises(DataError, match=r"feat\.csd, modality 'f', video 'vidA', key 'features': non-finite .*step 1"):
        align_csd(labels, {"f": tmp_path / "feat.csd"}, steps=3, folds=None)
    data = align_csd(labels, {"f": tmp_path / "feat.csd"}, steps=3, folds=None, nan_as_missing=True)
    assert np.allclose(data["train"].features["f"][0, :, 0], [0, 10, 15])


def test_bad_csd_files_name_file_video_and_key(tmp_path):
    labels = small_labels(tmp_path)
    with pytest.raises(DataError, match=r"none\.csd: does not exist"):
        read_csd(tmp_path / "none.csd")
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(DataError, match=r"flat\.h5: expected one root group holding 'data'"):
        read_csd(tmp_path / "flat.h5")
    with h5py.File(labels, "r+") as f:
        del f["Labels/data/vidB/intervals"]
    with pytest.raises(DataError, match=r"labels\.csd, video 'vidB': missing key 'intervals'"):
        read_csd(labels)
    write_csd(tmp_path / "words.csd", "Words", {"vidA": (np.array([[b"hi"]]), np.array([[0.0, 1.0]]))})
    labels = small_labels(tmp_path)
    with pytest.raises(DataError, match=r"words\.csd, modality 'words', key 'features': dtype .*expected numbers"):
        align_csd(labels, [tmp_path / "words.csd"], folds=None)
    with pytest.raises(DataError, match=r"video 'vidA' is in both 'a' and 'b'"):
        align_csd(labels, [tmp_path / "labels.csd"], folds={"a": ["vidA"], "b": ["vidA"]})
