"""Configuration values of any type: every field of every table gives a valid configuration or a ConfigError that
names the table, the key, the value and what was expected (validation only; one small training at the edges)."""

import dataclasses
import json
import math
import types
import typing

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_mfm.cli import main
from pyro_mfm.config import MAX_WIDTH, SELECT_METRICS, TABLES, Config, ConfigError
from pyro_mfm.data import from_arrays
from pyro_mfm.infer import fit
from pyro_mfm.infer.metrics import HIGHER_IS_BETTER
from pyro_mfm.infer.train import resolve_device

FIELDS = [(name, f) for cls, name in TABLES.items() for f in dataclasses.fields(cls)]
HINTS = {name: typing.get_type_hints(cls) for cls, name in TABLES.items()}
CHOICES = sorted(
    {
        c
        for name, f in FIELDS
        for t in [HINTS[name][f.name]]
        if typing.get_origin(t) is typing.Literal
        for c in typing.get_args(t)
    }
)

NUMBERS = st.one_of(
    st.integers(),
    st.integers(-3, 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-2, 2),
    st.integers(2**31, 2**70),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=12),
    st.sampled_from(CHOICES),
    st.sampled_from(["auto", "cpu", "cuda:0", "gpu", "", " train", "embedded:uci_mfeat", "1e8"]),
    st.complex_numbers(max_magnitude=5),
    st.binary(max_size=4),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 3)), SCALARS, max_size=3),
)


def _stored_ok(value, tp) -> bool:
    """Whether an accepted value is stored with the declared type (numbers finite, no bool for a number)."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_stored_ok(value, t) for t in typing.get_args(tp))
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and _stored_ok(v, typing.get_args(tp)[1]) for k, v in value.items()
        )
    if tp is float:
        return type(value) is float and math.isfinite(value)
    return type(value) is tp


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(FIELDS), VALUES, st.booleans())
def test_any_value_of_any_field_is_valid_or_a_clear_error(field, value, as_override):
    table, f = field
    try:
        if as_override:  # as a command line gives it: the text of the value, parsed like --set does
            cfg = Config().override([f"{table}.{f.name}={value!r}"])
        else:  # as a TOML file or a checkpoint's config.json gives it
            cfg = Config.from_dict({table: {f.name: value}}, where="file.toml")
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and f"{table}.{f.name} = " in msg and ": expected " in msg, msg
        if not as_override:
            assert msg.startswith("file.toml: ")
        return
    stored = getattr(getattr(cfg, table), f.name)
    assert _stored_ok(stored, HINTS[table][f.name]), (table, f.name, value, stored)
    # what config.json holds: strict JSON that reads back to the same configuration
    text = json.dumps(cfg.to_dict(), allow_nan=False)
    assert Config.from_dict(json.loads(text)).to_dict() == cfg.to_dict()


def test_every_field_declares_a_type_and_every_number_a_range():
    for table, f in FIELDS:
        tp = HINTS[table][f.name]
        assert tp is not typing.Any, f"{table}.{f.name}"
        numeric = {int, float} & set(typing.get_args(tp) + (tp,))
        if numeric:
            assert any(f.metadata.get(k) is not None for k in ("ge", "gt")), f"{table}.{f.name} has no lower bound"
        if int in numeric and f.name != "seed":
            assert any(f.metadata.get(k) is not None for k in ("le", "lt")), f"{table}.{f.name} has no upper bound"


def test_select_metric_choices_are_the_metrics_with_a_known_direction():
    assert set(SELECT_METRICS) == set(HIGHER_IS_BETTER) | {"auto"}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.epochs='ten'", "train.epochs = 'ten': expected an integer in [1, "),
        ("train.epochs=ten", "train.epochs = 'ten': expected an integer"),
        ("train.epochs=3.5", "train.epochs = 3.5: expected an integer"),
        ("train.epochs=true", "train.epochs = True: expected an integer"),
        ("model.z_y_dim=-3", "model.z_y_dim = -3: expected an integer in [1, "),
        ("model.z_y_dim=0", "model.z_y_dim = 0: expected an integer in [1, "),
        ("train.lr=0", "train.lr = 0: expected a finite number in (0, "),
        ("train.lr=-1", "train.lr = -1: expected a finite number in (0, "),
        ("train.lr=nan", "train.lr = 'nan': expected a finite number"),
        ("train.lr=1e999", "train.lr = inf: expected a finite number"),
        ("train.batch_size=0", "train.batch_size = 0: expected an integer in [1, "),
        ("evaluate.batch_size=0", "evaluate.batch_size = 0: expected an integer in [1, "),
        ("model.dropout=1.5", "model.dropout = 1.5: expected a finite number in [0, 1)"),
        ("train.seed=-1", "train.seed = -1: expected an integer in [0, 4294967295]"),
        ("train.device=tpu", "train.device = 'tpu': expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("evaluate.interval=1.5", "evaluate.interval = 1.5: expected a finite number in (0, 1)"),
        ("model.hidden=1e8", f"model.hidden = 100000000.0: expected an integer in [1, {MAX_WIDTH}]"),
        ("model.hidden=100000000", f"model.hidden = 100000000: expected an integer in [1, {MAX_WIDTH}]"),
        ("model.z_a_dim={'a': 0}", "model.z_a_dim = {'a': 0}: expected an integer in [1, 8192] or a table of modality"),
        ("train.select_metric=acc", "train.select_metric = 'acc': expected one of 'auto', 'accuracy'"),
        ("train.progress=2", "train.progress = 2: expected true or false"),
        ("data.train_split=''", "data.train_split = '': expected a non-empty split name"),
    ],
)
def test_the_reported_values_are_clear_errors(override, expected):
    with pytest.raises(ConfigError) as e:
        Config().override([override])
    assert expected in str(e.value)


def test_integers_for_floats_are_stored_as_floats_and_tables_per_modality_are_kept():
    cfg = Config().override(["train.lr=1", "model.lambda_x={'a': 1, 'b': 0.5}", "model.z_a_dim={'a': 2}"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.model.lambda_x == {"a": 1.0, "b": 0.5} and cfg.model.z_a_dim == {"a": 2}


def test_a_configuration_changed_in_python_is_checked_by_fit():
    cfg = Config()
    cfg.train.epochs = "ten"
    with pytest.raises(ConfigError, match="train.epochs = 'ten'"):
        fit(cfg, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="train.device = 'cuda': CUDA is not available on this machine"):
        resolve_device("cuda")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\ndevice = "cuda:1"\nprogress = false\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CUDA is not available" in err


def test_the_smallest_accepted_values_train(tmp_path):
    """The lower edges of the ranges give a correct (tiny) run, not an error from deep inside torch."""
    rng = np.random.default_rng(0)
    n = 12
    data = from_arrays(
        {"a": rng.normal(size=(n, 2)), "b": rng.normal(size=(n, 3))},
        rng.integers(0, 2, n),
        label_kind="categorical",
        split={"train": np.arange(8), "valid": np.arange(8, 12)},
    )
    cfg = Config().override(
        [
            "train.progress=False",
            "model.z_y_dim=1",
            "model.z_a_dim=1",
            "model.f_y_dim=1",
            "model.f_a_dim=1",
            "model.hidden=1",
            "model.dropout=0.99",
            "model.label_samples=1",
            "model.label_subsets=1",
            "train.epochs=1",
            "train.batch_size=1",
            "train.kl_warmup=0",
            "train.valid_samples=1",
            "train.lr=1e-12",
            "train.clip_norm=0",
            "train.modality_dropout=1",
            "train.keep_last=0",
            "train.patience=0",
            "train.num_threads=0",
            "evaluate.batch_size=1",
            "evaluate.interval=0.01",
            "train.seed=4294967295",
        ]
    )
    result = fit(cfg, data, tmp_path / "run")
    assert np.isfinite(result.history[-1]["train_loss"])


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-config")
    path = root / "c.toml"
    path.write_text('[data]\nsource = "embedded:uci_mfeat"\n[train]\nprogress = false\n')
    return path


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(FIELDS), VALUES)
def test_any_set_on_the_command_line_is_a_run_or_one_line(cli_config, field, value):
    """``pyro-mfm train --set table.key=VALUE`` up to the training itself (replaced by a stub): status 0, or 2 with
    one line and no traceback."""
    import contextlib
    import io
    from unittest import mock

    from pyro_mfm.infer import train as train_module

    table, f = field
    done = mock.Mock(
        interrupted="", resumed=None, best={"epoch": 0, "loss": 1.0}, averaged={}, members=[]
    )  # a fresh run's result
    err = io.StringIO()
    with (
        mock.patch.object(train_module, "fit", mock.Mock(return_value=done)) as fit_stub,
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        status = main(
            ["train", str(cli_config), "--out", str(cli_config.parent / "run"), "--set", f"{table}.{f.name}={value!r}"]
        )
    text = err.getvalue()
    if status == 0:
        assert fit_stub.called and text == ""
    else:
        assert status == 2 and text.startswith("pyro-mfm: error: ") and text.count("\n") == 1, text
