"""The minibatch type: the tensors of a few samples of a :class:`~pyro_mfm.data.dataset.MultimodalDataset`, with
their presence masks, labels and sample indices."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass
class Batch:
    """A minibatch as tensors. ``x[m]`` is zero where ``present[m]`` is False."""

    x: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    steps: dict[str, torch.Tensor]
    y: torch.Tensor | None
    y_present: torch.Tensor | None
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def map(self, fn) -> Batch:
        """The batch with ``fn`` applied to every tensor (``None`` labels stay ``None``), e.g. a device move or a
        slice of rows."""
        each = lambda d: {k: fn(v) for k, v in d.items()}  # noqa: E731
        return replace(
            self,
            x=each(self.x),
            present=each(self.present),
            steps=each(self.steps),
            y=None if self.y is None else fn(self.y),
            y_present=None if self.y_present is None else fn(self.y_present),
            index=fn(self.index),
        )

    def to(self, device) -> Batch:
        return self.map(lambda t: t.to(device))

    def observe_only(self, observed) -> Batch:
        """The same batch with every modality outside ``observed`` marked missing (and zeroed)."""
        present = {}
        x = {}
        for m, p in self.present.items():
            if m in observed:
                present[m], x[m] = p, self.x[m]
            else:
                present[m], x[m] = torch.zeros_like(p), torch.zeros_like(self.x[m])
        return replace(self, x=x, present=present)

    def with_present(self, present: dict) -> Batch:
        """The same batch observing modality m only where ``present[m]`` (a subset of ``self.present[m]``) is True;
        the hidden entries are zeroed."""
        x = {m: v * present[m].reshape((-1,) + (1,) * (v.dim() - 1)).to(v.dtype) for m, v in self.x.items()}
        return replace(self, x=x, present=dict(present))

    def without_labels(self) -> Batch:
        return replace(self, y=None, y_present=None)

    def present_masks(self, names=None) -> torch.Tensor:
        """``(N, M)`` bool masks of which modalities each sample observes, in the order of ``names`` (default: the
        batch's own)."""
        return torch.stack([self.present[m] for m in (self.present if names is None else names)], -1)
