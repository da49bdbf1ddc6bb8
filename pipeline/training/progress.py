"""Progress a person can follow: epoch, step, loss, throughput and ETA on one line.

On a terminal the line redraws in place (at most 4 times a second); in a log (not a TTY) a line is
printed every ``log_every_s`` seconds and at the end of every epoch, so CI and Ray logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def fmt_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    def __init__(self, total_epochs: int, steps_per_epoch: int, start_epoch: int = 0, *, enabled: bool = True,
                 stream: TextIO | None = None, log_every_s: float = 30.0, label: str = ""):
        self.total_epochs, self.steps = total_epochs, max(1, steps_per_epoch)
        self.start_epoch = start_epoch
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.log_every_s = log_every_s
        self.label = f"[{label}] " if label else ""
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._epoch_t0 = self.t0
        self.epoch = start_epoch

    def start_epoch_(self, epoch: int) -> None:
        self.epoch = epoch
        self._epoch_t0 = time.perf_counter()

    def _eta(self, step: int) -> float:
        done = (self.epoch - self.start_epoch) * self.steps + step
        left = (self.total_epochs - self.epoch) * self.steps - step
        elapsed = time.perf_counter() - self.t0
        return elapsed / done * left if done else float("nan")

    def step(self, step: int, loss: float | None, images_per_s: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._last < (0.25 if self.tty else self.log_every_s) and step != self.steps:
            return
        self._last = now
        width = 20
        filled = int(width * step / self.steps)
        bar = "█" * filled + "·" * (width - filled)
        eta = self._eta(step)
        text = (f"{self.label}epoch {self.epoch + 1}/{self.total_epochs} {bar} {step}/{self.steps}"
                f"  loss {loss:.4f}" if loss is not None else f"{self.label}epoch {self.epoch + 1}/{self.total_epochs}")
        text += f"  {images_per_s:,.0f} img/s  ETA {fmt_duration(eta) if eta == eta else '?'}"
        if self.tty:
            self.stream.write("\r\033[K" + text)
        elif step != self.steps:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        self.stream.write(f"{self.label}{text}\n")
        self.stream.flush()
