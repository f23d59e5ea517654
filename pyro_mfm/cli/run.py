"""``pyro-mfm run``: the main job: train, evaluate every observed subset, impute, write a report with plots."""

from __future__ import annotations

from ._common import add_config_arguments, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="train + evaluate + impute + report", description=__doc__)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.md, plots/, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue training from OUT/checkpoint/last.pt")
    p.add_argument("--seeds", default=None, metavar="S,S,...",
                   help="run once per seed (train.seed) under OUT/seed-S/; OUT/report.md and OUT/metrics.json give "
                        "every metric as mean and standard deviation over the seeds")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.job import run as run_job

    if args.seeds is not None:
        from ..infer.seeds import parse_seeds, run_seeds

        report = run_seeds(config_from_args(args), args.out, parse_seeds(args.seeds), resume=args.resume)
        print(f"report over seeds {report['seeds']} written to {args.out}/report.md ({report['total_seconds']:.0f} s)")
        return 0
    report = run_job(config_from_args(args), args.out, resume=args.resume)
    print(f"report written to {args.out}/report.md ({report['total_seconds']:.0f} s)")
    return 0
