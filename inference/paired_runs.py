"""Two runs of the comparison commands, paired seed by seed: what a change did, with its paired standard error.

    python inference/paired_runs.py BEFORE.json AFTER.json [--data uci-defaults,pom-vectors] [--all]

``BEFORE.json`` and ``AFTER.json`` are the ``--out`` files of two runs of ``real_data_comparison.py`` or of
``speaker_testbed.py`` (whose record is the data set ``testbed``), typically the same command before and after a
change, or with and without a ``--set``. For every data set, observed subset and metric that both record seed by
seed, over the seeds that both ran: each run's mean, the mean of the paired difference AFTER - BEFORE and its
standard error over the seeds (the seeds' own spread cancels out of the pairs), and whether the difference is
better or worse by more than two standard errors (by the metric's direction; coverage and ECE: nearer their
target, 0.9 and 0). ``--all`` prints every row, not only those beyond two standard errors and the means over the
subsets. A seed that one run holds and the other does not is left out; no seed in common is an error (exit
status 2), as is a file that is not such a record.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pyro_mfm.metric_directions import HIGHER_IS_BETTER


class RecordError(ValueError):
    """A file that is not a comparison's record, or two records with nothing in common."""


# metrics scored by their distance to a target rather than by a direction
TARGETS = {"coverage": 0.9, "ece": 0.0}


def records(path: str) -> tuple[dict, list]:
    """``{data set: {subset: {metric: [value per seed]}}}`` and the seeds of a comparison command's ``--out``."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise RecordError(
            f"{path}: {e.__class__.__name__}: {e}; expected the --out JSON of a comparison command"
        ) from e
    if not isinstance(raw, dict):
        raise RecordError(f"{path}: a JSON {type(raw).__name__}; expected the --out JSON of a comparison command")
    if "per_seed" in raw:  # speaker_testbed.py: one data set
        found = {"testbed": raw["per_seed"]}
    else:
        found = {k: v["per_seed"] for k, v in raw.items() if isinstance(v, dict) and "per_seed" in v}
    if not found:
        raise RecordError(f"{path}: no data set with per-seed numbers ('per_seed'); expected a comparison's --out")
    seeds = raw.get("seeds")
    if seeds is None:
        raise RecordError(f"{path}: key 'seeds' missing; expected the --out JSON of a comparison command")
    return found, list(seeds)


def better(metric: str, d: float, before: float) -> float:
    """The difference ``d`` signed so that positive is better for ``metric`` (at ``before``)."""
    if metric in TARGETS:
        t = TARGETS[metric]
        return abs(before - t) - abs(before + d - t)
    return d if HIGHER_IS_BETTER.get(metric, False) else -d


def paired(before: dict, after: dict, seeds_before: list, seeds_after: list, only: list | None) -> list[dict]:
    """One row per data set, subset and metric that both runs record, paired over their common seeds."""
    common = [s for s in seeds_before if s in seeds_after]
    if not common:
        raise RecordError(f"no seed in common: BEFORE ran {seeds_before}, AFTER ran {seeds_after}")
    ia, ib = [seeds_before.index(s) for s in common], [seeds_after.index(s) for s in common]
    rows = []
    for data in before:
        if data not in after or (only and data not in only):
            continue
        for subset, metrics in before[data].items():
            for metric, values in metrics.items():
                other = after[data].get(subset, {}).get(metric)
                if other is None or len(values) != len(seeds_before) or len(other) != len(seeds_after):
                    continue
                a = np.array([values[i] for i in ia], float)
                b = np.array([other[i] for i in ib], float)
                d = b - a
                se = float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan")
                signed = better(metric, float(d.mean()), float(a.mean()))
                rows.append(
                    {
                        "data": data,
                        "subset": subset,
                        "metric": metric,
                        "before": float(a.mean()),
                        "after": float(b.mean()),
                        "difference": float(d.mean()),
                        "se": se,
                        "verdict": "better" if signed > 2 * se else "worse" if -signed > 2 * se else "",
                    }
                )
    return rows


def table(rows: list[dict], every: bool, seeds: list) -> str:
    lines = [
        f"AFTER - BEFORE, paired over seeds {seeds}: each run's mean, the mean difference and its standard error over "
        "the seeds; better or worse where beyond two standard errors",
        "",
        "| data | observed | metric | before | after | difference (se) | |",
        "|---|---|---|---|---|---|---|",
    ]
    shown = [r for r in rows if every or r["verdict"]]
    for r in shown:
        lines.append(
            f"| {r['data']} | {r['subset']} | {r['metric']} | {r['before']:.4f} | {r['after']:.4f} | "
            f"{r['difference']:+.4f} ({r['se']:.4f}) | {r['verdict']} |"
        )
    if not shown:
        lines.append("| (no difference beyond two standard errors; --all prints every row) | | | | | | |")
    lines += ["", "Means over the subsets, per data set and metric (positive: better):", ""]
    for data in dict.fromkeys(r["data"] for r in rows):
        for metric in dict.fromkeys(r["metric"] for r in rows if r["data"] == data):
            part = [r for r in rows if r["data"] == data and r["metric"] == metric]
            gain = np.mean([better(metric, r["difference"], r["before"]) for r in part])
            counts = {v: sum(r["verdict"] == v for r in part) for v in ("better", "worse")}
            lines.append(
                f"- {data}, {metric}: {gain:+.4f} over {len(part)} subsets; beyond two se better on "
                f"{counts['better']}, worse on {counts['worse']}"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", metavar="BEFORE.json")
    ap.add_argument("after", metavar="AFTER.json")
    ap.add_argument("--data", help="comma-separated data sets to compare (default: every one both files hold)")
    ap.add_argument("--all", action="store_true", help="print every subset's row, not only those beyond two se")
    args = ap.parse_args(argv)
    try:
        (a, sa), (b, sb) = records(args.before), records(args.after)
        only = args.data.split(",") if args.data else None
        rows = paired(a, b, sa, sb, only)
        if not rows:
            raise RecordError(
                f"{args.before}, {args.after}: no data set, subset and metric in common "
                f"(BEFORE holds {sorted(a)}, AFTER {sorted(b)})"
            )
    except RecordError as e:
        print(f"paired_runs: {e}", file=sys.stderr)
        return 2
    print(table(rows, args.all, [s for s in sa if s in sb]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
