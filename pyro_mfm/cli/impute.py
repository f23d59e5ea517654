"""``pyro-mfm impute``: impute the modalities outside --observed and write them in the native HDF5 format."""

from __future__ import annotations

import numpy as np

from ._common import parse_observed


def register(subparsers) -> None:
    p = subparsers.add_parser("impute", help="impute unobserved modalities from observed ones", description=__doc__)
    p.add_argument("checkpoint", help="checkpoint file or run folder (best.pt is used)")
    p.add_argument("--observed", required=True, help="comma-separated modalities to condition on, e.g. fou,kar")
    p.add_argument("--data", help="data source (default: the one the model was trained on)")
    p.add_argument("--split", default=None, help="split to impute (default: the configuration's test split)")
    p.add_argument("--num-samples", type=int, default=None, help="posterior samples per imputation")
    p.add_argument("--out", required=True, help="native HDF5 file to write (refuses to overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import native
    from ..data.dataset import MultimodalData, MultimodalDataset
    from ..infer.checkpoint import load_model
    from ..infer.job import load_data
    from ..infer.train import cpu_threads
    from ..infer.predict import impute

    mfm, config, _ = load_model(args.checkpoint)
    if args.data:
        config.data.source = args.data
    ds = load_data(config)[args.split or config.data.test_split]
    observed = parse_observed(args.observed)
    with cpu_threads(config.train.num_threads):
        imp = impute(mfm, ds, observed, num_samples=args.num_samples or config.evaluate.num_samples,
                     batch_size=config.evaluate.batch_size)
    present = {m: (ds.present[m] if m in imp.observed else np.ones(len(ds), bool)) for m in ds.schema.names}
    out = MultimodalDataset(ds.schema, {m: imp.mean[m].astype(np.float32) for m in ds.schema.names}, present,
                            ds.steps, ds.labels, ds.label_present, split=ds.split, ids=ds.ids)
    native.save(MultimodalData(ds.schema, {ds.split: out}), args.out, overwrite=args.overwrite)
    print(f"imputed {[m for m in ds.schema.names if m not in imp.observed]} from {list(imp.observed)} "
          f"for {len(ds)} samples -> {args.out}")
    return 0
