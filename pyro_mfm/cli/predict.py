"""``pyro-mfm predict``: the label's posterior predictive for every sample of a data file, given the modalities in
``--observed``, written as CSV or HDF5 (by the extension of ``--out``).

One row per sample: its id, the point prediction (the class, the 0/1 labels, or the predictive mean), the class
or label probabilities (classification) or the central credible interval of ``evaluate.interval`` mass
(regression), the true label and the log predictive density log p(y | observed) where the label is known. The
posterior draws are seeded by ``--seed``: the same command writes the same file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np

from ..data.schema import DataError
from ._common import add_checkpoint_arguments, add_set_argument, load_for_inference, parse_observed

FORMATS = (".csv", ".h5")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="per-sample label predictions from chosen modalities", description=__doc__
    )
    add_checkpoint_arguments(p, "predict", default_split="the configuration's test split, or the file's only split")
    p.add_argument("--observed", default=None, help="comma-separated modalities to condition on (default: all)")
    p.add_argument("--out", required=True, help="predictions file: .csv or .h5 (refuses to overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    add_set_argument(
        p, "override an [evaluate] or [data] field of the run's configuration, e.g. --set evaluate.interval=0.5"
    )
    p.set_defaults(func=run)


def _columns(names, dim: int, prefix: str) -> list[str]:
    if names:
        return [f"{prefix}_{n}" for n in names]
    return [prefix] if dim == 1 else [f"{prefix}_{j}" for j in range(dim)]


def _truth(ds, lab):
    """The labels of ``ds`` and where they are known (none known when the file has no labels)."""
    if ds.labels is None:
        return np.zeros((len(ds),) + lab.shape, np.int64 if lab.kind == "categorical" else float), np.zeros(
            len(ds), bool
        )
    return np.asarray(ds.labels), np.asarray(ds.label_present, bool)


def _ids(ds) -> list[str]:
    return [str(i) for i in ds.ids] if ds.ids is not None else [str(i) for i in range(len(ds))]


def prediction_table(pred, ds, lab) -> tuple[list[str], list[list]]:
    """Header and rows of the predictions file (plain Python values; ``""`` where a value is unknown)."""
    ids = _ids(ds)
    y, known = _truth(ds, lab)
    point = np.asarray(pred.point, float)
    head = ["id"]
    cols: list[np.ndarray] = []
    if pred.kind == "categorical":
        classes = list(lab.names) if lab.names else [str(k) for k in range(lab.dim)]
        head += ["predicted"] + [f"prob_{c}" for c in classes] + ["true"]
        cols = [
            np.array(classes, dtype=object)[pred.label][:, None],
            point,
            np.array(classes, dtype=object)[np.clip(y, 0, lab.dim - 1)][:, None],
        ]
    elif pred.kind == "bernoulli":
        head += (
            _columns(lab.names, lab.dim, "predicted")
            + _columns(lab.names, lab.dim, "prob")
            + _columns(lab.names, lab.dim, "true")
        )
        cols = [pred.label, point, y.astype(np.int64)]
    else:
        level = f"{round(pred.interval * 100):g}"
        head += (
            _columns(lab.names, lab.dim, "mean")
            + _columns(lab.names, lab.dim, f"lower_{level}")
            + _columns(lab.names, lab.dim, f"upper_{level}")
            + _columns(lab.names, lab.dim, "true")
        )
        cols = [point, pred.lower, pred.upper, y.reshape(len(y), -1)]
    head.append("log_density")
    n_true = cols[-1].shape[1]
    rows = []
    for i in range(len(ds)):
        values = [ids[i]]
        for c in cols[:-1]:
            values += [v.item() if hasattr(v, "item") else v for v in c[i]]
        values += [v.item() if hasattr(v, "item") else v for v in cols[-1][i]] if known[i] else [""] * n_true
        values.append(float(pred.log_density[i]) if known[i] else "")
        rows.append(values)
    return head, rows


def write_csv(path: Path, head, rows) -> None:
    from ..outputs import atomic_write

    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(head)
    w.writerows([f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows)
    atomic_write(path, lambda f: f.write(text.getvalue().encode()))


def write_h5(path: Path, pred, ds, lab, attrs: dict) -> None:
    import h5py

    from ..outputs import atomic_write

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for k, v in attrs.items():
            f.attrs[k] = v
        f.create_dataset("ids", data=_ids(ds), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("predicted", data=pred.label)
        f.create_dataset("probabilities" if pred.kind in ("categorical", "bernoulli") else "mean", data=pred.point)
        if pred.lower is not None:
            f.create_dataset("lower", data=pred.lower)
            f.create_dataset("upper", data=pred.upper)
        f.create_dataset("log_density", data=pred.log_density)
        y, known = _truth(ds, lab)
        f.create_dataset("labels", data=y)
        f.create_dataset("label_present", data=known)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def run(args) -> int:
    from ..infer.device import compute
    from ..infer.predict import predict
    from ..outputs import check_output_file

    out = Path(args.out)
    if out.suffix.lower() not in FORMATS:
        raise DataError(f"--out {out}: unknown extension {out.suffix!r}; expected one of {', '.join(FORMATS)}")
    check_output_file(out, "--out")
    if out.exists() and not args.overwrite:
        raise DataError(f"file {out}: already exists; expected a new file name (or --overwrite)")
    mfm, config, ds, payload = load_for_inference(args, only_split=True)
    if mfm.D is None:
        raise DataError(f"{payload['path']}: the model has no label to predict")
    observed = parse_observed(args.observed)
    ev = config.evaluate
    with compute(config.train):
        pred = predict(
            mfm,
            ds,
            observed,
            num_samples=ev.num_samples,
            interval=ev.interval,
            batch_size=ev.batch_size,
            keep_samples=False,
            seed=ev.seed,
        )
    if out.suffix.lower() == ".csv":
        write_csv(out, *prediction_table(pred, ds, mfm.schema.label))
    else:
        write_h5(
            out,
            pred,
            ds,
            mfm.schema.label,
            {
                "observed": json.dumps(list(pred.observed)),
                "kind": pred.kind,
                "interval": pred.interval,
                "seed": ev.seed,
                "split": ds.split,
                "checkpoint": payload["path"],
                "checkpoint_sha256": payload.get("checksum") or "",
            },
        )
    print(
        f"predicted {mfm.schema.label.kind} labels of {len(ds)} samples ({ds.split}) from {list(pred.observed)} "
        f"-> {out}"
    )
    return 0
