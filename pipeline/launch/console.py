"""The console relay of a Ray run: what our Ray workers and Tune trials print, printed once by the driver.

Ray streams every worker's output to the driver with a ``(RayTrainWorker pid=…)`` prefix, together with its own
controller's and raylets' lines; with ``log_to_driver=False`` none of that reaches the console, and this relay
brings back ours. It is a small Ray actor named after the Ray job (:func:`console_to_driver` finds it from any
worker or trial of the job) that the driver long-polls: the driver's thread and the actor sleep until a line
arrives (a once-a-second timeout aside), so the relay costs the training worker no CPU while nothing is printed.

This module imports only the standard library (and Ray, inside the functions): the relay's actor process
unpickles :class:`ConsoleBuffer` from here, and so starts without torch or the rest of the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import threading
from collections.abc import Iterator
from typing import Any


class ConsoleBuffer:
    """The relay's Ray actor (asynchronous): lines ``(stream, text)`` put by workers, taken in order by the
    driver."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._arrived: asyncio.Event | None = None  # made inside the actor's event loop, on first use

    def _event(self) -> asyncio.Event:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        return self._arrived

    async def put(self, lines: list[tuple[str, str]]) -> None:
        self.lines.extend(lines)
        self._event().set()

    async def take(self, wait_s: float = 0.0) -> list[tuple[str, str]]:
        """The lines put since the last take; with none yet, wait up to ``wait_s`` seconds for some."""
        if not self.lines and wait_s > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event().wait(), wait_s)
        self._event().clear()
        lines, self.lines = self.lines, []
        return lines


def console_name() -> str:
    import ray

    return f"oat-console-{ray.get_runtime_context().get_job_id()}"


class Console:
    """The driver's side of the relay: prints what workers and trials put, on the stream it was written to. Use
    as a context manager around the run."""

    def __init__(self, wait_s: float = 1.0):
        import ray

        self.actor: Any = ray.remote(num_cpus=0)(ConsoleBuffer).options(name=console_name(),
                                                                   get_if_exists=True).remote()
        self.wait_s = wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="oat-console", daemon=True)

    def _print(self, wait_s: float = 0.0) -> None:
        import ray

        for stream, text in ray.get(self.actor.take.remote(wait_s)):
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.write(text + "\n")
            out.flush()

    def _pump(self) -> None:
        while not self._stop.is_set():
            try:
                self._print(self.wait_s)
            except Exception:  # noqa: BLE001 - the relay never stops the run; Ray's log files keep every line
                return

    def __enter__(self) -> Console:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        import ray

        self._stop.set()
        self._thread.join()  # within one wait_s: the pump's last take returns by then
        with contextlib.suppress(ray.exceptions.RayError):  # Ray going down with an error: that error matters
            self._print()


class _Tee(io.TextIOBase):
    """A text stream that writes through to ``stream`` (Ray's log file) and sends each whole line to the relay."""

    _inside = threading.local()  # set while a tee writes through: a stream that writes through the other one
    # (a Ray worker's stdout can write to the current sys.stderr) must not relay the same line a second time

    def __init__(self, stream: Any, actor: Any, name: str):
        self.stream, self.actor, self.name, self._part = stream, actor, name, ""

    def write(self, text: str) -> int:
        if getattr(_Tee._inside, "on", False):
            self.stream.write(text)
            return len(text)
        _Tee._inside.on = True
        try:
            self.stream.write(text)
        finally:
            _Tee._inside.on = False
        *lines, self._part = (self._part + text).split("\n")
        if lines:
            self.actor.put.remote([(self.name, line.rsplit("\r", 1)[-1]) for line in lines])
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False

    def close_line(self) -> Any:
        """Send what is left of the last line and wait for the relay to hold every line sent so far."""
        ref = self.actor.put.remote([(self.name, self._part)] if self._part else [])
        self._part = ""
        return ref


@contextlib.contextmanager
def console_to_driver(enabled: bool = True) -> Iterator[None]:
    """Inside a Ray worker or trial: what this process prints also goes to the driver's :class:`Console` (when the
    driver has one: a driver of our own; otherwise Ray's log files and its log streaming keep the output)."""
    import ray

    try:
        actor = ray.get_actor(console_name()) if enabled else None
    except ValueError:
        actor = None
    if actor is None:
        yield
        return
    out, err = _Tee(sys.stdout, actor, "stdout"), _Tee(sys.stderr, actor, "stderr")
    sys.stdout, sys.stderr = out, err
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        with contextlib.suppress(Exception):
            ray.get([out.close_line(), err.close_line()], timeout=10)
