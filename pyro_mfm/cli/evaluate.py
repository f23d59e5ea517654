"""``pyro-mfm evaluate``: metrics for every subset of observed modalities (or the ones named by ``--observed``),
as JSON and a table."""

from __future__ import annotations

from pathlib import Path

from ._common import add_checkpoint_arguments, parse_observed


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on every observed subset", description=__doc__)
    add_checkpoint_arguments(p, "evaluate")
    p.add_argument("--out", required=True, help="JSON report to write; a Markdown table is written beside it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--observed", action="append", default=[], metavar="A,B",
                   help="evaluate only this subset of observed modalities, e.g. --observed a,b (repeatable; "
                        "default: every non-empty subset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a field of the run's configuration, e.g. --set evaluate.num_samples=50")
    p.add_argument("--seed", type=int, default=0, help="seed of the posterior draws (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.checkpoint import atomic_write, write_json
    from ..infer.evaluate import evaluate, table
    from ..infer.train import cpu_threads

    import pyro

    from ..infer.checkpoint import load_model
    from ..infer.job import load_data

    mfm, config, _ = load_model(args.checkpoint)
    if args.data:
        config.data.source = args.data
    config = config.override(args.overrides)  # before the data are loaded: --set data.test_split=valid applies
    ds = load_data(config)[args.split or config.data.test_split]
    subsets = [parse_observed(o) or list(mfm.schema.names) for o in args.observed] or None
    pyro.set_rng_seed(args.seed)
    with cpu_threads(config.train.num_threads):
        records = evaluate(mfm, ds, subsets=subsets, num_samples=args.num_samples or config.evaluate.num_samples,
                           interval=config.evaluate.interval, batch_size=config.evaluate.batch_size,
                           progress=not args.quiet)
    out = Path(args.out)
    write_json(out, {"checkpoint": str(args.checkpoint), "split": ds.split, "subsets": records})
    text = table(records)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text)
    return 0
