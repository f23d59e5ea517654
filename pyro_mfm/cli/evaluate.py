"""``pyro-mfm evaluate``: metrics for every subset of observed modalities, as JSON and a table."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on every observed subset", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint file or run folder (best.pt is used)")
    p.add_argument("--data", help="data source (default: the one the model was trained on)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the configuration's test split)")
    p.add_argument("--out", required=True, help="JSON report to write; a Markdown table is written beside it")
    p.add_argument("--num-samples", type=int, default=None, help="posterior samples per prediction")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.checkpoint import load_model, write_json
    from ..infer.evaluate import evaluate, table
    from ..infer.job import load_data
    from ..infer.train import cpu_threads

    mfm, config, _ = load_model(args.checkpoint)
    if args.data:
        config.data.source = args.data
    ds = load_data(config)[args.split or config.data.test_split]
    with cpu_threads(config.train.num_threads):
        records = evaluate(mfm, ds, num_samples=args.num_samples or config.evaluate.num_samples,
                           interval=config.evaluate.interval, batch_size=config.evaluate.batch_size,
                           progress=not args.quiet)
    out = Path(args.out)
    write_json(out, {"checkpoint": str(args.checkpoint), "split": ds.split, "subsets": records})
    text = table(records)
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


