"""``pyro-mfm data``: info, convert, --help, and errors as one line with exit status 2."""

import subprocess
import sys

import numpy as np
import pytest

from pyro_mfm.cli import COMMANDS, build_parser, main
from pyro_mfm.data import embedded_path, native
from pyro_mfm.data.importers import write_csd


def test_info_on_embedded(capsys):
    assert main(["data", "info", "uci_mfeat"]) == 0
    out = capsys.readouterr().out
    assert "data set: uci_mfeat" in out and "fac          vector   shape [216]" in out
    assert "train    N=1400" in out and "fou 100.0%" in out and "0:140" in out and "CC BY 4.0" in out


def test_convert_refuses_overwrite_with_one_clean_line(tmp_path, capsys):
    out = tmp_path / "copy.h5"
    src = str(embedded_path())
    assert main(["data", "convert", "--from", "native", src, "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["data", "convert", "--from", "native", src, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "copy.h5: already exists" in err and "Traceback" not in err
    assert main(["data", "convert", "--from", "native", src, "--out", str(out), "--overwrite"]) == 0


def test_convert_pickle_needs_trust(tmp_path, capsys):
    import pickle

    rng = np.random.default_rng(0)
    split = {
        "text": rng.normal(size=(4, 3, 2)),
        "audio": rng.normal(size=(4, 3, 2)),
        "vision": rng.normal(size=(4, 2)),
        "labels": rng.normal(size=(4, 1)),
    }
    with open(tmp_path / "d.pkl", "wb") as f:
        pickle.dump({"train": split, "test": split}, f)
    args = ["data", "convert", "--from", "pickle", str(tmp_path / "d.pkl"), "--out", str(tmp_path / "d.h5")]
    assert main(args) == 2 and "--trust-pickle" in capsys.readouterr().err
    assert main(args + ["--trust-pickle"]) == 0
    assert native.load(tmp_path / "d.h5")["test"].n == 4


def test_convert_declares_the_label_range_of_npz_and_native_files(tmp_path, capsys):
    """``--label-range`` reaches the schema of npz and native inputs too; a label outside it, or a range of class
    labels, is one line with exit status 2 and no file written."""
    rng = np.random.default_rng(0)
    y = rng.uniform(-3, 3, size=12)
    np.savez(tmp_path / "d.npz", text=rng.normal(size=(12, 4)), label=y)
    out = tmp_path / "d.h5"
    assert (
        main(
            ["data", "convert", "--from", "npz", str(tmp_path / "d.npz"), "--out", str(out), "--label-range", "-3", "3"]
        )
        == 0
    )
    assert (native.load(out).schema.label.low, native.load(out).schema.label.high) == (-3.0, 3.0)
    ranged = tmp_path / "r.h5"
    assert (
        main(["data", "convert", "--from", "native", str(out), "--out", str(ranged), "--label-range", "-5", "5"]) == 0
    )
    assert native.load(ranged).schema.label.high == 5.0
    capsys.readouterr()
    tight = tmp_path / "t.h5"
    assert main(["data", "convert", "--from", "native", str(out), "--out", str(tight), "--label-range", "0", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "out of range" in err and "[0.0, 3.0]" in err and not tight.exists()
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "native",
                str(embedded_path()),
                "--out",
                str(tight),
                "--label-range",
                "0",
                "9",
            ]
        )
        == 2
    )
    assert "the label is categorical" in capsys.readouterr().err and not tight.exists()


def test_convert_csd_with_named_feature_file(tmp_path, capsys):
    write_csd(tmp_path / "labels.csd", "L", {"v": (np.array([[1.0], [2.0]]), np.array([[0.0, 1.0], [1.0, 2.0]]))})
    t = np.arange(0, 2, 0.25)
    write_csd(tmp_path / "f.csd", "F", {"v": (t[:, None], np.stack([t, t + 0.25], 1))})
    out = tmp_path / "o.h5"
    assert (
        main(
            [
                "data",
                "convert",
                "--from",
                "csd",
                str(tmp_path / "labels.csd"),
                f"acoustic={tmp_path / 'f.csd'}",
                "--out",
                str(out),
                "--steps",
                "3",
                "--folds",
                "none",
            ]
        )
        == 0
    )
    data = native.load(out)
    assert data.schema["acoustic"].shape == (3, 1) and list(data["train"].ids) == ["v[0]", "v[1]"]
    assert (
        main(["data", "convert", "--from", "csd", str(tmp_path / "labels.csd"), "--out", str(tmp_path / "p.h5")]) == 2
    )
    assert "at least one feature .csd" in capsys.readouterr().err
    # an existing --out is refused before the conversion
    assert main(["data", "convert", "--from", "csd", str(tmp_path / "labels.csd"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_convert_mfn_real(shared_datasets, tmp_path):
    out = tmp_path / "pom.h5"
    assert main(["data", "convert", "--from", "mfn", str(shared_datasets / "pom"), "--out", str(out)]) == 0
    assert [native.load(out, lazy=True)[s].n for s in ("train", "valid", "test")] == [600, 100, 203]


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "info"], ["data", "convert"]])
def test_help_on_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv + ["--help"])
    assert e.value.code == 0 and "usage: pyro-mfm" in capsys.readouterr().out


def test_commands_are_registered_from_a_list():
    assert "data" in COMMANDS
    assert "data" in build_parser().format_help()


def test_python_dash_m_reports_errors_without_traceback(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_text("not hdf5")
    r = subprocess.run([sys.executable, "-m", "pyro_mfm", "data", "info", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith("pyro-mfm: error: file ") and "bad.h5" in r.stderr and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1
