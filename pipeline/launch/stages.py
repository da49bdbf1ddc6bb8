"""``oat run`` of a pipeline job: OAT, OATS, the dedicated PGDAT sweep and the comparisons, in one command.

The job file describes the OAT run (``method.name: oat``); ``pipeline.stages`` picks what runs:

* ``oat``: the job itself as a Ray Train run (``<name>_oat``);
* ``oats``: the same job as OATS over ``pipeline.oats_widths`` (``<name>_oats``);
* ``sweep``: one dedicated PGDAT model per λ (``oat sweep``; ``<name>_sweep``);
* ``compare``: OAT (and OATS) against the sweep (``oat compare``), logged to MLflow with tracking on.

Every stage is resumable: rerunning (or resubmitting) the pipeline continues each run from its last checkpoint,
and finished runs return at once. Results go to ``runs/<name>/`` (``oat/``, ``oats/``, ``sweep/``,
``compare_oat/``, ``compare_oats/``) and ``summary.txt``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, derive_job
from pipeline.files import atomic_write_text
from pipeline.training.progress import fmt_duration


def variant(job: JobConfig, method: str, name: str, widths: list[float] | None = None) -> JobConfig:
    """The pipeline's job as one stage's job (its ``None`` defaults re-derived for the new method; OAT and OATS
    train the same λ, so the job's ``eval.lambdas`` hold for both)."""
    return derive_job(job, {"name": name, "method.name": method, "method.zero_fraction": None, "model.widths": widths,
                            "eval.widths": None, "tracking.model_name": None,
                            "tracking.register": None, "ray.name": None, "sweep.name": None, "pipeline.stages": []})


def run_pipeline(job: JobConfig, *, storage_path: str | None = None, address: str | None = None,
                 out: str | Path | None = None) -> dict[str, Any]:
    from pipeline.launch.compare import compare
    from pipeline.launch.ray_run import join_first, run_job
    from pipeline.launch.sweep import run_sweep
    from pipeline.platform.tracking import resolve_uri

    join_first(address)
    t0 = time.perf_counter()
    stages = job.pipeline.stages
    if job.tracking.enabled:  # one store for every stage, whatever each process's working dir
        job.tracking.uri = resolve_uri(job.tracking.uri)
    root = Path(out) if out is not None else Path("runs") / job.name
    root.mkdir(parents=True, exist_ok=True)
    print(f"pipeline {job.name}: {' → '.join(stages)}; results in {root}/", flush=True)
    done: dict[str, Any] = {}
    times: dict[str, float] = {}
    for stage in stages:
        ts = time.perf_counter()
        print(f"\n══ {stage} ══", flush=True)
        if stage in ("oat", "oats"):
            sj = variant(job, stage, f"{job.name}_{stage}", job.pipeline.oats_widths if stage == "oats" else None)
            done[stage] = run_job(sj, storage_path=storage_path, address=address, out=root / stage,
                                  label=stage.upper())
        elif stage == "sweep":
            sj = variant(job, "oat", job.name)
            done[stage] = run_sweep(sj, name=f"{job.name}_sweep", storage_path=storage_path, address=address,
                                    out=root / "sweep")
        else:
            uri = job.tracking.uri if job.tracking.enabled else None
            for m in ("oat", "oats"):
                if m in done:
                    done[f"compare_{m}"] = compare(root / m, root / "sweep", out=root / f"compare_{m}",
                                                   mlflow_uri=(uri or "") if job.tracking.enabled else None,
                                                   experiment=job.tracking.experiment, quiet=True)
        times[stage] = time.perf_counter() - ts
    seconds = time.perf_counter() - t0
    parts = [done[k]["table"] for k in ("compare_oat", "compare_oats") if k in done]
    lines = [f"pipeline {job.name} finished in {fmt_duration(seconds)} ("
             + ", ".join(f"{k} {fmt_duration(v)}" for k, v in times.items()) + ")"]
    lines += ["", *("\n\n".join(parts).splitlines())] if parts else []
    for k in ("compare_oat", "compare_oats"):
        if k in done:
            lines.append(f"\nplot: {root / k / 'compare.png'}")
    if job.tracking.enabled:
        uri = job.tracking.uri or ""
        ui = (f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else uri)
        lines.append(f"MLflow: experiment '{job.tracking.experiment}' at {uri}; open the UI with: {ui}")
    text = "\n".join(lines)
    atomic_write_text(text + "\n", root / "summary.txt")
    print("\n" + text, flush=True)
    return {"stages": done, "seconds": seconds, "times": times, "out": root, "summary": text}
