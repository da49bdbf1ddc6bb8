"""The training loop's only way out: a callback protocol (as torchtune's ``MetricLoggerInterface``).

The loop (:func:`pipeline.training.loop.fit`) writes its own files (``latest.pt``, ``history.json``, ...) and
otherwise only calls its callbacks; it imports neither MLflow nor Ray. MLflow tracking
(:mod:`pipeline.platform.tracking`) and the Ray Train report (:mod:`pipeline.launch.ray_run`) are callbacks
that their launchers pass in. A callback overrides the hooks it needs; each hook runs on every rank
(``run.is_main`` tells rank 0), in the order of the list.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import JobConfig
    from pipeline.science.curves import Point
    from pipeline.science.model import RobustNet


@dataclass
class RunContext:
    """What a callback may read of the run: the job, its folder, the model, this rank."""

    job: JobConfig
    out: Path
    model: RobustNet
    rank: int = 0
    world: int = 1
    start_epoch: int = 0  # > 0: resumed from latest.pt
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs done before this start (resumed)
    data: dict[str, Any] = field(default_factory=dict)  # the data set as a tracking input (DataSource.as_input)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict[str, Any]]
    test_points: list[Point] = field(default_factory=list)
    seconds: float = 0.0


class Callback:
    """No-op hooks; subclass and override."""

    def on_start(self, run: RunContext) -> None:
        """The model is built (and restored when resuming); no epoch has run yet."""

    def on_epoch_end(self, run: RunContext, record: dict[str, Any], last: bool) -> None:
        """An epoch ended and ``latest.pt`` / ``history.json`` hold it. ``last``: the final epoch (the test
        curve and ``final.pt`` follow, then :meth:`on_end`)."""

    def on_end(self, run: RunContext, result: TrainResult) -> None:
        """Training, ``final.pt`` and the test curve are done."""

    def on_error(self, exc: BaseException) -> None:
        """The run failed (or was interrupted) with ``exc``; it is re-raised after every callback ran."""


class Callbacks(Callback):
    """Several callbacks as one, called in order."""

    def __init__(self, callbacks: Sequence[Callback] = ()):
        self.items = list(callbacks)

    def on_start(self, run: RunContext) -> None:
        for c in self.items:
            c.on_start(run)

    def on_epoch_end(self, run: RunContext, record: dict[str, Any], last: bool) -> None:
        for c in self.items:
            c.on_epoch_end(run, record, last)

    def on_end(self, run: RunContext, result: TrainResult) -> None:
        for c in self.items:
            c.on_end(run, result)

    def on_error(self, exc: BaseException) -> None:
        for c in self.items:
            with contextlib.suppress(Exception):  # one failing clean-up must not hide the error or skip the others
                c.on_error(exc)
