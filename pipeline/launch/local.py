"""``oat train``: the training loop in this process, with MLflow tracking as its callback when the job asks.

The same :func:`pipeline.training.loop.fit` as every Ray Train worker runs; here the launcher's part is to
begin (or continue) the MLflow run before training and to fetch a warm start (``train.init_from``).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import JobConfig
from pipeline.platform.tracking import RunInfo, fetch_init, tracking_callbacks
from pipeline.training.callbacks import TrainResult
from pipeline.training.loop import fit


def train_here(job: JobConfig, out: str | Path, *, resume: bool = True, progress: bool = True,
               final_test: bool = True, label: str = "", info: RunInfo | None = None) -> TrainResult:
    """Train ``job`` into ``out`` in this process; ``info``: an MLflow run the caller already began."""
    out = Path(out)
    callbacks = tracking_callbacks(job, out, info=info, resume=resume)
    return fit(job, out, callbacks, resume=resume, progress=progress, final_test=final_test, label=label,
               init=fetch_init(job, out))
