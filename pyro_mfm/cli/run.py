"""``pyro-mfm run``: the main job: train, evaluate every observed subset, impute, write a report with plots.

SIGINT or SIGTERM stops it like ``train`` (exit status 130, 143; training continues with ``--resume``), before any
``metrics.json`` or ``report.md`` is written. A non-empty OUT is refused unless ``--resume`` or ``--overwrite``.
"""

from __future__ import annotations

import sys

from ._common import add_config_arguments, add_run_folder_arguments, config_from_args, diverged, signal_status


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="train + evaluate + impute + report", description=__doc__)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="report folder (metrics.json, report.md, plots/, checkpoint/)")
    p.add_argument("--resume", action="store_true", help="continue training from OUT/checkpoint/last.pt")
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="run once per seed (train.seed) under OUT/seed-S/; OUT/report.md and OUT/metrics.json give "
        "every metric as mean and standard deviation over the seeds",
    )
    add_run_folder_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.faults import DivergenceError
    from ..infer.job import run as run_job
    from ..outputs import check_output_dir

    config = config_from_args(args)
    check_output_dir(args.out, "--out")
    try:
        if args.seeds is not None:
            from ..infer.seeds import parse_seeds, run_seeds

            report = run_seeds(
                config,
                args.out,
                parse_seeds(args.seeds),
                resume=args.resume,
                overwrite=args.overwrite,
                allow_config_change=args.allow_config_change,
            )
        else:
            report = run_job(
                config,
                args.out,
                resume=args.resume,
                overwrite=args.overwrite,
                allow_config_change=args.allow_config_change,
            )
    except DivergenceError as e:
        return diverged(e)
    if report.get("interrupted"):
        name = report["interrupted"]
        print(
            f"stopped by {name}; no report written; checkpoint in {report['checkpoint']} (continue with --resume)",
            file=sys.stderr,
        )
        return signal_status(name)
    if args.seeds is not None:
        print(f"report over seeds {report['seeds']} written to {args.out}/report.md ({report['total_seconds']:.0f} s)")
        return 0
    print(f"report written to {args.out}/report.md ({report['total_seconds']:.0f} s)")
    return 0
