"""The benchmark command runs in quick mode, prints its tables, and its equality checks (the plain-PyTorch and
step-by-step losses equal the library's at the same parameters and draws) hold. No timing is asserted."""

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import plain, setups, stepwise  # noqa: E402
from benchmarks.timing import Clock, interleaved, summarise  # noqa: E402
from pyro_mfm.infer.objective import Objective  # noqa: E402


def test_quick_benchmark_prints_every_table_and_the_equalities_hold():
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    for heading in (
        "## 1. Pyro overhead",
        "## 2. Training throughput",
        "## 3. Prediction and imputation",
        "## 4. Scaling",
    ):
        assert heading in text
    assert "| UCI vectors | Pyro objective (library), validation off |" in text
    assert "| MOSI sequences (wae) | plain PyTorch, validation on |" in text
    assert "| predict, observed all (100 draws), medium |" in text  # train.matmul_precision = "medium" too
    assert "| MMSA's sizes | total |" in text and "| the paper's sizes | batch 16 |" in text
    assert text.count("relative difference") == 5  # section 1's three setups, section 2's two configurations
    assert "ALL EQUALITY CHECKS PASSED" in text


@pytest.mark.parametrize("objective, missing", [("wae", 0.0), ("wae", 0.3), ("elbo", 0.3)])
def test_plain_losses_equal_the_objective_with_gradients(objective, missing):
    s = setups.mosi(objective, batch_size=12, missing=missing, quick=True)
    mfm = s.mfm.double().eval()
    batch = replace(s.batch, x={m: v.double() for m, v in s.batch.x.items()}, y=s.batch.y.double())
    params = [p for p in mfm.parameters()]
    torch.manual_seed(0)
    a = Objective(mfm)(batch)
    ga = torch.autograd.grad(a, params, allow_unused=True)
    losses = [plain.loss_fn(mfm)] + ([stepwise.wae_loss] if objective == "wae" else [])
    for fn in losses:
        torch.manual_seed(0)
        b = fn(mfm, batch)
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-8)
        gb = torch.autograd.grad(b, params, allow_unused=True)
        for x, y in zip(ga, gb):
            if x is None or y is None:
                assert (x is None or not x.any()) and (y is None or not y.any())
            else:
                torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-10)


def test_uci_plain_elbo_equals_the_objective():
    s = setups.uci(batch_size=16, quick=True)
    mfm = s.mfm.eval()
    torch.manual_seed(1)
    a = Objective(mfm)(s.batch)
    torch.manual_seed(1)
    torch.testing.assert_close(a, plain.elbo_loss(mfm, s.batch), rtol=1e-5, atol=1e-4)


def test_timing_helpers_on_cpu():
    assert not Clock("cpu").cuda
    t = summarise([3.0, 1.0, 2.0, 4.0, 5.0])
    assert (t.median, t.q1, t.q3) == (3.0, 2.0, 4.0)
    calls = []
    out = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, "cpu", reps=2, warmup=1)
    assert calls == ["a", "b"] * 3 and set(out) == {"a", "b"}


def test_cuda_device_is_refused_cleanly_without_a_gpu():
    if torch.cuda.is_available():
        assert Clock("cuda").cuda
        return
    with pytest.raises(SystemExit, match="no CUDA device"):
        setups.to_device("cuda")
