"""The main job over several seeds: one report folder per seed, then every metric as mean and standard deviation.

``<out>/seed-<s>/`` is the full report folder of :func:`pyro_mfm.infer.job.run` with ``train.seed = s``;
``<out>/metrics.json`` and ``<out>/report.md`` give, for every observed subset, each label and imputation metric
as the mean and the sample standard deviation (ddof = 1; 0 for a single seed) over the seeds, as the field reports
results.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..config import Config
from ..data.schema import DataError
from ..outputs import atomic_write, write_json
from .checkpoint import folder_lock, prepare_folder
from .evaluate import output_table


def summary(values) -> dict:
    """``{"mean", "std", "values"}`` of a list of numbers (NaN ignored; std with ddof = 1, 0 for one value)."""
    v = np.asarray(values, float)
    finite = v[np.isfinite(v)]
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std(ddof=1)) if finite.size > 1 else (0.0 if finite.size else float("nan"))
    return {"mean": mean, "std": std, "values": [float(x) for x in v]}


def _merge(dicts: list[dict]) -> dict:
    """Nested dicts of numbers (one per seed, same keys) -> the same nesting with :func:`summary` at the leaves."""
    out = {}
    for key, first in dicts[0].items():
        items = [d.get(key) for d in dicts]
        if isinstance(first, dict):
            out[key] = _merge([d if isinstance(d, dict) else {} for d in items])
        elif isinstance(first, (int, float)) and not isinstance(first, bool):
            out[key] = summary([x if isinstance(x, (int, float)) else np.nan for x in items])
    return out


def aggregate_subsets(per_seed: list[list[dict]]) -> list[dict]:
    """Evaluation records (one list per seed, the same subsets in the same order) -> one record per subset whose
    label and imputation metrics are :func:`summary` dicts over the seeds."""
    subsets = []
    for i, rec in enumerate(per_seed[0]):
        records = [r[i] if i < len(r) else {} for r in per_seed]
        if any(p.get("observed") != rec["observed"] for p in records):
            raise DataError("the seeds' reports list different observed subsets; expected the same data set")
        out = {"observed": rec["observed"]}
        for part in ("label", "imputation"):
            if part in rec:
                out[part] = _merge([p.get(part, {}) for p in records])
        subsets.append(out)
    return subsets


def aggregate_outputs(per_seed: list[dict]) -> dict:
    """Each output of the label (the reports' ``label_outputs``, one per seed) with its metrics as :func:`summary`
    dicts over the seeds."""
    first = per_seed[0]
    outputs = []
    for i, row in enumerate(first["outputs"]):
        rows = [e["outputs"][i] for e in per_seed]
        outputs.append(
            {"output": row["output"], **_merge([{k: v for k, v in r.items() if k != "output"} for r in rows])}
        )
    return {"observed": first["observed"], "outputs": outputs}


def aggregate_linear(per_seed: list[list[dict]]) -> list[dict]:
    """The MFM against a linear model per subset (the reports' ``linear_baselines``, one list per seed) over the
    seeds: per subset the MFM's metric, the linear model's and the gain as :func:`summary` dicts, and how many seeds
    put the MFM behind the linear model by more than one paired standard error."""
    out = []
    for row in per_seed[0]:
        rows = [next((r for r in rs if r["observed"] == row["observed"]), None) for rs in per_seed]
        rows = [r for r in rows if r is not None]
        metric = "accuracy" if "accuracy" in row else "mae"
        out.append(
            {
                "observed": row["observed"],
                "n": row["n"],
                metric: {k: summary([r[metric][k] for r in rows]) for k in ("mfm", "linear")},
                "gain": summary([r["gain"] for r in rows]),
                "seeds_behind": sum(r["gain"] < -r["se"] for r in rows),
                "seeds": len(rows),
            }
        )
    return out


def linear_lines(summary_: dict) -> list[str]:
    """The Markdown lines of the MFM against a linear model per subset over the seeds, and of the nested pairs."""
    rows, lines = summary_.get("linear_baselines") or [], []
    if rows:
        metric = "accuracy" if "accuracy" in rows[0] else "mae"
        behind = sum(r["gain"]["mean"] < 0 for r in rows)
        lines += [
            "\n## The MFM against a linear model per subset (test split)\n",
            "Each seed's report holds the linear model fitted on each subset's modalities alone and how it was fitted; "
            "gain: the MFM's accuracy minus the linear model's, or the linear model's MAE minus the MFM's (positive: "
            f"the MFM is better), mean ± sd over the seeds. Behind on average on {behind} of {len(rows)} subsets.\n",
            f"| observed | n | MFM {metric} | linear {metric} | gain | seeds behind by more than one se |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {'+'.join(r['observed'])} | {r['n']} | {_cell(r[metric]['mfm'])} | {_cell(r[metric]['linear'])} | "
            f"{_cell(r['gain'])} | {r['seeds_behind']} of {r['seeds']} |"
            for r in rows
        ]
    worse = summary_.get("nested_pairs_worse")
    if worse:
        per_seed = ", ".join(f"{v:g}" for v in worse["values"])
        lines += [
            "\n## Adding modalities (test split)\n",
            f"Nested pairs of subsets (of {summary_['nested_pairs']}) where the larger subset is worse by more than "
            f"one paired standard error, per seed: {per_seed} (each seed's report lists them).",
        ]
    return lines


def subsets_table(subsets: list[dict]) -> list[str]:
    """The Markdown lines of a table of :func:`aggregate_subsets` records: mean ± sd of every metric."""
    label_keys = [k for k in (subsets[0].get("label", {}) if subsets else {}) if k != "n"]
    head = ["observed"] + label_keys + ["imputation MSE of hidden modalities"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in subsets:
        lab = r.get("label", {})
        cells = ["+".join(r["observed"])] + [_cell(lab[k]) if k in lab else "-" for k in label_keys]
        cells.append(", ".join(f"{m} {_cell(v['mse'])}" for m, v in r.get("imputation", {}).items()) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def aggregate(reports: list[dict], seeds) -> dict:
    """The per-seed ``metrics.json`` contents combined: each metric's mean and standard deviation over seeds."""
    first = reports[0]
    subsets = aggregate_subsets([r["subsets"] for r in reports])
    metric = next((k for k in first["best"] if k != "epoch"), None)
    return {
        "data": first["data"],
        "attribution": first["attribution"],
        "test_samples": first["test_samples"],
        "seeds": list(seeds),
        "std": "sample standard deviation over seeds (ddof = 1)",
        "best": {
            "epoch": summary([r["best"]["epoch"] + 1 for r in reports]),  # counted from 1
            **({metric: summary([r["best"].get(metric, np.nan) for r in reports])} if metric else {}),
        },
        "subsets": subsets,
        "mean_imputation_baseline": _merge([r["mean_imputation_baseline"] for r in reports]),
        "single_view_baselines": _merge([r["single_view_baselines"] for r in reports])
        if first["single_view_baselines"]
        else {},
        "linear_baselines": aggregate_linear([r.get("linear_baselines") or [] for r in reports])
        if first.get("linear_baselines")
        else [],
        **(
            {
                "nested_pairs": len(first["nested_pairs"]),
                "nested_pairs_worse": summary([sum(p["worse"] for p in r.get("nested_pairs", [])) for r in reports]),
            }
            if first.get("nested_pairs")
            else {}
        ),
        **(
            {"label_outputs": aggregate_outputs([r["label_outputs"] for r in reports])}
            if "label_outputs" in first
            else {}
        ),
        "train_seconds": summary([r["train_seconds"] for r in reports]),
        "per_seed": [f"seed-{s}" for s in seeds],
        "config": first["config"],
    }


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; raises a one-line error naming the bad item."""
    seeds = []
    for item in text.split(","):
        try:
            seeds.append(int(item.strip()))
        except ValueError:
            raise DataError(
                f"--seeds {text!r}: {item.strip()!r} is not an integer; expected e.g. --seeds 0,1,2"
            ) from None
    return seeds


def _cell(s: dict) -> str:
    """``mean ± sd``, or ``-`` where no seed has a finite value."""
    if not (isinstance(s, dict) and np.isfinite(s.get("mean", np.nan))):
        return "-"
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def markdown(summary_: dict) -> str:
    seeds = summary_["seeds"]
    subsets = summary_["subsets"]
    lines = [
        f"# MFM report: {summary_['data']}, {len(seeds)} seeds\n",
        f"Seeds {', '.join(map(str, seeds))} (one report folder each: "
        f"{', '.join(summary_['per_seed'])}). Every cell is the mean ± the sample standard deviation over the "
        f"seeds. Test samples: {summary_['test_samples']}. Best epoch (counted from 1): "
        f"{_cell(summary_['best']['epoch'])}.\n",
        "## Every subset of observed modalities (test split)\n",
    ]
    lines += subsets_table(subsets)
    lines += output_table(summary_["label_outputs"], _cell) if summary_.get("label_outputs") else []
    lines += linear_lines(summary_)
    base = summary_["mean_imputation_baseline"]
    lines += [
        "\n## Training-mean imputation baseline (MSE)\n",
        ", ".join(f"{m} {_cell(v['mse'])}" for m, v in base.items()),
    ]
    if summary_["attribution"]:
        lines += ["\n## Data attribution\n", summary_["attribution"]]
    return "\n".join(lines) + "\n"


SEEDS_FILES = ("seed-*", "metrics.json", "report.md", ".*.tmp")
"""What a folder of runs over seeds holds (``overwrite`` deletes only these)."""


def run_seeds(
    config: Config, out_dir, seeds, resume: bool = False, overwrite: bool = False, allow_config_change: bool = False
) -> dict:
    """Run the main job once per seed under ``out_dir/seed-<s>/``, then write the summary over seeds.

    ``out_dir`` is locked and refused when non-empty, as a report folder of :func:`pyro_mfm.infer.job.run` is. With
    ``resume``, a seed whose report is complete is read back, one whose training started is resumed, and the rest
    run from the start. Returns the summary, or the interrupted job's ``{"interrupted": ...}`` (no summary then)."""
    from .job import run

    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise DataError("--seeds: expected at least one seed, e.g. --seeds 0,1,2")
    out = Path(out_dir)
    t0 = time.time()
    with folder_lock(out, "report folder"):
        prepare_folder(out, resume, overwrite, SEEDS_FILES, "report folder")
        for name in ("report.md", "metrics.json"):  # the summary of an unfinished set of seeds is no longer true
            (out / name).unlink(missing_ok=True)
        reports = []
        for s in seeds:
            folder = out / f"seed-{s}"
            done = folder / "metrics.json"
            if resume and done.is_file():
                reports.append(json.loads(done.read_text()))
                continue
            started = resume and any((folder / "checkpoint").glob("*.pt"))
            # with resume, a seed folder that never reached a checkpoint starts again (overwrite clears it)
            report = run(
                config.override([f"train.seed={s}"]),
                folder,
                resume=started,
                overwrite=resume and not started,
                allow_config_change=allow_config_change,
            )
            if report.get("interrupted"):
                return report
            reports.append(report)
        result = aggregate(reports, seeds)
        result["total_seconds"] = time.time() - t0
        write_json(out / "metrics.json", result)
        atomic_write(out / "report.md", lambda f: f.write(markdown(result).encode()))
    return result


def seed_folders(path) -> dict[int, Path]:
    """``{seed: folder}`` of the ``seed-<s>`` folders under ``path`` (written by ``train --seeds`` or
    ``run --seeds``), by seed; empty when there are none."""
    path = Path(path)
    if not path.is_dir():
        return {}
    found = {}
    for p in path.iterdir():
        name = p.name
        if p.is_dir() and name.startswith("seed-") and name[5:].isdigit():
            found[int(name[5:])] = p
    return dict(sorted(found.items()))


TRAIN_SEEDS_FILES = ("seed-*", "seeds.json", ".*.tmp")
"""What a folder of trainings over seeds holds (``overwrite`` deletes only these)."""


def train_seeds(
    config: Config,
    data,
    out_dir,
    seeds,
    resume: bool = False,
    overwrite: bool = False,
    allow_config_change: bool = False,
    on_seed=None,
) -> dict:
    """Train once per seed (``train.seed``) into ``out_dir/seed-<s>/``, then write ``out_dir/seeds.json``: each
    seed's best epoch and validation score, and their mean and standard deviation.

    ``out_dir`` is locked and refused when non-empty unless ``resume`` (seeds whose training started are resumed,
    finished ones return at once, the rest start) or ``overwrite``. ``on_seed(seed, result)`` is called after each.
    Returns the summary, or ``{"interrupted": name, "seed": s}`` when a signal stopped a training."""
    from .train import fit

    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise DataError("--seeds: expected at least one seed, e.g. --seeds 0,1,2")
    out = Path(out_dir)
    with folder_lock(out, "run folder"):
        prepare_folder(out, resume, overwrite, TRAIN_SEEDS_FILES, "run folder")
        (out / "seeds.json").unlink(missing_ok=True)
        best = {}
        for s in seeds:
            folder = out / f"seed-{s}"
            started = resume and any(folder.glob("*.pt"))
            # with resume, a seed folder that never reached a checkpoint starts again (overwrite clears it)
            result = fit(
                config.override([f"train.seed={s}"]),
                data,
                folder,
                resume=started,
                overwrite=resume and not started,
                allow_config_change=allow_config_change,
            )
            if result.interrupted:
                return {"interrupted": result.interrupted, "seed": s, "folder": str(folder)}
            if on_seed is not None:
                on_seed(s, result)
            best[s] = result.best
        metric = next((k for k in best[seeds[0]] if k != "epoch"), None)
        summary_ = {
            "seeds": seeds,
            "std": "sample standard deviation over seeds (ddof = 1)",
            "folders": [f"seed-{s}" for s in seeds],
            "best": {
                "epoch": summary([best[s]["epoch"] + 1 for s in seeds]),  # counted from 1
                **({metric: summary([best[s].get(metric, np.nan) for s in seeds])} if metric else {}),
            },
            "per_seed": {str(s): best[s] for s in seeds},
        }
        write_json(out / "seeds.json", summary_)
    return summary_
