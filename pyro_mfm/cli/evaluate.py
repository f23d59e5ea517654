"""``pyro-mfm evaluate``: metrics for every subset of observed modalities (or the ones named by ``--observed``),
as JSON and a table."""

from __future__ import annotations

from pathlib import Path

from ._common import add_checkpoint_arguments, load_for_inference, parse_observed


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
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.evaluate import evaluate, table
    from ..infer.predict import refuse_imputed
    from ..infer.train import cpu_threads
    from ..outputs import OutputError, atomic_write, check_output_file, write_json

    out = Path(args.out)
    if out.suffix == ".md":
        raise OutputError(f"--out {out}: the Markdown table is written beside the JSON report as {out.name}; "
                          "expected the JSON report's name, e.g. eval.json")
    for path in (out, out.with_suffix(".md")):  # before the work, not after it
        check_output_file(path, "--out")
    mfm, config, ds, payload = load_for_inference(args)
    refuse_imputed(ds)
    subsets = [parse_observed(o) or list(mfm.schema.names) for o in args.observed] or None
    with cpu_threads(config.train.num_threads):
        records = evaluate(mfm, ds, subsets=subsets, num_samples=config.evaluate.num_samples,
                           interval=config.evaluate.interval, batch_size=config.evaluate.batch_size,
                           progress=not args.quiet, seed=config.evaluate.seed)
    write_json(out, {"checkpoint": payload["path"], "split": ds.split, "seed": config.evaluate.seed,
                     "subsets": records})
    text = table(records)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text)
    return 0
