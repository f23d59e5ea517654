"""The four measurements of ``benchmarks/run.py``; each returns Markdown table rows."""

from __future__ import annotations

import numpy as np
import pyro
import torch
from pyro.infer import JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_mfm.data.builtin import load_embedded
from pyro_mfm.infer.device import matmul_precision
from pyro_mfm.infer.evaluate import evaluate
from pyro_mfm.infer.objective import Objective
from pyro_mfm.infer.predict import impute, predict
from pyro_mfm.infer.run import default_optimizer

from . import plain, setups, stepwise
from .timing import interleaved, matmul_ms, peak_memory


def train_step(mfm, loss_fn, validate: bool = True, reference: bool = False):
    """One optimisation step: forward, backward, Adam (the library's, :func:`default_optimizer`; with ``reference``
    torch's default Adam, as the public code steps)."""
    opt = torch.optim.Adam(mfm.parameters(), lr=1e-3) if reference else default_optimizer(mfm, 1e-3)

    def step():
        with pyro.validation_enabled(validate):  # Pyro's and torch's distribution checks
            loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def check_equal(name: str, a_fn, b_fn, mfm, seed: int = 3, rtol: float = 1e-5) -> str:
    """Assert that two losses agree at the same parameters and the same random draws (eval mode: no dropout)."""
    was = mfm.training
    mfm.eval()
    torch.manual_seed(seed)
    a = a_fn().detach()
    torch.manual_seed(seed)
    b = b_fn().detach()
    mfm.train(was)
    rel = float((a - b).abs() / b.abs().clamp(min=1e-12))
    if not rel <= rtol:
        raise AssertionError(f"{name}: losses differ: {float(a)} vs {float(b)} (relative {rel:.2e})")
    return f"{name}: {float(a):.6g} = {float(b):.6g} (relative difference {rel:.1e})"


def overhead(device, reps, warmup, quick, checks: list) -> list:
    """Pyro's objective against the plain-PyTorch loss of the same networks and terms, one training step each."""
    rows = []
    for s in (
        setups.uci(device=device, quick=quick),
        setups.mosi("wae", device=device, missing=0.2, quick=quick),
        setups.mosi("elbo", device=device, missing=0.2, quick=quick),
    ):
        mfm, batch = s.mfm, s.batch
        obj = Objective(mfm)
        fn = plain.loss_fn(mfm)
        checks.append(
            check_equal(f"{s.name}: Pyro objective = plain PyTorch", lambda: obj(batch), lambda: fn(mfm, batch), mfm)
        )
        # training validates the first step only (train.validate = "first"): every later step is the row
        # "validation off"; the rows "validation on" are train.validate = "always"
        variants = {
            "plain PyTorch, validation off": train_step(mfm, lambda: fn(mfm, batch), False),
            "Pyro objective (library), validation off": train_step(mfm, lambda: obj(batch), False),
            "plain PyTorch, validation on": train_step(mfm, lambda: fn(mfm, batch)),
            "Pyro objective (library), validation on": train_step(mfm, lambda: obj(batch)),
        }
        if mfm.config.objective == "elbo":
            pyros = Objective(mfm)
            pyros.elbo = TraceMeanField_ELBO(max_plate_nesting=1)
            variants["Pyro, its TraceMeanField_ELBO, validation off"] = train_step(mfm, lambda: pyros(batch), False)
        if mfm.config.objective == "elbo":
            mc = Objective(mfm)
            mc.elbo = Trace_ELBO(max_plate_nesting=1)
            variants["Pyro, Trace_ELBO (Monte Carlo KL), validation off"] = train_step(mfm, lambda: mc(batch), False)
            if not quick:
                jit = Objective(mfm)
                jit.elbo = JitTraceMeanField_ELBO(max_plate_nesting=1, ignore_jit_warnings=True)
                try:
                    train_step(mfm, lambda: jit(batch), False)()
                    variants["Pyro, JitTraceMeanField_ELBO"] = train_step(mfm, lambda: jit(batch), False)
                except Exception as e:  # noqa: BLE001 - recorded in the table
                    rows.append([s.name, "Pyro, JitTraceMeanField_ELBO", f"fails: {type(e).__name__}", "", ""])
        mfm.train()
        t = interleaved(variants, device, reps, warmup)
        for name, timing in t.items():
            base = t["plain PyTorch, validation on" if "validation on" in name else "plain PyTorch, validation off"]
            rows.append([s.name, name, timing.ms(), f"{timing.median / base.median:.2f}", ""])
    return rows


# the MOSI configurations of section 2: MMSA's port's networks and the authors'
THROUGHPUT_CONFIGS = {"MMSA's sizes": "mfm-mmsa-mosi.toml", "the paper's sizes": "mfm-paper-mosi.toml"}


def parameters(quick) -> list:
    """Parameters by part of each configuration of section 2: the library's networks, and the public MFM code's
    network at the same widths (:func:`setups.reference_parameter_counts`)."""
    rows = []
    for label, name in THROUGHPUT_CONFIGS.items():
        s = setups.mosi("wae", quick=quick, config=name)
        ours = setups.parameter_counts(s.mfm)
        ref = setups.reference_parameter_counts(setups.Config.load(setups.MODELS / name), setups.MOSI_DIMS)
        for part in [*ours, "total"]:
            a = sum(ours.values()) if part == "total" else ours[part]
            b = sum(ref.values()) if part == "total" else ref[part]
            if quick:  # tiny networks: the reference at the configuration's widths is not what was built
                rows.append([label, part, "", f"{a:,}", ""])
            else:
                rows.append([label, part, f"{b:,}", f"{a:,}", f"{a / b:.2f}"])
    return rows


def throughput(device, reps, warmup, quick, checks: list) -> list:
    """Training samples per second, the library's ``wae`` step against the step-by-step reference's, for each
    configuration of :data:`THROUGHPUT_CONFIGS`."""
    rows = []
    for (label, name), size in [(c, b) for c in THROUGHPUT_CONFIGS.items() for b in ((16,) if quick else (32, 64))]:
        s = setups.mosi("wae", batch_size=size, device=device, quick=quick, config=name)
        mfm, batch = s.mfm, s.batch
        obj = Objective(mfm)
        checks.append(
            check_equal(
                f"MOSI wae, {label}, batch {size}: library = step-by-step reference",
                lambda: obj(batch),
                lambda: stepwise.wae_loss(mfm, batch),
                mfm,
            )
        )
        t = interleaved(
            {
                "library": train_step(mfm, lambda: obj(batch), False),  # as trained after the first step
                "reference": train_step(mfm, lambda: stepwise.wae_loss(mfm, batch), False, reference=True),
            },
            device,
            reps,
            warmup,
        )
        lib, ref = t["library"], t["reference"]
        mem = {
            k: peak_memory(f, device)
            for k, f in (
                ("library", train_step(mfm, lambda: obj(batch))),
                ("reference", train_step(mfm, lambda: stepwise.wae_loss(mfm, batch), reference=True)),
            )
        }
        if device.type == "cpu":  # the speed-up if the library did nothing but its matrix products
            bound = f"{ref.median / (1e-3 * matmul_ms(train_step(mfm, lambda: obj(batch), False))):.2f}"
        rows.append(
            [
                label,
                f"batch {size}",
                f"{size / ref.median:.0f} ({ref.ms()} ms)",
                f"{size / lib.median:.0f} ({lib.ms()} ms)",
                f"{ref.median / lib.median:.2f}",
                bound if device.type == "cpu" else mem["library"],
            ]
        )
    return rows


def inference(device, reps, warmup, quick) -> list:
    """Prediction and imputation throughput from subsets of observed modalities, and their peak memory."""
    rows = []
    n, samples = (32, 2) if quick else (512, 20)
    for s, subsets in (
        (setups.mosi("wae", device=device, quick=quick), (None, ("text",), ("audio", "vision"))),
        (setups.uci(device=device, quick=quick), (None, ("fou", "pix"))),
    ):
        mfm = s.mfm.eval()
        ds = s.data["train"].subset(np.arange(min(n, len(s.data["train"]))))
        fns = {}
        for obs in subsets:
            label = "all" if obs is None else "+".join(obs)
            fns[f"predict, observed {label}"] = lambda obs=obs: predict(
                mfm, ds, obs, num_samples=samples, batch_size=256, keep_samples=False
            )
            fns[f"impute, observed {label}"] = lambda obs=obs: impute(mfm, ds, obs, num_samples=samples, batch_size=256)
        t = interleaved(fns, device, max(3, reps // 4), 1)
        for name, timing in t.items():
            rows.append(
                [
                    s.name.split(" (")[0],
                    name,
                    f"{len(ds) / timing.median:.0f}",
                    timing.ms(),
                    peak_memory(fns[name], device),
                ]
            )
    return rows + test_split(device, reps, quick)


def test_split(device, reps, quick) -> list:
    """The UCI test split as the main job sees it (400 samples, every view recorded, 100 draws): prediction from all
    views, imputation of fou and pix from the rest, and :func:`evaluate` of all 63 subsets against one subset of
    five views (the ratio is the cost of sharing, or not, the work across subsets). Prediction and imputation also
    with ``train.matmul_precision = "medium"`` (the rows marked so)."""
    s = setups.uci(device=device, quick=quick)
    mfm = s.mfm.eval()
    ds = load_embedded()["test"]
    draws = 4 if quick else 100
    rest = [m for m in ds.schema.names if m not in ("fou", "pix")]
    one = [tuple(ds.schema.names[:5])]

    def medium(fn):
        def run():
            with matmul_precision("medium"):
                fn()

        return run

    fns = {
        "predict, observed all (100 draws)": lambda: predict(mfm, ds, None, num_samples=draws, keep_samples=False),
        "impute fou, pix (100 draws)": lambda: impute(mfm, ds, rest, num_samples=draws),
        "predict, observed all (100 draws), medium": medium(
            lambda: predict(mfm, ds, None, num_samples=draws, keep_samples=False)
        ),
        "impute fou, pix (100 draws), medium": medium(lambda: impute(mfm, ds, rest, num_samples=draws)),
        "evaluate 1 subset (5 views)": lambda: evaluate(mfm, ds, one, num_samples=draws, progress=False),
        "evaluate all 63 subsets": lambda: evaluate(mfm, ds, num_samples=draws, progress=False),
    }
    t = interleaved(fns, device, 1 if quick else max(3, reps // 5), 1)
    rows = []
    for name, timing in t.items():
        rate = f"{len(ds) / timing.median:.0f}" if not name.startswith("evaluate") else ""
        if name == "evaluate all 63 subsets":
            rate = f"{timing.median / t['evaluate 1 subset (5 views)'].median:.1f}x one subset"
        rows.append(["UCI test split (400)", name, rate, timing.ms(), ""])
    return rows


def scaling(device, reps, warmup, quick) -> list:
    """Step time of the library's ``wae`` step against batch size, sequence length and number of modalities."""
    rows = []
    small = quick
    grids = {
        "batch size": [{"batch_size": b} for b in ((8, 16, 32) if small else (16, 32, 64, 128))],
        "steps T": [{"T": T} for T in ((2, 4, 6) if small else (5, 10, 20, 40))],
        "modalities M": [
            {"dims": dict(list({"text": 300, "audio": 5, "vision": 20, "extra": 20}.items())[:M])}
            for M in ((1, 2, 3) if small else (1, 2, 3, 4))
        ],
    }
    for axis, grid in grids.items():
        steps = {}
        for kw in grid:
            size = kw.get("batch_size") or kw.get("T") or len(kw["dims"])
            s = setups.mosi("wae", device=device, quick=quick, **kw)
            obj = Objective(s.mfm)
            steps[size] = train_step(s.mfm, lambda obj=obj, b=s.batch: obj(b))
        t = interleaved(steps, device, reps, warmup)
        prev = None
        for size, timing in t.items():
            marginal = "" if prev is None else f"{1e3 * (timing.median - t[prev].median) / (size - prev):.2f}"
            rows.append([axis, str(size), timing.ms(), f"{1e3 * timing.median / size:.2f}", marginal])
            prev = size
    return rows
