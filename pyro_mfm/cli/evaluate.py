"""``pyro-mfm evaluate``: metrics for every subset of observed modalities (or the ones named by ``--observed``),
as JSON and a table.

RUN may also be a folder of runs over seeds (``train --seeds`` or ``run --seeds``): each ``seed-<s>`` run is then
evaluated alike and the report gives every metric as the mean and sample standard deviation over the seeds, with
each seed's records beside them."""

from __future__ import annotations

from pathlib import Path

from ._common import (
    add_checkpoint_arguments,
    add_set_argument,
    checkpoint_path,
    holds_run,
    load_for_inference,
    parse_observed,
)


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="evaluate a checkpoint on every observed subset", description=__doc__)
    add_checkpoint_arguments(p, "evaluate")
    p.add_argument("--out", required=True, help="JSON report to write; a Markdown table is written beside it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--observed",
        action="append",
        default=[],
        metavar="A,B",
        help="evaluate only this subset of observed modalities, e.g. --observed a,b (repeatable; "
        "default: every non-empty subset)",
    )
    add_set_argument(p, "override a field of the run's configuration, e.g. --set evaluate.num_samples=50")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..infer.evaluate import table
    from ..infer.seeds import seed_folders
    from ..outputs import OutputError, atomic_write, check_output_file, write_json

    out = Path(args.out)
    if out.suffix == ".md":
        raise OutputError(
            f"--out {out}: the Markdown table is written beside the JSON report as {out.name}; "
            "expected the JSON report's name, e.g. eval.json"
        )
    for path in (out, out.with_suffix(".md")):  # before the work, not after it
        check_output_file(path, "--out")
    folders = seed_folders(args.checkpoint) if not checkpoint_in(args.checkpoint) else {}
    if folders:
        return _evaluate_seeds(args, out, folders)
    records, ds, config, payload = _evaluate_one(args)
    write_json(
        out, {"checkpoint": payload["path"], "split": ds.split, "seed": config.evaluate.seed, "subsets": records}
    )
    text = table(records)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text)
    return 0


def checkpoint_in(path) -> bool:
    """Whether ``path`` is a checkpoint file, or a folder with one (a training folder or a report folder)."""
    p = checkpoint_path(path)
    return p.is_file() or holds_run(p)


def _evaluate_one(args):
    from ..infer.device import compute
    from ..infer.evaluate import evaluate
    from ..infer.predict import refuse_imputed

    mfm, config, ds, payload = load_for_inference(args)
    refuse_imputed(ds)
    subsets = [parse_observed(o) or list(mfm.schema.names) for o in args.observed] or None
    with compute(config.train):
        records = evaluate(
            mfm,
            ds,
            subsets=subsets,
            num_samples=config.evaluate.num_samples,
            interval=config.evaluate.interval,
            batch_size=config.evaluate.batch_size,
            progress=not args.quiet,
            seed=config.evaluate.seed,
        )
    return records, ds, config, payload


def _evaluate_seeds(args, out: Path, folders: dict) -> int:
    """Every ``seed-<s>`` run under the folder evaluated alike, then each metric as mean ± sd over the seeds."""
    import argparse

    from ..infer.seeds import aggregate_subsets, subsets_table
    from ..outputs import atomic_write, write_json

    per_seed, checkpoints = {}, {}
    for seed, folder in folders.items():
        records, ds, config, payload = _evaluate_one(argparse.Namespace(**{**vars(args), "checkpoint": str(folder)}))
        per_seed[seed], checkpoints[seed] = records, payload["path"]
    subsets = aggregate_subsets(list(per_seed.values()))
    seeds = list(folders)
    write_json(
        out,
        {
            "checkpoints": {str(s): c for s, c in checkpoints.items()},
            "split": ds.split,
            "seeds": seeds,
            "std": "sample standard deviation over seeds (ddof = 1)",
            "evaluation_seed": config.evaluate.seed,
            "subsets": subsets,
            "per_seed": {str(s): r for s, r in per_seed.items()},
        },
    )
    text = (
        f"Runs of seeds {', '.join(map(str, seeds))} ({args.checkpoint}), split {ds.split!r}: mean ± sample "
        "standard deviation over the seeds.\n\n" + "\n".join(subsets_table(subsets)) + "\n"
    )
    atomic_write(out.with_suffix(".md"), lambda f: f.write(text.encode()))
    print(text)
    return 0
