"""``pyro-mfm data``: inspect and convert data sets.

pyro-mfm data info FILE
pyro-mfm data convert --from {uci-mfeat,mfn,csd,pickle,native,npz,csv} SRC... --out FILE [--overwrite]
                      [--trust-pickle] [--nan-as-missing] [--steps T] [--folds NAME] [--label-range LOW HIGH]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data import native
from ..data.build import declare_label
from ..data.builtin import EMBEDDED, embedded_path
from ..data.dataset import MultimodalData
from ..data.importers import align_csd, convert_uci_mfeat, load_csv, load_mfn, load_npz, load_pickle
from ..data.schema import DataError

SOURCES = ("uci-mfeat", "mfn", "csd", "pickle", "native", "npz", "csv")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="inspect and convert data sets", description="Inspect and convert data sets."
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    info = sub.add_parser(
        "info",
        help="describe a native data file",
        description="Schema, splits, sample counts, presence rate per modality, label summary and attribution of a "
        f"native .h5 file (or of an embedded data set: {', '.join(EMBEDDED)}).",
    )
    info.add_argument("file", metavar="FILE", help="native .h5 file, or the name of an embedded data set")
    info.set_defaults(func=run_info)

    conv = sub.add_parser(
        "convert",
        help="convert other formats to the native format",
        description="Convert a data set to the native HDF5 format. SRC: uci-mfeat: the folder of mfeat-*.csv; "
        "mfn: the folder of {modality}_{split}.h5 and y_{split}.h5; csd: the labels .csd, then feature "
        ".csd files (each PATH or NAME=PATH); pickle: a MulT/MMSA .pkl; native: a native .h5 file; "
        "npz: one .npz archive (an array per modality, "
        "'label', optional '<modality>_present', '<modality>_steps', 'label_present', 'split', 'ids', 'groups'); "
        "csv: one CSV per modality (each PATH or NAME=PATH) keyed by --id-column, with optional label, "
        "split, group and presence columns; a sample with empty feature cells is missing.",
    )
    conv.add_argument("--from", dest="source", choices=SOURCES, required=True, help="format of SRC")
    conv.add_argument("src", nargs="+", metavar="SRC", help="input file(s) or folder")
    conv.add_argument("--out", required=True, metavar="FILE", help="native .h5 file to write")
    conv.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    conv.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow unpickling SRC (a pickle can run arbitrary code: only for files you trust)",
    )
    conv.add_argument(
        "--nan-as-missing",
        action="store_true",
        help="mark samples (csd: steps) with NaN features missing instead of failing",
    )
    conv.add_argument(
        "--steps",
        type=int,
        default=20,
        metavar="T",
        help="csd: steps per sequence (front-padded/truncated); 0 averages each segment (default 20)",
    )
    conv.add_argument(
        "--folds",
        default="cmu_mosi",
        metavar="NAME",
        help="csd: standard folds to split by ('cmu_mosi'), or 'none' for one 'train' split",
    )
    conv.add_argument(
        "--label-range",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="declared range of regression labels (e.g. -3 3 for CMU-MOSI sentiment, whose evaluation then gives the "
        "field's Acc-2, Acc-7 and F1); a label outside it is an error",
    )
    conv.add_argument("--seed", type=int, default=None, help="uci-mfeat: seed of the stratified split")
    conv.add_argument("--name", default=None, help="data set name stored in the schema")
    conv.add_argument(
        "--label-kind",
        default="auto",
        choices=("auto", "regression", "categorical", "multilabel"),
        help="npz, csv: the label's kind (auto: integers and names are classes, other numbers "
        "regression, a bool array multilabel)",
    )
    conv.add_argument("--id-column", default="id", help="csv: column of sample ids (default 'id')")
    conv.add_argument("--label-column", default="label", help="csv: column of labels (default 'label')")
    conv.add_argument("--split-column", default="split", help="csv: column of split names (default 'split')")
    conv.add_argument(
        "--group-column",
        default="group",
        help="csv: column of each sample's group, e.g. its speaker (default 'group'); where the data have no "
        "validation split, training holds one out by whole groups",
    )
    conv.add_argument(
        "--presence-column", default="present", help="csv: column of 0/1 presence of the modality (default 'present')"
    )
    conv.set_defaults(func=run_convert)


# ------------------------------------------------------------------------------------------------------------ info
def run_info(args) -> int:
    path = Path(args.file)
    if not path.exists() and args.file in EMBEDDED:
        path = embedded_path(args.file)
    with native.load(path, lazy=True) as data:
        print(describe(data))
    return 0


def describe(data: MultimodalData) -> str:
    """A plain-text summary of a data set: schema, splits, presence rates, labels, attribution."""
    s = data.schema
    lines = [f"data set: {s.name or '(unnamed)'}   file: {data.source}", "modalities:"]
    for m in s.modalities:
        lines.append(f"  {m.name:<12} {m.kind:<8} shape {list(m.shape)}")
    if s.label is None:
        lines.append("label: none")
    else:
        lab = s.label
        rng = "" if lab.low is None and lab.high is None else f", range [{lab.low}, {lab.high}]"
        names = "" if lab.names is None else f", names {', '.join(lab.names[:10])}{' ...' if lab.dim > 10 else ''}"
        lines.append(f"label: {lab.kind}, dim {lab.dim}{rng}{names}")
    lines.append("splits:")
    for split, ds in data.splits.items():
        pres = ", ".join(f"{m} {ds.present[m].mean():.1%}" if ds.n else f"{m} -" for m in s.names)
        lines.append(f"  {split:<8} N={ds.n:<7} present: {pres}")
        if s.label is not None and ds.n:
            lines.append(f"  {'':<8} labels: {_label_summary(ds)}")
        if ds.groups is not None and ds.n:
            lines.append(f"  {'':<8} groups: {len(np.unique(ds.groups))} (speakers, videos, ...)")
    if data.imputation is not None:
        imp = data.imputation
        lines.append(
            f"imputed: {', '.join(imp.get('imputed') or []) or 'nothing'} from "
            f"{', '.join(imp.get('observed') or [])} (values of a model, not data: do not evaluate on them)"
        )
        lines.append(
            f"  checkpoint {imp.get('checkpoint')}"
            + (f" (sha256 {imp['checkpoint_sha256'][:16]}...)" if imp.get("checkpoint_sha256") else "")
        )
        lines.append(
            f"  from file {imp.get('source')}, split {imp.get('split')!r}; {imp.get('num_samples')} "
            f"posterior draws, seed {imp.get('seed')}"
        )
        for split, ds in data.splits.items():
            if ds.imputed is None or not ds.n:
                continue
            parts = [
                f"{m} {np.asarray(ds.imputed[m]).mean():.1%} imputed, mean posterior sd {_imputed_sd(ds, m):.3g}"
                for m in s.names
                if np.asarray(ds.imputed[m]).any()
            ]
            lines.append(f"  {split:<8} " + "; ".join(parts))
    if s.attribution:
        lines.append("attribution:")
        lines.extend(f"  {line}" for line in s.attribution.splitlines())
    return "\n".join(lines)


def _imputed_sd(ds, m: str) -> float:
    mask = np.asarray(ds.imputed[m], bool)
    return float(np.asarray(ds.imputed_std[m])[mask].mean())


def _label_summary(ds) -> str:
    lab = ds.schema.label
    obs = ds.label_present
    y = np.asarray(ds.labels)[obs]
    head = f"{obs.mean():.1%} observed"
    if not len(y):
        return head
    if lab.kind == "categorical":
        counts = np.bincount(y, minlength=lab.dim)
        names = lab.names or tuple(str(c) for c in range(lab.dim))
        return head + "; counts " + " ".join(f"{n}:{c}" for n, c in zip(names, counts))
    if lab.kind == "multilabel":
        return head + "; positive rate " + " ".join(f"{r:.2f}" for r in y.mean(axis=0))
    stats = [f"mean {y.mean():.3g}", f"sd {y.std():.3g}", f"min {y.min():.3g}", f"max {y.max():.3g}"]
    return head + "; " + ", ".join(stats) + (f" (over all {lab.dim} outputs)" if lab.dim > 1 else "")


# --------------------------------------------------------------------------------------------------------- convert
def run_convert(args) -> int:
    from ..outputs import check_output_file

    check_output_file(args.out, "--out")  # before the conversion, not after it
    if Path(args.out).exists() and not args.overwrite:
        raise DataError(f"--out {args.out}: already exists; expected a new file name (or --overwrite)")
    data = convert(args)
    out = native.save(data, args.out, overwrite=args.overwrite)
    sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
    print(f"wrote {out}: {len(data.schema.modalities)} modalities ({', '.join(data.schema.names)}); {sizes}")
    return 0


def _one(args) -> str:
    if len(args.src) != 1:
        raise DataError(f"--from {args.source}: expected one SRC, got {len(args.src)}: {args.src}")
    return args.src[0]


def _named(items) -> dict:
    """``NAME=PATH`` or ``PATH`` (named by its stem) items as ``{name: path}``."""
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (Path(item).stem, item)
        if name in out:
            raise DataError(f"SRC {item}: modality {name!r} named twice; expected one file per modality")
        out[name] = path
    return out


def _ranged(data: MultimodalData, rng) -> MultimodalData:
    """``data`` with the declared range of ``--label-range`` (:func:`declare_label`), where given."""
    return data if rng is None else declare_label(data, rng)


def convert(args) -> MultimodalData:
    """The data set that ``data convert`` writes, from the parsed arguments."""
    rng = tuple(args.label_range) if args.label_range else None
    if args.source == "uci-mfeat":
        if rng is not None:
            raise DataError("--label-range: uci-mfeat's labels are classes; a range applies to regression labels only")
        kwargs = {} if args.seed is None else {"seed": args.seed}
        data = convert_uci_mfeat(_one(args), **kwargs)
        return data.validate_values(args.nan_as_missing)
    if args.source == "mfn":
        return load_mfn(_one(args), label_range=rng, name=args.name, nan_as_missing=args.nan_as_missing)
    if args.source == "pickle":
        return load_pickle(
            _one(args), trust=args.trust_pickle, label_range=rng, name=args.name, nan_as_missing=args.nan_as_missing
        )
    if args.source == "native":
        return _ranged(native.load(_one(args), nan_as_missing=args.nan_as_missing), rng)
    if args.source == "npz":
        data = load_npz(_one(args), label_kind=args.label_kind, name=args.name, nan_as_missing=args.nan_as_missing)
        return _ranged(data, rng)
    if args.source == "csv":
        data = load_csv(
            _named(args.src),
            id_column=args.id_column,
            label_column=args.label_column,
            split_column=args.split_column,
            group_column=args.group_column,
            presence_column=args.presence_column,
            label_kind=args.label_kind,
            name=args.name or "",
            nan_as_missing=args.nan_as_missing,
        )
        return _ranged(data, rng)
    if len(args.src) < 2:
        raise DataError("--from csd: expected the labels .csd then at least one feature .csd (PATH or NAME=PATH)")
    features = _named(args.src[1:])
    folds = None if args.folds.lower() == "none" else args.folds
    return align_csd(
        args.src[0],
        features,
        steps=args.steps or None,
        folds=folds,
        label_range=rng,
        nan_as_missing=args.nan_as_missing,
        name=args.name,
    )
