"""Ray Train's overhead: `oat run` with 1 worker against `oat train` in one process, same job; and the
throughput of 1 and 2 workers on this machine.

    .venv/bin/python -m benchmarks.ray_overhead [--epochs 4] [--steps 18]

The job is jobs/digits_oat.yaml (OAT, small CNN, PGD-7, global batch 64), ``--epochs`` epochs of
``--steps`` steps, validation only at the end. Epoch time is the median over epochs after the first (the
first holds FFCV's JIT compile in every variant). Start-up (Ray start, worker group, imports, loaders) is
what the wall-clock time adds on top of the epochs and the final test. A local Ray is started for each
Ray variant, as `oat run` does without RAY_ADDRESS.
Writes ``benchmarks/results/ray_overhead.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, write_result

JOB = Path(__file__).resolve().parent.parent / "jobs" / "digits_oat.yaml"


def epochs_of(history: list[dict]) -> dict:
    later = [h["seconds"] for h in history[1:]]
    return {"epoch_s": statistics.median(later), "first_epoch_s": history[0]["seconds"],
            "images_per_s": statistics.median(h["images_per_s"] for h in history[1:]),
            "data_wait_share": statistics.median(h["data_wait_share"] for h in history[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=4)
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
        res = fit(job, Path(tmp) / "train", progress=False)
        results["oat train (1 process)"] = {**epochs_of(res.history), "wall_s": time.perf_counter() - t0,
                                            "threads": cpus}
        import ray

        for workers in (1, 2):
            per = cpus // workers
            job = load_job(JOB, [*sets, f"ray.num_workers={workers}", f"ray.cpus_per_worker={per}"])
            t0 = time.perf_counter()
            r = run_job(job, name=f"bench{workers}", storage_path=str(Path(tmp) / "store"),
                        out=Path(tmp) / f"run{workers}")
            wall = time.perf_counter() - t0
            ray.shutdown()
            hist = json.loads((Path(tmp) / f"run{workers}" / "history.json").read_text())
            results[f"oat run, {workers} worker{'s' if workers > 1 else ''} × {per} CPU"] = {
                **epochs_of(hist), "wall_s": wall, "run_s": r.seconds}
    base = results["oat train (1 process)"]
    one = results[f"oat run, 1 worker × {cpus} CPU"]
    for r in results.values():
        r["epoch_vs_oat_train"] = r["epoch_s"] / base["epoch_s"]
    body = {"cpus": cpus, "job": str(JOB.name), "epochs": a.epochs, "steps_per_epoch": a.steps, "variants": results,
            "ray_epoch_overhead": one["epoch_s"] / base["epoch_s"] - 1,
            "ray_startup_s": one["wall_s"] - base["wall_s"],
            "scaling_1_to_2_workers": results[f"oat run, 2 workers × {cpus // 2} CPU"]["images_per_s"]
            / one["images_per_s"]}
    write_result("ray_overhead", body, a.out)
    print(f"\n{'variant':<28} {'epoch s':>8} {'img/s':>7} {'vs train':>9} {'wall s':>7}")
    for name, r in results.items():
        print(f"{name:<28} {r['epoch_s']:>8.2f} {r['images_per_s']:>7.0f} {r['epoch_vs_oat_train']:>8.2f}× "
              f"{r['wall_s']:>7.1f}")
    print(f"Ray's overhead per epoch (1 worker): {100 * body['ray_epoch_overhead']:+.1f}%; "
          f"start-up and shutdown: {body['ray_startup_s']:+.1f} s over oat train's wall time")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
