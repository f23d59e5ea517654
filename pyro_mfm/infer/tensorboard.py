"""TensorBoard event files of a training run (``<run>/tensorboard/``, read with ``tensorboard --logdir <run>``).

Each epoch adds: the training loss and the validation metrics of ``log.jsonl``; the learning rate; the objective
split into its terms on one validation batch (the negative log-likelihood of each modality and of the label, and
the KL divergence of each factor, per sample, as the ELBO weighs them); and the mean precision that each modality's
expert claims about z_y (the trace of its precision matrix over z_y's dimensions, averaged over the samples where
the modality is present), which shows which modality the product of experts listens to.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pyro import poutine

from ..data.dataset import Batch
from ..model import MFM


@torch.no_grad()
def loss_terms(mfm: MFM, batch: Batch) -> dict[str, float]:
    """Per-sample terms of the ELBO on ``batch``: ``nll/x_<m>``, ``nll/y`` and ``kl/<latent site>`` (Monte Carlo,
    one draw), each with the weights (lambda_x, lambda_y) and masks of the model."""
    guide = poutine.trace(mfm.guide).get_trace(batch)
    model = poutine.trace(poutine.replay(mfm.model, trace=guide)).get_trace(batch, means=False)
    guide.compute_log_prob()
    model.compute_log_prob()
    n = max(len(batch), 1)
    out = {}
    for name, site in model.nodes.items():
        if site["type"] != "sample" or site["infer"].get("_deterministic"):
            continue
        if site["is_observed"]:
            out[f"nll/{name}"] = float(-site["log_prob_sum"]) / n
        elif name in guide.nodes:
            out[f"kl/{name}"] = float(guide.nodes[name]["log_prob_sum"] - site["log_prob_sum"]) / n
    return out


@torch.no_grad()
def expert_precisions(mfm: MFM, batch: Batch) -> dict[str, float]:
    """Mean precision (trace / dim) of each modality's expert of z_y over the samples where it is present; empty
    for a model without product-of-experts fusion."""
    if not getattr(mfm, "shared", False) or mfm.config.fusion != "poe":
        return {}
    weights = mfm.guide.expert_log_temperature.exp()  # each expert's weight where it is observed alone
    out = {}
    for m, w, (_, untempered) in zip(mfm.names, weights, mfm.guide.features(batch).experts):
        precision = w * untempered
        per_sample = torch.diagonal(precision, dim1=-2, dim2=-1).mean(-1) if precision.dim() > 2 else precision
        present = batch.present[m]
        if present.any():
            out[m] = float(per_sample.reshape(len(batch), -1).mean(-1)[present].mean())
    return out


class TrainingLog:
    """A ``SummaryWriter`` on ``<out_dir>/tensorboard`` (no-op when ``out_dir`` is ``None``)."""

    def __init__(self, out_dir, start_epoch: int = 0):
        self.writer = None
        if out_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run (``start_epoch`` epochs finished) drops any event an interrupted one logged past them
            self.writer = SummaryWriter(
                log_dir=str(Path(out_dir) / "tensorboard"), purge_step=start_epoch + 1 if start_epoch else None
            )

    def epoch(self, record: dict, mfm: MFM, optimizer, batch: Batch | None) -> None:
        if self.writer is None:
            return
        step = int(record["epoch"]) + 1  # epochs counted from 1, as the console counts them
        w = self.writer
        w.add_scalar("loss/train", record["train_loss"], step)
        for key, value in record.items():
            if key.startswith("valid_") and isinstance(value, (int, float)):
                w.add_scalar(f"valid/{key[len('valid_') :]}", value, step)
        w.add_scalar("lr", optimizer.param_groups[0]["lr"], step)
        if batch is not None:
            was_training = mfm.training
            mfm.eval()
            device = batch.x[mfm.names[0]].device
            # the draws below must not move training's random stream: a run with a log takes the same steps as
            # one without, and resumes bit for bit
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                for key, value in loss_terms(mfm, batch).items():
                    w.add_scalar(f"terms/{key}", value, step)
                for m, value in expert_precisions(mfm, batch).items():
                    w.add_scalar(f"expert_precision/{m}", value, step)
            mfm.train(was_training)
        w.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
