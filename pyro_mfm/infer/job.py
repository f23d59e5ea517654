"""The main job: train, evaluate on every subset of observed modalities, impute, and write a report folder.

``<out>/`` receives ``checkpoint/`` (the training run), ``metrics.json`` (every metric for every observed subset,
baselines, the training log), ``report.md`` (readable tables), ``imputed_<modality>.h5`` (the test split with that
modality imputed from all others, in the native format) and ``plots/*.png``. The job holds a lock on ``<out>``;
a non-empty ``<out>`` is refused unless resuming or overwriting. SIGINT or SIGTERM stops it (training at the next
step, after a checkpoint; the evaluation between its stages) before ``metrics.json`` and ``report.md`` are written,
so a folder with a report holds a finished job. The report itself is written by :mod:`pyro_mfm.report`.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..config import Config
from ..data import native
from ..data.dataset import MultimodalData
from ..data.schema import DataError
from ..data.sources import load_data
from .checkpoint import folder_lock, prepare_folder
from .device import compute
from .evaluate import evaluate, mean_imputation_baseline
from .faults import StopRequested
from .predict import impute, imputed_data
from .train import fit

REPORT_FILES = ("checkpoint", "metrics.json", "report.md", "imputed_*.h5", "plots", ".*.tmp")
"""What a report folder holds (``overwrite`` deletes only these)."""


class Interrupted(Exception):
    """SIGINT or SIGTERM arrived during the evaluation stages of the job."""


def run(
    config: Config, out_dir, resume: bool = False, overwrite: bool = False, allow_config_change: bool = False
) -> dict:
    """Train, evaluate every observed subset on the test split, impute, write the report. Returns the metrics, or
    ``{"interrupted": "SIGTERM", "checkpoint": ...}`` when a signal stopped the job (no report is written then).
    ``resume``, ``overwrite`` and ``allow_config_change`` as in :func:`pyro_mfm.infer.train.fit`."""
    out = Path(out_dir)
    with compute(config.train), folder_lock(out, "report folder"):
        prepare_folder(out, resume, overwrite, REPORT_FILES, "report folder")
        for name in ("report.md", "metrics.json"):  # a report of the run being continued is no longer true
            (out / name).unlink(missing_ok=True)
        try:
            return _run(config, out, resume, allow_config_change)
        except Interrupted as e:
            return {"interrupted": str(e), "checkpoint": str(out / "checkpoint")}


def _run(config: Config, out: Path, resume: bool, allow_config_change: bool) -> dict:
    t0 = time.time()
    data = load_data(config)
    if config.data.test_split not in data:
        raise DataError(f"{data.source}: no test split {config.data.test_split!r}; the data set has {list(data)}")
    result = fit(config, data, out / "checkpoint", resume=resume, allow_config_change=allow_config_change)
    if result.interrupted:
        raise Interrupted(result.interrupted)
    with StopRequested() as stop:
        return _report(config, out, data, result, t0, stop)


def _report(config: Config, out: Path, data: MultimodalData, result, t0: float, stop: StopRequested) -> dict:
    from ..report import write_report  # the report's plots and baselines are loaded only to write one

    def check() -> None:
        if stop.signum is not None:
            raise Interrupted(stop.name)

    t_train = time.time() - t0
    mfm, test = result.mfm, data[config.data.test_split]
    ev = config.evaluate
    predictions: dict = {}
    records = evaluate(
        mfm,
        test,
        num_samples=ev.num_samples,
        interval=ev.interval,
        batch_size=ev.batch_size,
        progress=config.train.progress,
        seed=ev.seed,
        predictions=predictions,
    )
    check()
    mean_baseline = mean_imputation_baseline(data[config.data.train_split], test)
    # what the imputed files name as their model: best.pt, or an ensemble's folder of members
    checkpoint = out / "checkpoint" if result.members else out / "checkpoint" / "best.pt"
    for m in mfm.schema.names:  # each modality imputed from all the others, written in the native format
        others = [n for n in mfm.schema.names if n != m]
        if others:
            imp = impute(mfm, test, others, num_samples=ev.num_samples, batch_size=ev.batch_size, seed=ev.seed)
            native.save(
                imputed_data(test, imp, checkpoint=checkpoint, num_samples=ev.num_samples, seed=ev.seed),
                out / f"imputed_{m}.h5",
                overwrite=True,
            )
            check()
    return write_report(config, out, data, result, records, predictions, mean_baseline, t0, t_train, check)
