"""One modality of the linear-Gaussian MFM of :mod:`pyro_mfm.data.synthetic`: its decoder x = W z_y + V z_a + c + e
and its exact Gaussian expert on z_y (a vector, or a sequence whose loadings turn with the step); and the Gaussian
tail probabilities its oracle's ordinal labels need."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .schema import DataError, ModalitySpec


def _log_ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.log_ndtr(torch.as_tensor(x, dtype=torch.float64)).numpy()


def log_normal_interval(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) for lo < hi (either may be infinite), accurate in both tails."""
    flip = lo > 0  # Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi): keep the arguments where Phi is not close to 1
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    top = _log_ndtr(hi)
    with np.errstate(divide="ignore", invalid="ignore"):
        return top + np.log1p(-np.exp(_log_ndtr(lo) - top))


@dataclass(frozen=True, eq=False)
class LinearGaussianModality:
    """One modality's linear-Gaussian decoder (see the module docstring).

    Attributes:
        name: the modality's name.
        W: loadings on z_y: ``(d, k_y)`` for a vector, ``(T, d, k_y)`` for a sequence (one matrix per position).
        V: loadings on the modality's own z_a,m: ``(d, k_m)`` or ``(T, d, k_m)`` (``k_m = 0`` allowed).
        c: offset, ``(d,)``.
        sigma: standard deviation of the per-feature noise.
        min_steps: sequences only: real lengths are uniform on ``min_steps..T``.
    """

    name: str
    W: np.ndarray
    V: np.ndarray
    c: np.ndarray
    sigma: float
    min_steps: int = 1

    def __post_init__(self):
        for key in ("W", "V", "c"):
            object.__setattr__(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        if self.W.ndim not in (2, 3) or self.V.shape[:-1] != self.W.shape[:-1] or self.c.shape != self.W.shape[-2:-1]:
            raise DataError(f"modality {self.name!r}: W {self.W.shape}, V {self.V.shape}, c {self.c.shape} do not fit")
        if not self.sigma > 0:
            raise DataError(f"modality {self.name!r}: sigma {self.sigma}, expected > 0")
        if self.is_sequence and not 1 <= self.min_steps <= self.W.shape[0]:
            raise DataError(f"modality {self.name!r}: min_steps {self.min_steps}, expected 1..{self.W.shape[0]}")

    @property
    def is_sequence(self) -> bool:
        return self.W.ndim == 3

    @property
    def spec(self) -> ModalitySpec:
        return ModalitySpec(self.name, self.W.shape[:-1])

    def mean(self, z_y: np.ndarray, z_a: np.ndarray) -> np.ndarray:
        """``W z_y + V z_a + c`` for a batch: ``(N, d)`` or ``(N, T, d)`` at every position."""
        return np.einsum("...dk,nk->n...d", self.W, z_y) + np.einsum("...dk,nk->n...d", self.V, z_a) + self.c

    def expert(self, steps: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(W^T C^-1 W, C^-1 W)`` stacked over the real ``steps`` (``None``: a vector); ``C^-1 W`` is (L d, k_y)."""
        W, V = (self.W, self.V) if steps is None else (self.W[steps], self.V[steps])
        rows = int(np.prod(W.shape[:-1]))
        W, V = W.reshape(rows, W.shape[-1]), V.reshape(rows, V.shape[-1])
        s2 = self.sigma**2
        inner = s2 * np.eye(V.shape[1]) + V.T @ V  # Woodbury: C^-1 = (I - V inner^-1 V^T) / s2
        ciw = (W - V @ np.linalg.solve(inner, V.T @ W)) / s2
        info = W.T @ ciw
        return (info + info.T) / 2, ciw
