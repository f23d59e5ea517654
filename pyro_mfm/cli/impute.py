"""``pyro-mfm impute``: impute the modalities outside --observed and write them in the native HDF5 format."""

from __future__ import annotations

import os

from ..data.schema import DataError
from ._common import add_checkpoint_arguments, load_for_inference, parse_observed


def register(subparsers) -> None:
    p = subparsers.add_parser("impute", help="impute unobserved modalities from observed ones", description=__doc__)
    add_checkpoint_arguments(p, "impute")
    p.add_argument("--observed", required=True, help="comma-separated modalities to condition on, e.g. fou,kar")
    p.add_argument("--out", required=True, help="native HDF5 file to write (refuses to overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..data import native
    from ..infer.device import compute
    from ..infer.predict import impute, imputed_data
    from ..outputs import check_output_file

    check_output_file(args.out, "--out")
    if os.path.exists(args.out) and not args.overwrite:
        raise DataError(f"--out {args.out}: already exists; expected a new file name (or --overwrite)")
    mfm, config, ds, payload = load_for_inference(args)
    num_samples = config.evaluate.num_samples
    with compute(config.train):
        imp = impute(
            mfm,
            ds,
            parse_observed(args.observed),
            num_samples=num_samples,
            batch_size=config.evaluate.batch_size,
            seed=config.evaluate.seed,
        )
    data = imputed_data(
        ds,
        imp,
        checkpoint=payload["path"],
        checkpoint_sha256=payload.get("checksum"),
        num_samples=num_samples,
        seed=config.evaluate.seed,
    )
    native.save(data, args.out, overwrite=args.overwrite)
    print(
        f"imputed {[m for m in ds.schema.names if m not in imp.observed]} from {list(imp.observed)} "
        f"for {len(ds)} samples -> {args.out}"
    )
    return 0
