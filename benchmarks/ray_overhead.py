"""Ray Train's overhead: `oat run` with 1 worker against `oat train` in one process, same job; and the
throughput of 1 and 2 workers on this machine.

    .venv/bin/python -m benchmarks.ray_overhead [--epochs 6] [--steps 18]

The job is jobs/digits_oat.yaml (OAT, LeNet, PGD-10, global batch 64), ``--epochs`` epochs of
``--steps`` steps, validation only at the end. Epoch time is the median over epochs after the first (the
first holds FFCV's JIT compile in every variant). Start-up (Ray start, worker group, imports, loaders) is
what the wall-clock time adds on top of the epochs and the final test. A local Ray is started for each
Ray variant, as `oat run` does without RAY_ADDRESS. The CPU each process used during a Ray variant is recorded
(the training worker against Ray's own processes).

Start-up as a user meets it: ``oat train`` and ``oat run`` as fresh commands on the same job cut to one step
and a PGD-only test on 50 images, timed to the run's first line (the job announced: imports, Ray, worker
group, data) and to the end.
Writes ``benchmarks/results/ray_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result


def _role(proc) -> str:
    """Who a process is, for the CPU table: this driver, our training worker, or one of Ray's own processes (a Ray
    worker's title names its actor once it has one: ``ray::RayTrainWorker.…``)."""
    if proc.pid == os.getpid():
        return "driver (oat run)"
    try:
        text = " ".join(proc.cmdline()) or proc.name()
    except Exception:  # noqa: BLE001 - a process that went away
        return "gone"
    for key, role in (("RayTrainWorker", "training worker"), ("TrainController", "Ray Train controller"),
                      ("ConsoleBuffer", "console relay actor"), ("ray::", "other Ray actors"),
                      ("default_worker.py", "other Ray actors"), ("gcs_server", "GCS"), ("raylet", "raylet"),
                      ("dashboard/agent", "dashboard agent"), ("runtime_env/agent", "runtime-env agent"),
                      ("dashboard.py", "dashboard"), ("log_monitor", "log monitor"), ("monitor.py", "monitor")):
        if key in text:
            return role
    return "other"


def _cpu_seconds() -> Iterator[tuple[tuple[int, float], Any, float]]:
    """(pid, start time), the process and its CPU seconds (user + system), for every process still there."""
    import psutil

    for proc in psutil.process_iter():
        try:
            t = proc.cpu_times()
            yield (proc.pid, proc.create_time()), proc, t.user + t.system
        except Exception:  # noqa: BLE001 - a process that went away
            continue


class CpuByProcess:
    """CPU seconds per process role while a block runs: every process on the machine is sampled each
    ``every`` seconds and its last sample counts (a process that ends between samples loses at most that)."""

    def __init__(self, every: float = 1.0):
        self.every, self.seen = every, {}
        self._stop = threading.Event()

    def _sample(self) -> None:
        for key, proc, cpu in _cpu_seconds():
            # the role is read again each time (a Ray worker takes its actor's title after it starts), and kept
            # when the process has ended meanwhile
            role = _role(proc)
            if role == "gone":
                role = self.seen.get(key, ["gone"])[0]
            self.seen[key] = [role, cpu - self.start.get(key, 0.0)]

    def __enter__(self) -> CpuByProcess:
        self.start = {key: cpu for key, _, cpu in _cpu_seconds()}
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def table(self) -> dict[str, float]:
        """CPU seconds per role, largest first (roles that used under 0.05 s left out)."""
        per: dict[str, float] = {}
        for role, cpu in self.seen.values():
            per[role] = per.get(role, 0.0) + cpu
        return {k: round(v, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1]) if v >= 0.05}

JOB = Path(__file__).resolve().parent.parent / "jobs" / "digits_oat.yaml"


def startup(cmd: str, tmp: Path) -> dict[str, float]:
    """Seconds from a fresh ``oat <cmd>`` to its job's first line (``… on digits (… images, …)``) and to its
    exit, on the benchmark's job cut to one step (no tracking, PGD-only test on 50 images)."""
    import subprocess
    import sys

    sets = ["train.epochs=1", "train.max_steps_per_epoch=1", "eval.max_images=50", "eval.test_steps=2",
            "eval.test_attacks=[pgd]", "tracking.enabled=false"]
    args = [sys.executable, "-m", "pipeline.cli", cmd, str(JOB), "--out", str(tmp / f"startup-{cmd}"),
            *(["--storage", str(tmp / "startup-store")] if cmd == "run" else []),
            *(x for kv in sets for x in ("--set", kv))]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    t0 = time.perf_counter()
    first = None
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            if first is None and " on digits (" in line:
                first = time.perf_counter() - t0
    if proc.returncode != 0 or first is None:
        raise SystemExit(f"oat {cmd} failed (exit {proc.returncode})")
    return {"to_first_line_s": first, "total_s": time.perf_counter() - t0}


def epochs_of(history: list[dict]) -> dict:
    later = [h["seconds"] for h in history[1:]]
    return {"epoch_s": statistics.median(later), "first_epoch_s": history[0]["seconds"],
            "images_per_s": statistics.median(h["images_per_s"] for h in history[1:]),
            "data_wait_share": statistics.median(h["data_wait_share"] for h in history[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--out", default=str(RESULTS / "ray_overhead.json"))
    a = ap.parse_args()
    cpus = len(os.sched_getaffinity(0))
    sets = [f"train.epochs={a.epochs}", f"train.max_steps_per_epoch={a.steps}", "eval.every=1000",
            "eval.last_quarter=false", "eval.max_images=200", "eval.test_steps=7"]
    from pipeline.config import load_job
    from pipeline.launch.ray_run import run_job
    from pipeline.training.loop import fit

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="oat-bench-ray-") as tmp:
        job = load_job(JOB, [*sets, f"train.threads={cpus}"])
        t0 = time.perf_counter()
        res = fit(job, Path(tmp) / "train", progress=False)  # one process: no sampling thread beside the step
        results["oat train (1 process)"] = {**epochs_of(res.history), "wall_s": time.perf_counter() - t0,
                                            "threads": cpus}
        import ray

        for workers in (1, 2):
            per = cpus // workers
            job = load_job(JOB, [*sets, f"ray.num_workers={workers}", f"ray.cpus_per_worker={per}"])
            t0 = time.perf_counter()
            with CpuByProcess() as cpu:
                r = run_job(job, name=f"bench{workers}", storage_path=str(Path(tmp) / "store"),
                            out=Path(tmp) / f"run{workers}")
            wall = time.perf_counter() - t0
            ray.shutdown()
            hist = json.loads((Path(tmp) / f"run{workers}" / "history.json").read_text())
            results[f"oat run, {workers} worker{'s' if workers > 1 else ''} × {per} CPU"] = {
                **epochs_of(hist), "wall_s": wall, "run_s": r.seconds, "cpu_s_by_process": cpu.table()}
        starts = {f"oat {cmd}": startup(cmd, Path(tmp)) for cmd in ("train", "run")}
    base = results["oat train (1 process)"]
    one = results[f"oat run, 1 worker × {cpus} CPU"]
    for r in results.values():
        r["epoch_vs_oat_train"] = r["epoch_s"] / base["epoch_s"]
    body = {"cpus": cpus, "job": str(JOB.name), "epochs": a.epochs, "steps_per_epoch": a.steps, "variants": results,
            "ray_epoch_overhead": one["epoch_s"] / base["epoch_s"] - 1,
            "ray_startup_s": one["wall_s"] - base["wall_s"], "startup_fresh_command": starts,
            "scaling_1_to_2_workers": results[f"oat run, 2 workers × {cpus // 2} CPU"]["images_per_s"]
            / one["images_per_s"]}
    write_result("ray_overhead", body, a.out)
    print(f"\n{'variant':<28} {'epoch s':>8} {'img/s':>7} {'vs train':>9} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:<28} {r['epoch_s']:>8.2f} {r['images_per_s']:>7.0f} {r['epoch_vs_oat_train']:>8.2f}× "
              f"{r['wall_s']:>7.1f}")
    print(f"Ray's overhead per epoch (1 worker): {100 * body['ray_epoch_overhead']:+.1f}%; "
          f"start-up and shutdown: {body['ray_startup_s']:+.1f} s over oat train's wall time")
    for name, st in starts.items():
        print(f"{name}, a fresh command, one step: first line after {st['to_first_line_s']:.1f} s, "
              f"done after {st['total_s']:.1f} s")
    for name, r in list(results.items())[1:]:
        print(f"CPU seconds by process, {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_s_by_process"].items()))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
