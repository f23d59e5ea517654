"""``pyro-mfm train``: fit an MFM with SVI and write a checkpoint folder.

SIGINT (Ctrl-C) or SIGTERM stops training at the next step after writing ``OUT/last.pt``; the command then exits
with status 128 + the signal number (130, 143), and ``--resume`` continues exactly where it stopped. A non-finite
loss or gradient with ``train.on_divergence = "stop"`` exits with status 3 and a report of the sites and samples.
Under ``torchrun --nproc_per_node N`` the same command trains data-parallel; only rank 0 writes and prints.

OUT is locked while training (a second training into it fails at once). A non-empty OUT is refused unless
``--resume`` (continue the run in it) or ``--overwrite`` (delete its run files first). ``--resume`` refuses a
configuration that changes the run's result (anything but train.epochs, train.patience, train.device, train.progress,
train.num_threads, train.matmul_precision, train.ensemble_processes, train.keep_last, train.validate, data.source,
[evaluate]) unless ``--allow-config-change``, which
records the change in ``log.jsonl``; it says where it resumed.
"""

from __future__ import annotations

import os
import sys

from ._common import add_config_arguments, add_run_folder_arguments, config_from_args, diverged, signal_status


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train an MFM with SVI", description=__doc__)
    add_config_arguments(p)
    p.add_argument("--out", required=True, help="run folder for checkpoints (last.pt, best.pt) and log.jsonl")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt (or the newest readable OUT/epoch-XXXX.pt if it is damaged)",
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S,S,...",
        help="train once per seed (train.seed) into OUT/seed-S/; OUT/seeds.json gives the best validation "
        "score of each and their mean and standard deviation (evaluate OUT evaluates them all)",
    )
    add_run_folder_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data.sources import load_data
    from ..infer.faults import DivergenceError
    from ..infer.train import averaged_what, ensemble_what, fit
    from ..outputs import check_output_dir

    config = config_from_args(args)
    check_output_dir(args.out, "--out")
    main = int(os.environ.get("RANK", "0")) == 0
    if args.seeds is not None:
        return _run_seeds(args, config)
    try:
        result = fit(
            config,
            load_data(config),
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            allow_config_change=args.allow_config_change,
        )
    except DivergenceError as e:
        return diverged(e)
    if result.resumed and main:
        r = result.resumed
        changed = "; ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in r["changed"].items())
        print(
            f"resumed from {r['from']} at epoch {r['epoch'] + 1}, step {r['step']}"
            + (f"; configuration changed: {changed}" if changed else ""),
            file=sys.stderr,
        )
    if result.interrupted:
        if main:
            print(
                f"stopped by {result.interrupted}; checkpoint in "
                f"{(result.members[-1].out_dir if result.members else args.out)}/last.pt (continue with --resume)",
                file=sys.stderr,
            )
        return signal_status(result.interrupted)
    if main:
        print(
            f"best epoch {result.best['epoch'] + 1}: "
            + ", ".join(f"{k} {v:.4g}" for k, v in result.best.items() if k != "epoch")
            + f"; checkpoint in {args.out}"
            # the training's progress lines already said it
            + (f"\n{averaged_what(result.averaged)}" if result.averaged and not config.train.progress else "")
            + (f"\n{ensemble_what(result)}" if result.members else "")
        )
    return 0


def _run_seeds(args, config) -> int:
    from ..data.sources import load_data
    from ..infer.faults import DivergenceError
    from ..infer.seeds import parse_seeds, train_seeds

    def done(seed, result) -> None:
        scores = ", ".join(f"{k} {v:.4g}" for k, v in result.best.items() if k != "epoch")
        print(f"seed {seed}: best epoch {result.best['epoch'] + 1}: {scores}; checkpoint in {args.out}/seed-{seed}")

    try:
        summary = train_seeds(
            config,
            load_data(config),
            args.out,
            parse_seeds(args.seeds),
            resume=args.resume,
            overwrite=args.overwrite,
            allow_config_change=args.allow_config_change,
            on_seed=done,
        )
    except DivergenceError as e:
        return diverged(e)
    if summary.get("interrupted"):
        name = summary["interrupted"]
        print(
            f"stopped by {name} in seed {summary['seed']}; checkpoint in {summary['folder']}/last.pt "
            "(continue with --resume)",
            file=sys.stderr,
        )
        return signal_status(name)
    scores = ", ".join(f"{k} {v['mean']:.4g} ± {v['std']:.2g}" for k, v in summary["best"].items() if k != "epoch")
    print(f"over seeds {summary['seeds']}: {scores} (validation); summary in {args.out}/seeds.json")
    return 0
