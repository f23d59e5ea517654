"""``pyro-mfm train``: fit an MFM with SVI and write a checkpoint folder."""

from __future__ import annotations

from ._common import add_config_arguments, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an MFM with SVI", description=__doc__)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="run folder for checkpoints (last.pt, best.pt) and log.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.job import load_data
    from ..infer.train import fit

    config = config_from_args(args)
    result = fit(config, load_data(config), args.out, resume=args.resume)
    print(f"best epoch {result.best['epoch'] + 1}: "
          + ", ".join(f"{k} {v:.4g}" for k, v in result.best.items() if k != "epoch") + f"; checkpoint in {args.out}")
    return 0
