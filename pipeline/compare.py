"""``oat compare OAT_RUN SWEEP``: one OAT/OATS model against the sweep of dedicated PGDAT models.

Per λ (and per width for OATS): SA and RA of the one model, of the dedicated model, and the difference; the
trade-off plot with both curves; and the training cost in worker-seconds (the epochs' seconds × workers,
without evaluation or start-up) of the one run against the whole sweep. Written as ``compare.json``,
``compare.txt`` and ``compare.png``; with ``--mlflow`` also logged as a comparison run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text
from .demo import comparison_table
from .evaluate import Point, plot_tradeoff, read_points
from .sweep import cost_of


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} {what}?")
    return json.loads(path.read_text())


def compare(oat_dir: str | Path, sweep_dir: str | Path, *, out: str | Path | None = None,
            mlflow_uri: str | None = None, experiment: str = "oat", quiet: bool = False) -> dict[str, Any]:
    oat_dir, sweep_dir = Path(oat_dir), Path(sweep_dir)
    if not (oat_dir / "eval.json").is_file():
        raise FileNotFoundError(f"{oat_dir / 'eval.json'} does not exist: is {oat_dir} a finished OAT/OATS run folder?")
    pts = read_points(oat_dir / "eval.json")
    history = _read_json(oat_dir / "history.json", "a finished OAT/OATS run folder")
    workers = len(json.loads((oat_dir / "workers.json").read_text())) if (oat_dir / "workers.json").is_file() else 1
    sweep = _read_json(sweep_dir / "sweep.json", "a sweep folder (oat sweep --out)")
    dedicated = {float(t["lambda"]): Point.from_dict(t["points"][0]) for t in sweep["trials"]}
    method = pts[0].method.upper() if pts else "OAT"
    widths = sorted({p.width for p in pts}, reverse=True)
    blocks, rows = [], []
    for w in widths:
        at_w = [p for p in pts if p.width == w and p.lam in dedicated]
        title = f"width {w:g}" + ("" if w == 1.0 else " (the dedicated models are full width)") + "\n"
        blocks.append((title if len(widths) > 1 else "") + comparison_table(at_w, dedicated, method[:4]))
        for p in at_w:
            d = dedicated[p.lam]
            rows.append({"lambda": p.lam, "width": w, "clean_acc": p.clean_acc, "robust_acc": p.robust_acc,
                         "dedicated_clean_acc": d.clean_acc, "dedicated_robust_acc": d.robust_acc,
                         "delta_clean": p.clean_acc - d.clean_acc, "delta_robust": p.robust_acc - d.robust_acc})
    oat_cost = cost_of(history, workers)
    sweep_cost = float(sweep.get("train_worker_s", 0.0))
    cost = {"oat_worker_s": oat_cost, "sweep_worker_s": sweep_cost, "dedicated_models": len(dedicated),
            "ratio": oat_cost / sweep_cost if sweep_cost else None}
    ratio = f" = {cost['ratio']:.2f}× the sweep" if cost["ratio"] else ""
    a = pts[0]
    text = (f"{method} ({oat_dir}) vs {len(dedicated)} dedicated PGDAT models ({sweep['sweep']}); test split, "
            f"{a.n} images; SA = clean, RA = PGD-{a.steps} {a.norm} ε={a.eps:g}, in %; Δ = {method} − PGDAT\n\n"
            + "\n\n".join(blocks)
            + f"\n\ntraining cost: {method} {oat_cost:,.0f} worker-s ({workers} worker(s)) vs sweep "
              f"{sweep_cost:,.0f} worker-s ({len(dedicated)} models){ratio}")
    dest = Path(out) if out is not None else sweep_dir
    dest.mkdir(parents=True, exist_ok=True)
    series: dict[str, Sequence[Point]] = {}
    for w in widths:
        series[f"{method} (one model)" + ("" if w == 1.0 else f", width {w:g}")] = [p for p in pts if p.width == w]
    series["PGDAT (one model per λ)"] = list(dedicated.values())
    png = plot_tradeoff(series, dest / "compare.png", title=f"{method} vs dedicated PGDAT (test split)")
    result = {"oat_run": str(oat_dir), "sweep": sweep["sweep"], "method": method, "rows": rows, "cost": cost,
              "oat_points": [p.to_dict() for p in pts], "dedicated": [p.to_dict() for p in dedicated.values()],
              "table": text}
    atomic_write_text(json.dumps(result, indent=1) + "\n", dest / "compare.json")
    atomic_write_text(text + "\n", dest / "compare.txt")
    if not quiet:
        print(text)
        print(f"\nplot: {png}; table: {dest / 'compare.txt'}")
    if mlflow_uri is not None:
        result["mlflow_run_id"] = log_comparison(result, dest, mlflow_uri or None, experiment)
    return result


def log_comparison(result: dict[str, Any], folder: Path, uri: str | None, experiment: str) -> str:
    """The comparison as an MLflow run: metrics per λ (and width), the cost, the plot and the table."""
    from mlflow.entities import Metric, Param

    from .tracking import TrackingError, _client, _reason, metric_key, redact, resolve_uri

    uri = resolve_uri(uri)
    c = _client(uri)
    try:
        exp = c.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp is not None else c.create_experiment(experiment)
        name = f"compare {Path(result['oat_run']).name} vs {result['sweep']}"
        run = c.create_run(exp_id, run_name=name, tags={"kind": "comparison", "method": result["method"]})
        rid = run.info.run_id
        ms = []
        for r in result["rows"]:
            for k in ("delta_clean", "delta_robust", "clean_acc", "robust_acc", "dedicated_clean_acc",
                      "dedicated_robust_acc"):
                ms.append(Metric(metric_key(k, r["lambda"], r["width"]), float(r[k]), 0, 0))
        for k in ("oat_worker_s", "sweep_worker_s", "ratio"):
            if result["cost"][k] is not None:
                ms.append(Metric(f"cost/{k}", float(result["cost"][k]), 0, 0))
        c.log_batch(rid, metrics=ms, params=[Param("oat_run", result["oat_run"]), Param("sweep", result["sweep"]),
                                             Param("method", result["method"])])
        for f in ("compare.png", "compare.json", "compare.txt"):
            c.log_artifact(rid, str(folder / f))
        c.set_terminated(rid, "FINISHED")
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow {redact(uri)}: could not log the comparison: {_reason(exc)}") from None
    print(f"[tracking] comparison logged as MLflow run '{name}' in experiment '{experiment}'")
    return str(rid)
