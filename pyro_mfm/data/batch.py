"""The minibatch type: the tensors of a few samples of a :class:`~pyro_mfm.data.dataset.MultimodalDataset`, with
their presence masks, labels and sample indices."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class Batch:
    """A minibatch as tensors. ``x[m]`` is zero where ``present[m]`` is False.

    ``absent[m]`` marks the samples known to lack modality m: the data say that it was not recorded, which a model
    of informative missingness reads as an observation (:class:`~pyro_mfm.model.Model`'s ``present`` site).
    A modality hidden on purpose (a subset of the observed ones, :meth:`observe_only`) is neither present nor known
    absent; a modality without an entry is known absent nowhere."""

    x: dict[str, torch.Tensor]
    present: dict[str, torch.Tensor]
    steps: dict[str, torch.Tensor]
    y: torch.Tensor | None
    y_present: torch.Tensor | None
    index: torch.Tensor
    absent: dict[str, torch.Tensor] = field(default_factory=dict)

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
            absent=each(self.absent),
        )

    def to(self, device) -> Batch:
        return self.map(lambda t: t.to(device))

    def observe_only(self, observed) -> Batch:
        """The same batch with every modality outside ``observed`` hidden: not present (and zeroed), and not known
        absent either (what is outside a subset is not observed at all)."""
        present = {}
        x = {}
        for m, p in self.present.items():
            if m in observed:
                present[m], x[m] = p, self.x[m]
            else:
                present[m], x[m] = torch.zeros_like(p), torch.zeros_like(self.x[m])
        absent = {m: a for m, a in self.absent.items() if m in observed}
        return replace(self, x=x, present=present, absent=absent)

    def with_present(self, present: dict, absent: dict | None = None) -> Batch:
        """The same batch observing modality m only where ``present[m]`` (a subset of ``self.present[m]``) is True;
        the hidden entries are zeroed. ``absent``: where each modality is known absent (a subset of
        ``self.absent[m]``; default: unchanged)."""
        x = {m: v * present[m].reshape((-1,) + (1,) * (v.dim() - 1)).to(v.dtype) for m, v in self.x.items()}
        return replace(self, x=x, present=dict(present), absent=dict(self.absent if absent is None else absent))

    def absent_masks(self, names) -> torch.Tensor:
        """``(N, M)`` bool masks of which modalities each sample is known to lack, in the order of ``names``."""
        none = torch.zeros_like(next(iter(self.present.values())))
        names = list(names)
        if not names:
            return none.unsqueeze(-1)[..., :0]
        return torch.stack([self.absent.get(m, none) for m in names], -1)

    def without_labels(self) -> Batch:
        return replace(self, y=None, y_present=None)

    def present_masks(self, names=None) -> torch.Tensor:
        """``(N, M)`` bool masks of which modalities each sample observes, in the order of ``names`` (default: the
        batch's own)."""
        return torch.stack([self.present[m] for m in (self.present if names is None else names)], -1)
