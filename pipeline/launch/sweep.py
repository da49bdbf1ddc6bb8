"""``oat sweep JOB``: the dedicated PGDAT baselines, one Ray Tune trial per fixed λ (and per width multiplier).

Each trial is the job's own Ray Train run (the same ``TorchTrainer`` as ``oat run``) with ``method.name:
pgdat``, ``method.Lambda`` and ``model.widths: [w]`` set (``sweep.widths``: [1.0] by default, [0.5, 0.75,
1.0] for an OATS comparison; a plain model with that fraction of the channels in every layer), built and
fitted inside a Tune function (the Ray Train V2 pattern:
``tune.with_resources(fn, {"cpu": 0.1})``, ``TuneReportCallback`` relaying each epoch's metrics to Tune).
The trial's workers ask for the job's ``ray`` resources; ``sweep.max_concurrent_trials`` trials run at once
and a failed trial is retried ``sweep.max_failures`` times.

Resubmitting the sweep (same name and storage) resumes it: Tune restores its experiment, finished trials are
not run again, and an interrupted trial's ``TorchTrainer`` restarts from its last checkpoint. With tracking
on, the sweep is one MLflow run and every trial's training run is its child.

Output: ``runs/<sweep>/sweep.json`` (per λ and width: the test points, the training cost, the checkpoint), a table
and ``tradeoff.png``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, derive_job, job_from_dict
from pipeline.files import atomic_write_text
from pipeline.science.curves import Point, by_attack, headline_attack, plot_tradeoff, points_table


def trial_suffix(lam: float, width: float = 1.0) -> str:
    return f"lam{lam:g}" + ("" if width == 1.0 else f"_w{width:g}")


def baseline_job(job: JobConfig, lam: float, width: float = 1.0) -> JobConfig:
    """The dedicated PGDAT model at ``lam`` and width multiplier ``width`` for ``job`` (the rest as the job says)."""
    changes: dict[str, Any] = {
        "name": f"{job.name}_pgdat_{trial_suffix(lam, width)}", "method.name": "pgdat", "method.Lambda": float(lam),
        "method.zero_fraction": None, "model.widths": [float(width)], "model.use2BN": False, "eval.lambdas": None,
        "eval.widths": None, "eval.strong_widths": None, "tracking.register": None, "tracking.model_name": None,
        "ray.name": None}
    if job.sweep.num_workers is not None:
        changes["ray.num_workers"] = job.sweep.num_workers
    return derive_job(job, changes)


def sweep_lambdas(job: JobConfig) -> list[float]:
    lams = job.sweep.lambdas if job.sweep.lambdas is not None else job.method.lambda_choices
    return [float(v) for v in lams]


def _head(points: list[dict[str, Any]]) -> Point:
    """A dedicated model's test point under its strongest attack (AutoAttack where it ran, else PGD)."""
    pts = [Point.from_dict(d) for d in points]
    return by_attack(pts, headline_attack(pts))[0]


def cost_of(history: list[dict[str, Any]], workers: int) -> float:
    """Training worker-seconds: the epochs' seconds (without evaluation or start-up) × the workers."""
    return float(sum(h.get("seconds", 0.0) for h in history)) * workers


def _trial(config: dict[str, Any]) -> None:
    """One Tune trial: the PGDAT job at ``config["lam"]`` (and ``config["width"]``) as a Ray Train run, then its
    test points; what it prints also goes to the driver's console."""
    from pipeline.launch.console import console_to_driver

    with console_to_driver():
        _run_trial(config)


def _run_trial(config: dict[str, Any]) -> None:
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.launch.ray_run import begin_tracking, fit_trainer, storage_location

    width = float(config.get("width", 1.0))
    job = baseline_job(job_from_dict(config["job"]), config["lam"], width)
    run_name = f"{config['sweep']}_{trial_suffix(config['lam'], width)}"
    spath, fs = storage_location(config["storage"])
    tags = {"mlflow.parentRunId": config["parent_run"], "sweep": config["sweep"]} if config["parent_run"] else None
    info = begin_tracking(job, run_name, config["where"], source="oat sweep", tags=tags)
    t0 = time.perf_counter()
    label = f"PGDAT λ={config['lam']:g}" + ("" if width == 1.0 else f" w={width:g}")
    result = fit_trainer(job, run_name, spath, fs, info, label,
                         callbacks=[TuneReportCallback()])
    wall = time.perf_counter() - t0
    with result.checkpoint.as_directory() as d:
        points = json.loads((Path(d) / "eval.json").read_text())["points"]
        history = json.loads((Path(d) / "history.json").read_text())
    p = _head(points).to_dict()
    tune.report({"lambda": config["lam"], "width": width, "test_clean_acc": p["clean_acc"],
                 "test_robust_acc": p["robust_acc"],
                 "trial_done": 1, "points": json.dumps(points), "run_name": run_name, "wall_s": wall,
                 "train_worker_s": cost_of(history, job.ray.num_workers), "workers": job.ray.num_workers,
                 "checkpoint": result.checkpoint.path, "mlflow_run_id": info.run_id if info else ""})


TRIAL_CPU = 0.1  # Tune's trial function (it only drives its TorchTrainer); Ray refuses 0


def _check_fits(job: JobConfig) -> None:
    """A trial whose workers cannot fit on the cluster would wait for resources for ever: say so instead."""
    import ray

    base = baseline_job(job, 0.0)
    r = base.ray
    need_cpu = r.num_workers * r.cpus_per_worker + TRIAL_CPU
    have = ray.cluster_resources()
    if need_cpu > have.get("CPU", 0.0) + 1e-9:
        raise ValueError(f"a sweep trial needs {need_cpu:g} CPUs ({r.num_workers} worker(s) × ray.cpus_per_worker="
                         f"{r.cpus_per_worker:g} + {TRIAL_CPU:g} for Tune's trial function) but the cluster has "
                         f"{have.get('CPU', 0.0):g}: lower sweep.num_workers or ray.cpus_per_worker")
    if r.use_gpu and r.num_workers * r.gpus_per_worker > have.get("GPU", 0.0) + 1e-9:
        raise ValueError(f"a sweep trial needs {r.num_workers * r.gpus_per_worker:g} GPUs but the cluster has "
                         f"{have.get('GPU', 0.0):g}: lower sweep.num_workers")


def _retry_log() -> Any:
    """A Tune callback (run in the driver) that says when a trial failed and is retried, and counts it."""
    from ray import tune

    class RetryLog(tune.Callback):
        def __init__(self) -> None:
            self.retries: dict[str, int] = {}

        def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            cfg = trial.config or {}
            key = trial_suffix(float(cfg.get("lam", 0.0)), float(cfg.get("width", 1.0)))
            self.retries[key] = self.retries.get(key, 0) + 1
            err = trial.error_file
            print(f"sweep: trial {key} failed ({trial.num_failures} time(s)); retried from its last checkpoint"
                  + (f" (details: {err})" if err else ""), flush=True)

    return RetryLog()


@dataclass
class SweepResult:
    name: str
    trials: list[dict[str, Any]]
    out: Path
    seconds: float


def run_sweep(job: JobConfig, *, name: str | None = None, storage_path: str | None = None,
              address: str | None = None, out: str | Path | None = None) -> SweepResult:
    """One Tune trial per (λ, width) of the dedicated PGDAT models, resumable; ``sweep.json`` and the curve."""
    from pipeline.data import s3 as storage
    from pipeline.launch.console import Console
    from pipeline.launch.ray_run import begin_tracking, join_first, ray_init, storage_location
    from pipeline.platform import tracking

    join_first(address)

    t0 = time.perf_counter()
    sweep_name = name or job.sweep.name or f"{job.name}_sweep"
    storage_path = storage_path or job.ray.storage_path
    if storage_path and not storage.is_s3(storage_path):  # trials run in Tune's own working dirs
        storage_path = str(Path(storage_path).expanduser().resolve())
    where = storage_path or "~/ray_results"
    out_dir = Path(out) if out is not None else Path("runs") / sweep_name
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = begin_tracking(job, sweep_name, f"sweep:{where}", source="oat sweep",  # its own key: not an oat run
                            tags={"kind": "sweep", "method": "pgdat", tracking.NOTE: sweep_note(job)})
    tracker = tracking.Tracker(parent, out_dir / "tracking") if parent else None
    ray_init(address)
    _check_fits(job)
    space = {"job": job.to_dict(), "sweep": sweep_name, "storage": storage_path, "where": where,
             "parent_run": parent.run_id if parent else None}
    tuner, retry_log = _tuner(job, sweep_name, space, *storage_location(storage_path))
    with Console():
        grid = tuner.fit()
    trials, errors = _collect(grid, retry_log)
    summary = {"sweep": sweep_name, "job": job.name, "storage": where, "lambdas": sweep_lambdas(job),
               "widths": sorted(job.sweep.widths, reverse=True), "trials": trials,
               "train_worker_s": sum(t["train_worker_s"] for t in trials), "errors": errors}
    _publish(summary, out_dir, tracker, job.tracking.flush_timeout_s, sweep_note(job))
    if errors:
        raise RuntimeError(f"sweep {sweep_name}: {len(errors)} trial(s) failed: " + "; ".join(errors))
    return SweepResult(sweep_name, trials, out_dir, time.perf_counter() - t0)


def _tuner(job: JobConfig, sweep_name: str, space: dict[str, Any], spath: str | None, fs: Any) -> tuple[Any, Any]:
    """A new Tuner over the (λ, width) grid, or the sweep's own restored from its storage (and its retry log)."""
    from ray import tune

    # Tune's default console engine prints its configuration box and a TensorBoard hint even at verbose=0; the
    # legacy one prints nothing at 0 (our lines say what runs; the retry log says what failed)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    lams, widths = sweep_lambdas(job), sorted(job.sweep.widths, reverse=True)
    trainable = tune.with_resources(_trial, {"cpu": TRIAL_CPU})  # the trial's workers hold the real resources
    tune_path = f"{spath or str(Path('~/ray_results').expanduser())}/{sweep_name}"
    at_widths = "" if widths == [1.0] else f" × widths {widths}"
    print(f"sweep {sweep_name}: {len(lams) * len(widths)} PGDAT trials (λ ∈ {lams}{at_widths}), "
          f"{job.sweep.max_concurrent_trials} at a time, "
          f"{job.sweep.num_workers or job.ray.num_workers} worker(s) each", flush=True)
    if tune.Tuner.can_restore(tune_path, storage_filesystem=fs):
        print(f"resuming sweep {sweep_name} from {space['where']}", flush=True)
        # a restored sweep keeps the callbacks it was started with
        return tune.Tuner.restore(tune_path, trainable, resume_errored=True, storage_filesystem=fs), None
    retry_log = _retry_log()
    grid = {"lam": tune.grid_search(lams), "width": tune.grid_search(widths), **space}
    tuner = tune.Tuner(trainable, param_space=grid,
                       tune_config=tune.TuneConfig(max_concurrent_trials=job.sweep.max_concurrent_trials),
                       run_config=tune.RunConfig(name=sweep_name, storage_path=spath, storage_filesystem=fs,
                                                 failure_config=tune.FailureConfig(max_failures=job.sweep.max_failures),
                                                 callbacks=[retry_log], verbose=0))
    return tuner, retry_log


def _collect(grid: Any, retry_log: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """The finished trials (by width, then λ) and one line per failed trial."""
    trials, errors = [], []
    for i in range(len(grid)):
        res = grid[i]
        m = res.metrics or {}
        if res.error is not None or not m.get("trial_done"):
            cfg = res.config or {}
            errors.append(f"λ={cfg.get('lam')} width={cfg.get('width', 1.0)}: {res.error}")
            continue
        key = trial_suffix(float(m["lambda"]), float(m.get("width", 1.0)))
        trials.append({"lambda": float(m["lambda"]), "width": float(m.get("width", 1.0)),
                       "retries": retry_log.retries.get(key, 0) if retry_log is not None else None,
                       "points": json.loads(m["points"]), "run_name": m["run_name"],
                       "wall_s": m["wall_s"], "train_worker_s": m["train_worker_s"], "workers": m["workers"],
                       "checkpoint": m["checkpoint"], "mlflow_run_id": m.get("mlflow_run_id", "")})
    trials.sort(key=lambda t: (-t["width"], t["lambda"]))
    return trials, errors


def sweep_note(job: JobConfig) -> str:
    """The sweep run's description: what its models are and where their numbers are."""
    from pipeline.platform.tracking import threat_words

    lams = ", ".join(f"{x:g}" for x in sweep_lambdas(job))
    widths = sorted(job.sweep.widths, reverse=True)
    at_w = "" if widths == [1.0] else f" and width ∈ {{{', '.join(f'{w:g}' for w in widths)}}}"
    return (f"**Dedicated PGDAT models** on {job.data.dataset}, one per λ ∈ {{{lams}}}{at_w} ({threat_words(job)}, "
            f"{job.train.epochs} epochs): the baseline that OAT and OATS are compared with (the `compare` runs). "
            "Each model is a child run (expand this row); this run's `test/clean_acc` and `test/robust_acc/<attack>` "
            "are their curve over λ (step = 100·λ).")


def _publish(summary: dict[str, Any], out_dir: Path, tracker: Any, flush_timeout_s: float, note: str = "") -> None:
    """``sweep.json``, the dedicated curve (plot and table), and the same on the sweep's MLflow run (its curve over
    λ, and the table in its description)."""
    atomic_write_text(json.dumps(summary, indent=1) + "\n", out_dir / "sweep.json")
    trials, widths = summary["trials"], summary["widths"]
    pts = [_head(t["points"]) for t in trials]
    if pts:
        label = "PGDAT (one model per λ" + ("" if widths == [1.0] else " and width") + ")"
        plot_tradeoff({label: pts}, out_dir / "tradeoff.png", title=f"{summary['sweep']} (test)")
        print(points_table(pts, f"dedicated PGDAT models, test split, {pts[0].n} images"))
    if tracker is None:
        return
    every = [p for t in trials for p in t["points"]]
    tracker.log_curve(every)  # the dedicated models' curve over λ
    if every:
        from pipeline.platform.tracking import NOTE, points_markdown, threat_model

        tracker.set_tags({NOTE: f"{note}\n\n**Test points** (accuracy in %; {threat_model(every)}):\n\n"
                                f"{points_markdown(every)}".strip()})
    tracker.log_metrics({"train_worker_s": summary["train_worker_s"]}, 0)
    for f in ("sweep.json", "tradeoff.png"):
        if (out_dir / f).is_file():
            tracker.log_artifact(out_dir / f)
    tracker.close("FAILED" if summary["errors"] else "FINISHED", timeout=flush_timeout_s)
