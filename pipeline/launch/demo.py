"""The embedded demo: OAT against a dedicated PGDAT model per λ, on scikit-learn's digits.

Trains one OAT model (``jobs/digits_oat.yaml``) and one PGDAT model per λ (``jobs/digits_pgdat.yaml``
with ``method.Lambda`` set), evaluates all of them on the test split with PGD-20, and prints the
side-by-side table; ``tradeoff.png`` plots both curves. Every run is a normal training folder under
``OUT`` (rerunning resumes / reuses finished runs).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import load_job
from pipeline.files import atomic_write_text
from pipeline.launch.local import train_here
from pipeline.science.curves import (
    Point,
    attack_label,
    by_attack,
    comparison_table,
    headline_attack,
    plot_tradeoff,
    read_points,
)
from pipeline.training.progress import fmt_duration

JOBS = Path(__file__).resolve().parents[2] / "jobs"


def _job_file(name: str) -> Path:
    path = JOBS / name
    if not path.is_file():
        raise FileNotFoundError(f"the demo needs {path} (run it from a checkout of the project)")
    return path


def _train_or_reuse(job_path: Path, overrides: Sequence[str], out: Path, label: str,
                    progress: bool) -> list[Point]:
    job = load_job(job_path, overrides)
    done = out / "eval.json"
    if done.is_file() and (out / "config.yaml").read_text() == job.to_yaml():
        print(f"[{label}] reusing finished run {out}", flush=True)
        return read_points(done)
    return train_here(job, out, progress=progress, label=label).test_points


def run_demo(out: str | Path = "runs/demo", *, lambdas: Sequence[float] | None = None,
             overrides: Sequence[str] = (), progress: bool = True) -> dict[str, Any]:
    t0 = time.perf_counter()
    out = Path(out)
    oat_file, pgdat_file = _job_file("digits_oat.yaml"), _job_file("digits_pgdat.yaml")
    oat_job = load_job(oat_file, overrides)
    lams = [float(v) for v in (lambdas if lambdas is not None else oat_job.method.lambda_choices)]
    lam_list = "[" + ", ".join(f"{v:g}" for v in sorted(set(lams) | {0.0})) + "]"
    common = [*overrides, f"method.lambda_choices={lam_list}"] if lambdas is not None else list(overrides)
    print(f"OAT vs dedicated PGDAT on digits: 1 OAT model + {len(lams)} PGDAT models, λ ∈ {lams}", flush=True)
    oat_pts = _train_or_reuse(oat_file, common, out / "oat", "OAT", progress)
    runs = {lam: _train_or_reuse(pgdat_file, [*common, f"method.Lambda={lam}"], out / f"pgdat_lambda{lam:g}",
                                 f"PGDAT λ={lam:g}", progress) for lam in lams}
    attack = headline_attack(oat_pts, *runs.values())  # the strongest attack both sides ran
    dedicated: dict[float, Point] = {lam: by_attack(pts, attack)[0] for lam, pts in runs.items()}
    oat_sel = [p for p in by_attack(oat_pts, attack) if p.lam in dedicated]
    table = comparison_table(oat_sel, dedicated)
    png = plot_tradeoff({"OAT (one model)": oat_sel, "PGDAT (one model per λ)": list(dedicated.values())},
                        out / "tradeoff.png", title="digits, test split: OAT vs dedicated PGDAT")
    seconds = time.perf_counter() - t0
    summary = {"oat": [p.to_dict() for p in oat_sel], "pgdat": [p.to_dict() for p in dedicated.values()],
               "seconds": seconds, "table": table}
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "demo.json")
    atomic_write_text(table + "\n", out / "demo.txt")
    a = oat_sel[0]
    print(f"\nTest split ({a.n} images), SA = clean accuracy, RA = {attack_label(a)} {a.norm} ε={a.eps:g} "
          f"accuracy, in %; Δ = OAT − PGDAT")
    print(table)
    print(f"\nplot: {png}\nruns: {out}/  ({fmt_duration(seconds)})", flush=True)
    return summary
