"""The models and batches the benchmarks run: UCI-sized vectors and CMU-MOSI-shaped sequences at the paper's sizes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_mfm.config import Config
from pyro_mfm.data import Batch, MultimodalData, from_arrays
from pyro_mfm.data.stats import feature_statistics
from pyro_mfm.model import MFM

MODELS = Path(__file__).resolve().parents[1] / "models"
MOSI_DIMS = {"text": 300, "audio": 5, "vision": 20}


@dataclass
class Setup:
    name: str
    mfm: MFM
    batch: Batch
    data: MultimodalData


def mosi_shaped(n: int, T: int = 20, dims: dict | None = None, seed: int = 0, missing: float = 0.0) -> MultimodalData:
    """Random data of CMU-MOSI's shapes (default text 300, audio 5, vision 20; T = 20), front-padded sequences of
    random lengths, sentiment in [-3, 3]; each modality missing for a fraction ``missing`` of the samples."""
    dims = dims or MOSI_DIMS
    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, T // 2), T + 1, n)
    steps = np.arange(T)[None] >= (T - lengths)[:, None]
    feats = {m: rng.standard_normal((n, T, d)).astype(np.float32) * steps[..., None] for m, d in dims.items()}
    present = {m: rng.random(n) >= missing for m in dims}
    first = next(iter(dims))
    present[first] |= ~np.any(np.stack(list(present.values())), 0)  # every sample keeps one modality
    y = np.clip(rng.standard_normal(n) * 1.5, -3, 3)
    return from_arrays(feats, y, steps={m: steps for m in feats}, present=present)


def _batch(data: MultimodalData, size: int, device) -> Batch:
    ds = data["train"]
    return ds.batch(np.arange(min(size, len(ds))), device=device)


def _build(name: str, config: Config, data: MultimodalData, batch_size: int, device, seed: int = 0) -> Setup:
    pyro.set_rng_seed(seed)
    mfm = MFM(data.schema, config.model, feature_statistics(data["train"])).to(device)
    return Setup(name, mfm, _batch(data, batch_size, device), data)


def uci(batch_size: int = 64, device="cpu", missing: float = 0.3, quick: bool = False) -> Setup:
    """The UCI Multiple Features configuration (6 vector views, 10 classes; ``models/uci_mfeat.toml``, the ``elbo``
    objective with analytic KL) on the embedded data, a fraction ``missing`` of the views hidden. The label term is
    the ss-VAE's on the observed views (``label_subsets = 0``, ``label_samples = 0``, ``impute_subsets = 0``), the
    term the plain-PyTorch reference writes out; the configuration's random-subset terms run the same networks on
    more subsets."""
    from pyro_mfm.data.builtin import load_embedded

    config = Config.load(
        MODELS / "uci_mfeat.toml", ["model.label_subsets=0", "model.label_samples=0", "model.impute_subsets=0"]
    )
    if quick:
        config = config.override(["model.hidden=16"])
    data = load_embedded()
    rng = np.random.default_rng(1)
    ds = data["train"]
    n = len(ds)
    present = rng.random((n, len(ds.schema.names))) >= missing
    present[np.arange(n), rng.integers(0, present.shape[1], n)] = True
    arrays = {m: np.asarray(ds.features[m]) * present[:, i, None] for i, m in enumerate(ds.schema.names)}
    hidden = from_arrays(
        arrays,
        np.asarray(ds.labels),
        label_kind="categorical",
        num_classes=10,
        present={m: present[:, i] for i, m in enumerate(ds.schema.names)},
    )
    return _build("UCI vectors", config, hidden, batch_size, device)


# the per-modality tables of the MOSI configurations (``factor_hidden`` has a ``z_y`` key besides)
PER_MODALITY = (
    "lstm_hidden",
    "z_a_dim",
    "f_a_dim",
    "lambda_x",
    "encoder_lstm_hidden",
    "encoder_hidden",
    "factor_hidden",
)


def mosi(
    objective: str = "wae",
    batch_size: int = 64,
    T: int = 20,
    dims: dict | None = None,
    device="cpu",
    missing: float = 0.0,
    quick: bool = False,
    seed: int = 0,
    config: str = "mfm-paper-mosi.toml",
) -> Setup:
    """``models/mfm-paper-mosi.toml`` (MFN fusion, LSTM encoders and decoders, the paper's sizes), or another
    configuration of ``models/``, on MOSI-shaped sequences; ``objective = "elbo"`` swaps in the ELBO with analytic
    KL for the same networks, with the ss-VAE's label term on the observed modalities (``label_subsets = 0``), the
    term the plain-PyTorch reference writes out. Modalities of ``dims`` beyond MOSI's take the first modality's
    widths."""
    dims = dims or MOSI_DIMS
    overrides = [f"model.objective='{objective}'", "model.label_subsets=0"]
    cfg = Config.load(MODELS / config, overrides)
    m = cfg.model
    for key in PER_MODALITY:
        table = getattr(m, key)
        if isinstance(table, dict):
            keep = {k: v for k, v in table.items() if k not in MOSI_DIMS}
            setattr(m, key, {**keep, **{name: table.get(name, next(iter(table.values()))) for name in dims}})
    if quick:
        m.hidden, m.lstm_hidden, m.mfn_memory = 16, {name: 8 for name in dims}, 8
        m.encoder_lstm_hidden = m.encoder_hidden = m.factor_hidden = m.label_hidden = m.mfn_hidden = 0
        T = min(T, 6)
    data = mosi_shaped(max(batch_size, 64), T, dims, seed=seed, missing=missing)
    return _build(f"MOSI sequences ({objective})", cfg, data, batch_size, device, seed)


def parameter_counts(mfm: MFM) -> dict:
    """The MFM's parameters by part, in the parts of :func:`reference_parameter_counts` (``encoders``: the z_a,m
    encoders' trunks and experts; ``MFN``; ``z_y head``: the Linear from the MFN's output; ``factor nets``: G_y and
    every G_m; ``decoders``; ``label head``: D)."""
    n = lambda *mods: sum(p.numel() for mod in mods for p in mod.parameters())  # noqa: E731
    g, m = mfm.guide, mfm.model
    return {
        "encoders": n(g.trunk, g.q_a),
        "MFN": n(g.fusion),
        "z_y head": n(g.q_y_fused),
        "factor nets": n(m.G_y, m.G),
        "decoders": n(m.F),
        "label head": n(m.D),
    }


def reference_parameter_counts(config: Config, dims: dict, out_dim: int = 1) -> dict:
    """Parameters of the public MFM's network (the authors' code and MMSA's port, which share its layers) at the
    widths of ``config`` (an MFN configuration of ``models/``), by part: per modality an ``LSTMCell`` as wide as
    z_a,m and a ``Linear`` of that width (the code); the MFN (an ``LSTMCell`` per modality, its attention, proposal
    and gate MLPs, each Linear-ReLU-Linear); a ``Linear`` from [h_T; u_T] to z_y; the factor nets
    Linear(z, f)-ReLU-Linear(f, f); per modality an ``LSTMCell`` decoder as wide as [f_y; f_m] and a ``Linear`` to
    d_m; the label head Linear(f_y, f_y)-ReLU-Linear(f_y, out). The MFN's own output head, which the MFM never
    reads, is not counted."""
    m = config.model
    names = list(dims)
    lin = lambda a, b: a * b + b  # noqa: E731
    cell = lambda d, h: 4 * h * (d + h) + 8 * h  # noqa: E731  (weights and both biases)
    z_a, f_a, H = (m.per_modality(k, names) for k in ("z_a_dim", "f_a_dim", "lstm_hidden"))
    w = m.widths("mfn_hidden", ("attention", "propose", "gate1", "gate2"), m.hidden)
    c, u = sum(H.values()), m.mfn_memory
    return {
        "encoders": sum(cell(dims[n], z_a[n]) + lin(z_a[n], z_a[n]) for n in names),
        "MFN": sum(cell(dims[n], H[n]) for n in names)
        + lin(2 * c, w["attention"])
        + lin(w["attention"], 2 * c)
        + lin(2 * c, w["propose"])
        + lin(w["propose"], u)
        + lin(2 * c + u, w["gate1"])
        + lin(w["gate1"], u)
        + lin(2 * c + u, w["gate2"])
        + lin(w["gate2"], u),
        "z_y head": lin(c + u, m.z_y_dim),
        "factor nets": sum(
            lin(z, f) + lin(f, f) for z, f in [(m.z_y_dim, m.f_y_dim), *((z_a[n], f_a[n]) for n in names)]
        ),
        "decoders": sum(cell(m.f_y_dim + f_a[n], m.f_y_dim + f_a[n]) + lin(m.f_y_dim + f_a[n], dims[n]) for n in names),
        "label head": lin(m.f_y_dim, m.f_y_dim) + lin(m.f_y_dim, out_dim),
    }


def to_device(device: str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this PyTorch build")
    return device
