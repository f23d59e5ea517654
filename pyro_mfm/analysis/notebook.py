"""The set-up the notebooks share: the repository's model configurations, the embedded digits, a seeded start."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..data.builtin import load_embedded
from ..data.dataset import MultimodalData

UCI_CONFIG = Path("models") / "uci_mfeat.toml"


@dataclass
class NotebookSetup:
    """``root``: the repository root (it holds ``models/``); ``data``: the embedded UCI Multiple Features digits."""

    root: Path
    data: MultimodalData

    def config(self, epochs: int, *overrides: str, calibrate: str | None = None) -> Config:
        """``models/uci_mfeat.toml`` trained for ``epochs`` (KL warm-up over the first quarter, no progress bars),
        as one MFM (``train.ensemble = 1``: the notebooks read one model's posterior, codes and factors), then
        ``overrides`` (``"table.key=value"``, as ``--set``); ``calibrate``: ``train.calibrate`` where given (the
        configuration's otherwise)."""
        return Config.load(self.root / UCI_CONFIG).override(
            [
                f"train.epochs={epochs}",
                f"train.kl_warmup={max(1, epochs // 4)}",
                "train.progress=False",
                "train.ensemble=1",
                *overrides,
                *([] if calibrate is None else [f"train.calibrate={calibrate!r}"]),
            ]
        )


def notebook_setup(seed: int = 0, start=None) -> NotebookSetup:
    """Find the repository root (``start``, default the working folder, or its nearest parent holding
    ``models/uci_mfeat.toml``), seed PyTorch's global generator with ``seed`` and load the embedded data set."""
    here = Path.cwd() if start is None else Path(start)
    root = next((p for p in (here, *here.parents) if (p / UCI_CONFIG).exists()), None)
    if root is None:
        raise FileNotFoundError(
            f"{here}: no {UCI_CONFIG} here or in a parent folder; expected to run inside the "
            "repository (the notebooks read its model configurations)"
        )
    torch.manual_seed(seed)
    return NotebookSetup(root, load_embedded())
