"""``oat schedule JOB``: the job's retraining schedule (``schedule: "0 3 * * 0"``) on this machine.

A long-running process that starts ``oat retrain JOB`` at each fire time of the cron schedule (UTC):

* **no overlaps**: a fire time that finds the previous retraining still running is skipped (and logged);
* **survives restarts**: the state (the last fire time, the run in flight with its pid, the history) lives in
  ``<retrain.folder>/<model>/schedule.json``, written atomically. A restarted scheduler sees a retraining that
  is still running (it runs in its own session, so it outlives the scheduler) and does not start another; a
  fire time missed while it was down is made up once, not once per missed slot;
* **one scheduler per job**: an exclusive lock (``schedule.lock``) refuses a second one.

Each run's output goes to ``<retrain.folder>/<model>/logs/<fire time>.log``. On a cluster the same schedule is
a KubeRay ``RayCronJob`` or a Kubernetes ``CronJob`` (``infra/k8s/``).
"""

from __future__ import annotations

import fcntl
import json
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, load_job
from pipeline.cron import Cron
from pipeline.files import atomic_write_text
from pipeline.platform.services import pid_alive  # a pid that runs (a zombie does not)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(s: str) -> datetime:
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


class Scheduler:
    def __init__(self, job_file: str | Path, overrides: Sequence[str] = (), *, log: Any = None):
        self.job_file = str(job_file)
        self.overrides = list(overrides)
        job = load_job(job_file, self.overrides)
        if not job.schedule:
            raise ConfigError("schedule: the job has no schedule (e.g. schedule: \"0 3 * * 0\" for Sundays 03:00 UTC)")
        self.cron = Cron.parse(job.schedule)
        name = str(job.retrain.model_name or job.tracking.model_name or job.name)
        self.folder = Path(job.retrain.folder) / name
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state_file = self.folder / "schedule.json"
        self.child: subprocess.Popen | None = None
        self._stop = False
        self.log = log or (lambda m: print(f"[schedule {_iso(_now())}] {m}", flush=True))

    # --------------------------------------------------------------------------------- state
    def _load(self) -> dict[str, Any]:
        if self.state_file.is_file():
            try:
                return json.loads(self.state_file.read_text())
            except json.JSONDecodeError:
                self.log(f"{self.state_file} is unreadable: starting a fresh schedule state")
        return {"schedule": self.cron.text, "last_fire": None, "running": None, "history": []}

    def _save(self, st: dict[str, Any]) -> None:
        st["history"] = st["history"][-200:]
        atomic_write_text(json.dumps(st, indent=1) + "\n", self.state_file)

    def _finish(self, st: dict[str, Any]) -> None:
        """Record the end of the run in flight (ours, or one a previous scheduler started)."""
        run = st.get("running")
        if not run:
            return
        rc = None
        if self.child is not None and self.child.pid == run["pid"]:
            rc = self.child.poll()
            if rc is None:
                return
            self.child = None
        elif pid_alive(int(run["pid"])):
            return
        for h in reversed(st["history"]):
            if h.get("pid") == run["pid"] and h.get("event") == "started":
                h["ended"] = _iso(_now())
                h["returncode"] = rc
                break
        st["running"] = None
        self._save(st)
        self.log(f"retraining of {run['fire']} ended" + (f" (exit {rc})" if rc is not None else ""))

    def _fire(self, st: dict[str, Any], fire: datetime) -> None:
        self._finish(st)
        if st.get("running"):
            run = st["running"]
            self.log(f"skipping {_iso(fire)}: the retraining started {run['started']} (pid {run['pid']}) is still "
                     "running")
            st["history"].append({"fire": _iso(fire), "event": "skipped", "reason": "previous run still running"})
        else:
            logs = self.folder / "logs"
            logs.mkdir(exist_ok=True)
            out = open(logs / f"{_iso(fire).replace(':', '')}.log", "ab")  # noqa: SIM115 - the child keeps it
            cmd = [sys.executable, "-m", "pipeline.cli", "retrain", self.job_file,
                   *(a for s in self.overrides for a in ("--set", s))]
            self.child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            out.close()
            st["running"] = {"pid": self.child.pid, "fire": _iso(fire), "started": _iso(_now())}
            st["history"].append({"fire": _iso(fire), "event": "started", "pid": self.child.pid,
                                  "started": _iso(_now()), "log": str(logs / f"{_iso(fire).replace(':', '')}.log")})
            self.log(f"started retraining for {_iso(fire)} (pid {self.child.pid})")
        st["last_fire"] = _iso(fire)
        self._save(st)

    # --------------------------------------------------------------------------------- loop
    def run(self, max_fires: int | None = None) -> int:
        lock = open(self.folder / "schedule.lock", "a+")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another `oat schedule` already runs this job (lock {self.folder / 'schedule.lock'})") \
                from None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: setattr(self, "_stop", True))
        st = self._load()
        if st.get("schedule") != self.cron.text:
            st["schedule"] = self.cron.text
        fires = 0
        now = _now()
        if st.get("last_fire"):
            missed = self.cron.next_after(_parse(st["last_fire"]))
            if missed <= now:
                self.log(f"a fire time ({_iso(missed)}) passed while the scheduler was down: making it up now")
                self._fire(st, now)
                fires += 1
        self.log(f"schedule '{self.cron.text}' (UTC) for {self.job_file}; next: {_iso(self.cron.next_after(now))}")
        while not self._stop and (max_fires is None or fires < max_fires):
            nxt = self.cron.next_after(max(_now(), _parse(st["last_fire"])) if st.get("last_fire") else _now())
            while not self._stop and _now() < nxt:
                self._finish(st)
                time.sleep(min(1.0, max(0.05, (nxt - _now()).total_seconds())))
            if self._stop:
                break
            self._fire(st, nxt)
            fires += 1
        self._finish(st)  # a run still in flight finishes on its own; a restarted scheduler will see it
        self.log("scheduler stopped")
        return 0


def wait_for_run(folder: Path, timeout: float = 600) -> None:
    """Block until the state in ``folder`` has no run in flight (for tests and scripts)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        st = json.loads((folder / "schedule.json").read_text())
        run = st.get("running")
        if not run or not pid_alive(int(run["pid"])):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the retraining in {folder} is still running after {timeout:.0f} s")
