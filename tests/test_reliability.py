"""Fault tolerance of training: interrupts (a signal in-process, SIGTERM to a real `pyro-mfm train`), exact resume,
rotation of epoch checkpoints, fallback from a damaged last.pt, divergence (stop and skip), determinism."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import LinearGaussianMFM, load_data, save
from pyro_mfm.infer import CheckpointError, fit
from pyro_mfm.infer import train as train_module
from pyro_mfm.infer.checkpoint import epoch_checkpoints, folder_lock, read_resume
from pyro_mfm.infer.faults import DivergenceError, StopRequested
from pyro_mfm.infer.objective import Objective
from pyro_mfm.infer.processes import ProcessEnded, run_in_processes

TINY = [
    "train.progress=False",
    "train.ensemble=1",
    "model.z_y_dim=2",
    "model.z_a_dim=2",
    "model.hidden=16",
    "model.f_y_dim=8",
    "model.f_a_dim=4",
    "train.epochs=3",
    "train.kl_warmup=1",
    "train.batch_size=16",
    "train.valid_samples=2",
    "train.num_threads=1",
]


@pytest.fixture(scope="module")
def data():
    gen = LinearGaussianMFM.random({"a": 3, "b": 4}, z_y_dim=2, label="regression", seed=0)
    return gen.sample({"train": 96, "valid": 24}, missing=0.2, seed=0)


def weights(path):
    return torch.load(path, weights_only=False)


def assert_same_run(a, b):
    """Two checkpoints hold bit-identical weights and optimizer state, and the same training log."""
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["state"]["optimizer"]["state"], b["state"]["optimizer"]["state"]
    for i in sa:
        for k in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["state"]["history"] == b["state"]["history"]


def signal_at_call(monkeypatch, k, signum=signal.SIGTERM):
    """Deliver ``signum`` to this process during the ``k``-th training objective call (a step in flight)."""
    calls = {"n": 0}
    original = Objective.__call__

    def call(self, batch, **kwargs):
        if self.mfm.training:
            calls["n"] += 1
            if calls["n"] == k:
                os.kill(os.getpid(), signum)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(Objective, "__call__", call)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_epoch_saves_and_resume_is_bit_identical(data, tmp_path, monkeypatch, signum):
    cfg = Config().override(TINY)
    fit(cfg, data, tmp_path / "full")
    signal_at_call(monkeypatch, 9, signum)  # 6 steps per epoch: step 3 of epoch 2
    cut = fit(cfg, data, tmp_path / "cut")
    assert cut.interrupted == signal.Signals(signum).name
    stopped = weights(tmp_path / "cut" / "last.pt")["state"]
    assert stopped["position"]["epoch"] == 1 and stopped["position"]["step"] == 3
    assert signal.getsignal(signum) is not None  # handlers restored
    monkeypatch.undo()
    fit(cfg, data, tmp_path / "cut", resume=True)
    assert_same_run(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    assert (tmp_path / "full" / "log.jsonl").read_text() == (tmp_path / "cut" / "log.jsonl").read_text()


def test_keep_last_and_fallback_from_a_damaged_last_checkpoint(data, tmp_path):
    cfg = Config().override(TINY + ["train.epochs=4", "train.keep_last=2"])
    fit(cfg, data, tmp_path / "full")
    fit(cfg.override(["train.epochs=3"]), data, tmp_path / "cut")
    assert [p.name for p in epoch_checkpoints(tmp_path / "cut")] == ["epoch-0002.pt", "epoch-0003.pt"]
    last = tmp_path / "cut" / "last.pt"
    raw = last.read_bytes()
    last.write_bytes(raw[: len(raw) // 3])  # truncated, e.g. by a full disk or a partial copy
    with pytest.warns(RuntimeWarning, match=r"resuming from .*epoch-0003\.pt: checkpoint .*last\.pt is corrupt"):
        fit(cfg, data, tmp_path / "cut", resume=True)
    assert_same_run(weights(tmp_path / "full" / "last.pt"), weights(last))
    # nothing readable at all: one clear error naming every file tried
    for p in [last, *epoch_checkpoints(tmp_path / "cut")]:
        p.write_bytes(b"\0" * 100)
    with pytest.raises(CheckpointError, match=r"no checkpoint to resume from .*last\.pt.*epoch-0004\.pt"):
        read_resume(tmp_path / "cut")


def test_resume_with_other_data_is_refused(data, tmp_path):
    cfg = Config().override(TINY + ["train.epochs=1"])
    fit(cfg, data, tmp_path)
    other = LinearGaussianMFM.random({"a": 3, "c": 4}, z_y_dim=2, label="regression", seed=0).sample(
        {"train": 32}, seed=0
    )
    with pytest.raises(CheckpointError, match="another schema"):
        fit(cfg, other, tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        fit(cfg, data, tmp_path / "empty", resume=True)


def poison(monkeypatch, sample, value=float("nan"), modality="a"):
    """Training steps whose batch contains ``sample`` see ``value`` in its modality ``modality``."""
    original = train_module.drop_modalities

    def drop(batch, *args, **kwargs):
        b = original(batch, *args, **kwargs)
        b.x[modality][b.index == sample] = value
        return b

    monkeypatch.setattr(train_module, "drop_modalities", drop)


@pytest.mark.parametrize(
    "value, expected",
    [
        (float("nan"), "observed site 'x_a': non-finite data in samples [{}]"),  # never reaches the networks
        (
            1e30,
            "guide raised before its first site in samples [{}]: _LinAlgError: linalg.cholesky",
        ),  # finite, but overflows
    ],
)
def test_divergence_stops_names_site_and_sample_and_keeps_the_last_good_state(
    data, tmp_path, monkeypatch, value, expected
):
    cfg = Config().override(TINY)
    sample = int(np.flatnonzero(data["train"].present["a"])[5])
    poison(monkeypatch, sample, value)
    with pytest.raises(DivergenceError) as err:
        fit(cfg, data, tmp_path)
    msg = str(err.value)
    assert msg.startswith("non-finite loss at epoch 1, step ")
    assert expected.format(sample) in msg
    saved = weights(tmp_path / "last.pt")
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    step = saved["state"]["position"]["step"]
    order = np.random.default_rng(cfg.train.seed * 100003).permutation(len(data["train"]))
    assert sample in order[step * 16 : (step + 1) * 16]  # the checkpoint is the state before the bad step


def test_non_finite_log_density_is_named_by_site(data, monkeypatch):
    """A decoder bias of modality b turned to inf on the 5th step: the model's site x_b has a non-finite
    log-density for every sample that observes b, and the report says so."""
    calls = {"n": 0}
    original = Objective.__call__

    def call(self, batch, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            with torch.no_grad():
                self.mfm.model.F["b"].net[4].bias.fill_(float("inf"))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(Objective, "__call__", call)
    with pytest.raises(DivergenceError) as err:
        fit(Config().override(TINY), data)
    assert "model site 'x_b': non-finite log-density in samples [" in str(err.value)
    assert "guide" not in str(err.value)


def test_divergence_skip_drops_the_step_and_goes_on(data, tmp_path, monkeypatch):
    cfg = Config().override(TINY + ["train.on_divergence='skip'"])
    poison(monkeypatch, int(np.flatnonzero(data["train"].present["a"])[0]))
    with pytest.warns(RuntimeWarning, match="non-finite loss"):
        result = fit(cfg, data, tmp_path)
    assert len(result.skipped) == 3  # the poisoned sample is in one batch per epoch
    assert [r["skipped_steps"] for r in result.history] == [1, 1, 1]
    assert all(torch.isfinite(p).all() for p in result.mfm.parameters())


def test_a_nan_objective_everywhere_stops_with_a_clear_error(data, tmp_path, monkeypatch):
    monkeypatch.setattr(
        Objective, "__call__", lambda self, b, **kwargs: sum(p.sum() for p in self.mfm.parameters()) * np.nan
    )
    with (
        pytest.raises(DivergenceError, match="every step of epoch 1"),
        pytest.warns(RuntimeWarning, match="non-finite loss at epoch 1, step"),
    ):
        fit(Config().override(TINY + ["train.on_divergence='skip'"]), data)


def test_same_seed_same_bytes(data, tmp_path):
    cfg = Config().override(TINY + ["train.epochs=2", "train.device='cpu'"])
    fit(cfg, data, tmp_path / "a")
    fit(cfg, data, tmp_path / "b")
    for name in ("last.pt", "best.pt", "epoch-0002.pt", "log.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    fit(cfg.override(["train.seed=1"]), data, tmp_path / "c")
    assert (tmp_path / "a" / "last.pt").read_bytes() != (tmp_path / "c" / "last.pt").read_bytes()


CLI_CONFIG = """
[data]
source = "data.h5"
[model]
z_y_dim = 2
z_a_dim = 2
f_y_dim = 8
f_a_dim = 4
hidden = 16
[train]
ensemble = 1
epochs = 3
kl_warmup = 1
batch_size = 4
valid_samples = 2
progress = false
num_threads = 1
device = "cpu"
"""


def _wait_for(paths, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while not all(p.exists() for p in paths) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)


def test_sigterm_to_a_real_training_process_then_resume(data, tmp_path):
    """Kill `pyro-mfm train` with SIGTERM while it trains; it saves and exits 143; `--resume` then ends on the
    same bytes of weights and optimizer state as an uninterrupted run."""
    save(data, tmp_path / "data.h5")
    (tmp_path / "tiny.toml").write_text(CLI_CONFIG)
    cmd = [sys.executable, "-m", "pyro_mfm", "train", str(tmp_path / "tiny.toml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = Config.load(tmp_path / "tiny.toml")
    fit(config, load_data(config), tmp_path / "full")  # uninterrupted, in this process: the same arithmetic
    proc = subprocess.Popen(
        cmd + ["--out", str(tmp_path / "cut")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _wait_for([tmp_path / "cut" / "epoch-0001.pt"], proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    stopped = weights(tmp_path / "cut" / "last.pt")["state"]
    assert stopped["epoch"] < 2  # it really stopped early
    resumed = subprocess.run(
        cmd + ["--out", str(tmp_path / "cut"), "--resume"], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(weights(tmp_path / "full" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))


def _released(folder, seconds=60) -> bool:
    """Whether the lock of a run folder is free within ``seconds`` (the process training into it has ended)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            with folder_lock(folder):
                return True
        except CheckpointError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _two_members_in_processes(data, tmp_path):
    """A `pyro-mfm train` command (and its environment) of two members trained at once in processes of their own,
    6 epochs, on ``data`` saved in ``tmp_path``; the same run uninterrupted, one member after the other in this
    process, trained into ``tmp_path / "full"``."""
    save(data, tmp_path / "data.h5")
    toml = CLI_CONFIG.replace("ensemble = 1", "ensemble = 2\nensemble_processes = 2").replace(
        "epochs = 3", "epochs = 6"
    )
    (tmp_path / "tiny.toml").write_text(toml)
    cmd = [sys.executable, "-m", "pyro_mfm", "train", str(tmp_path / "tiny.toml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = Config.load(tmp_path / "tiny.toml", ["train.ensemble_processes=1"])
    fit(config, load_data(config), tmp_path / "full")
    return cmd, env


def test_an_ensemble_trained_in_processes_stops_on_sigterm_and_on_kill_9_then_resumes(data, tmp_path):
    """Two members trained at once in processes of their own (`train.ensemble_processes = 2`). SIGTERM to the
    command stops both members at a step boundary after a checkpoint (exit status 143); `kill -9` of the command
    leaves its member processes to stop the same way and end. Either way `--resume` (in member processes after
    SIGTERM, one member after the other after kill -9) ends on the same bytes of weights and optimizer state in
    every member as an uninterrupted run of one member after the other, in this process."""
    cmd, env = _two_members_in_processes(data, tmp_path)
    for how in (signal.SIGTERM, signal.SIGKILL):
        out = tmp_path / how.name
        proc = subprocess.Popen(
            cmd + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        _wait_for([out / f"member-{k}" / "last.pt" for k in (0, 1)], proc)  # each has trained an epoch
        proc.send_signal(how)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == (128 + how if how == signal.SIGTERM else -how), err
        if how == signal.SIGTERM:
            assert "stopped by SIGTERM" in err and "Traceback" not in err
        for k in (0, 1):
            assert _released(out / f"member-{k}")  # the member's process has ended
            assert weights(out / f"member-{k}" / "last.pt")["state"]["epoch"] < 6  # it really stopped early
        resume = ["--out", str(out), "--resume"] + (
            ["--set", "train.ensemble_processes=1"] if how == signal.SIGKILL else []
        )
        resumed = subprocess.run(cmd + resume, capture_output=True, text=True, env=env)
        assert resumed.returncode == 0, resumed.stderr
        for k in (0, 1):
            full, again = (weights(root / f"member-{k}" / "last.pt") for root in (tmp_path / "full", out))
            assert_same_run(full, again)


def _killed_or_waiting(folder, name):
    """A call of ``run_in_processes``: "killed" kills its own process with SIGKILL once the other call is running;
    the other waits for a stop (at most 60 s), records the signal that stopped it, and returns a result larger than
    a pipe's buffer, as a trained model is."""
    folder = Path(folder)
    if name == "killed":
        deadline = time.monotonic() + 60
        while not (folder / "waiting").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGKILL)
    with StopRequested() as stop:
        (folder / "waiting").touch()
        deadline = time.monotonic() + 60
        while stop.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)
    (folder / "stopped").write_text(stop.name or "not stopped")
    return bytes(1 << 20)


@pytest.mark.parametrize("first", ["killed", "waiting"])
def test_a_process_killed_in_a_call_stops_the_others_once_and_is_named(tmp_path, first):
    """A process of ``run_in_processes`` killed in the middle of its call (as the out-of-memory killer does) ends
    the run with ``ProcessEnded`` naming that call, after the other call was stopped by one SIGTERM (a second would
    interrupt it without its checkpoint) and its process ended, though its result does not fit a pipe. Both orders
    of the calls: the pool watches the processes it knew of when it last woke, which may not include the second."""
    calls = [(name, (str(tmp_path), name)) for name in ([first] + [n for n in ("killed", "waiting") if n != first])]
    with pytest.raises(ProcessEnded) as raised:
        run_in_processes(_killed_or_waiting, calls, 2)
    assert raised.value.ended == ["killed (killed by SIGKILL)"]
    assert "killed (killed by SIGKILL): its process ended in the middle of the call" in str(raised.value)
    assert (tmp_path / "stopped").read_text() == "SIGTERM"


def _member_processes_of(pid: int) -> list[int]:
    """The processes started by ``multiprocessing``'s spawn whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and b"spawn_main" in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the member processes in /proc")
def test_a_member_process_killed_is_one_line_and_the_run_resumes(data, tmp_path):
    """`kill -9` of one member's process (the out-of-memory killer's way) while two members train at once: the
    command stops the other member after a checkpoint and exits with status 1 and one line naming the member, no
    traceback; `--resume` then ends on the bytes of an uninterrupted run."""
    cmd, env = _two_members_in_processes(data, tmp_path)
    out = tmp_path / "cut"
    proc = subprocess.Popen(
        cmd + ["--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    _wait_for([out / f"member-{k}" / "last.pt" for k in (0, 1)], proc)  # each has trained an epoch
    members = _member_processes_of(proc.pid)
    assert len(members) == 2, members
    os.kill(members[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    error = [line for line in err.splitlines() if line.startswith("pyro-mfm: error:")]
    assert len(error) == 1 and "Traceback" not in err, err
    assert "(killed by SIGKILL) ended in the middle of training" in error[0] and "--resume" in error[0], err
    for k in (0, 1):
        assert _released(out / f"member-{k}")
    resumed = subprocess.run(
        cmd + ["--out", str(out), "--resume", "--set", "train.ensemble_processes=1"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr
    for k in (0, 1):
        assert_same_run(*(weights(root / f"member-{k}" / "last.pt") for root in (tmp_path / "full", out)))
