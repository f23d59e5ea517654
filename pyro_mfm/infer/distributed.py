"""Data-parallel SVI with ``torch.distributed``: ``torchrun --nproc_per_node N -m pyro_mfm train CONFIG --out DIR``.

Every rank builds the same model (same seed; DDP also broadcasts rank 0's parameters) and walks the same global
minibatch order, a permutation of the training split fixed by (seed, epoch); each global batch of ``B`` samples is
cut into ``N`` contiguous shards, one per rank (:func:`shard`, the distributed sampler). The objective is a mean
over the samples of a shard; :class:`DataParallelLoss` wraps it in ``DistributedDataParallel`` (gloo on CPU, nccl
on CUDA), whose backward averages gradients over ranks, and weights each rank's mean by its share of the global
batch, so that the averaged gradient is the gradient of the mean over the global batch: what one process with
batch ``B`` computes, up to the order of floating-point sums.

Pyro's model and guide are methods of the MFM module, called inside the wrapper's ``forward``; DDP only needs every
parameter to receive its gradient through autograd, which Pyro's traced log-densities do, so no hand-written
all-reduce is needed. Only rank 0 validates (its scores are broadcast, so early stopping agrees on every rank),
writes checkpoints and logs; the random-number states of every rank go into the checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as td
from torch import nn


@dataclass
class Dist:
    """This process's place in a run: ``rank`` of ``world`` processes (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without those variables, a single process. On CUDA each
    rank takes the device ``cuda:LOCAL_RANK``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not td.is_initialized()
    if owns:
        td.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local_rank, owns), device


def shutdown(group: Dist) -> None:
    if group.owns_group and td.is_initialized():
        td.barrier()
        td.destroy_process_group()


def shard(indices: np.ndarray, group: Dist) -> np.ndarray:
    """This rank's contiguous part of one global batch (sizes differ by at most one sample)."""
    if not group.enabled:
        return indices
    return np.array_split(indices, group.world)[group.rank]


class _LossModule(nn.Module):
    """``forward(batch)`` is the objective: what DDP needs to see (a module whose forward builds the loss)."""

    def __init__(self, mfm: nn.Module, objective):
        super().__init__()
        self.mfm = mfm
        self.objective = objective

    def forward(self, batch, beta: float = 1.0):
        return self.objective(batch, beta=beta)


class DataParallelLoss:
    """``loss(batch, global_size)``: the objective on this rank's shard, through DDP; with :meth:`weight`, the
    gradients DDP averages over ranks are those of the mean over the global batch. In a single process, the
    objective itself."""

    def __init__(self, mfm: nn.Module, objective, group: Dist):
        self.group = group
        module = _LossModule(mfm, objective)
        if group.enabled:
            # some parameters (e.g. the label expert) can miss a gradient on a batch without labels
            module = nn.parallel.DistributedDataParallel(module, find_unused_parameters=True)
        self.module = module

    def __call__(self, batch, global_size: int, beta: float = 1.0) -> torch.Tensor:
        """The objective on ``batch`` (a mean over its samples, its KL terms weighted by ``beta``); backpropagate
        ``loss * weight(...)``."""
        return self.module(batch, beta=beta)

    def weight(self, local_size: int, global_size: int) -> float:
        """The factor that turns this shard's mean into its share of the global mean, times the number of ranks
        (DDP divides the summed gradients by it); 1 in a single process."""
        return local_size * self.group.world / global_size if self.group.enabled else 1.0


def all_sum(values, group: Dist, device=None) -> list[float]:
    """Elementwise sum of a list of numbers over ranks."""
    if not group.enabled:
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    td.all_reduce(t)
    return t.tolist()


def broadcast(obj, group: Dist):
    """Rank 0's ``obj`` on every rank."""
    if not group.enabled:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, group: Dist) -> list:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not group.enabled:
        return [obj]
    out = [None] * group.world
    td.all_gather_object(out, obj)
    return out
