"""``pyro-mfm tune``: hyperparameter search with Optuna over a search space in TOML.

Each trial trains with the base configuration and the trial's values under ``OUT/trial-XXXX/``, reporting the
validation metric (``train.select_metric``) after every epoch, so that the median pruner stops trials that fall
behind. The study is an SQLite file, ``OUT/study.db``: the same command continues an interrupted search up to
``--trials`` finished trials, and several processes started on the same ``OUT`` share the work. The best
configuration is written to ``OUT/best.toml`` (train it with ``pyro-mfm train OUT/best.toml --out RUN``).
"""

from __future__ import annotations

from ._common import add_config_arguments, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="hyperparameter search with Optuna", description=__doc__)
    add_config_arguments(p)
    p.add_argument(
        "--space",
        required=True,
        metavar="SPACE.toml",
        help="search space: one table per field, [train.lr] low/high/log, [model.hidden] low/high/step, "
        "[model.fusion] choices",
    )
    p.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study should hold")
    p.add_argument("--out", required=True, help="search folder (study.db, trial-XXXX/, best.toml, best.json)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler (TPE)")
    p.add_argument(
        "--prune-after",
        type=int,
        default=5,
        metavar="K",
        help="finished trials before the median pruner starts stopping trials (default 5)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.tune import describe, tune

    config = config_from_args(args)
    summary = tune(config, args.space, args.out, args.trials, seed=args.seed, prune_after=args.prune_after)
    print(describe(summary) + f"; best configuration in {args.out}/best.toml")
    return 0
