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
    the ss-VAE's on the observed views (``label_subsets = 0``, ``label_samples = 0``), the term the plain-PyTorch
    reference writes out; the configuration's random-subset terms run the same networks on more subsets."""
    from pyro_mfm.data.builtin import load_embedded

    config = Config.load(MODELS / "uci_mfeat.toml", ["model.label_subsets=0", "model.label_samples=0"])
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


def mosi(
    objective: str = "wae",
    batch_size: int = 64,
    T: int = 20,
    dims: dict | None = None,
    device="cpu",
    missing: float = 0.0,
    quick: bool = False,
    seed: int = 0,
) -> Setup:
    """``models/mfm-paper-mosi.toml`` (MFN fusion, LSTM encoders and decoders, the paper's sizes) on MOSI-shaped
    sequences; ``objective = "elbo"`` swaps in the ELBO with analytic KL for the same networks, with the ss-VAE's
    label term on the observed modalities (``label_subsets = 0``), the term the plain-PyTorch reference writes out."""
    dims = dims or MOSI_DIMS
    overrides = [f"model.objective='{objective}'", "model.label_subsets=0"]
    config = Config.load(MODELS / "mfm-paper-mosi.toml", overrides)
    m = config.model
    for key in ("lstm_hidden", "z_a_dim", "f_a_dim", "lambda_x"):
        table = getattr(m, key)
        setattr(m, key, {name: table.get(name, next(iter(table.values()))) for name in dims})
    if quick:
        m.hidden, m.lstm_hidden, m.mfn_memory = 16, {name: 8 for name in dims}, 8
        T = min(T, 6)
    data = mosi_shaped(max(batch_size, 64), T, dims, seed=seed, missing=missing)
    return _build(f"MOSI sequences ({objective})", config, data, batch_size, device, seed)


def to_device(device: str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available to this PyTorch build")
    return device
