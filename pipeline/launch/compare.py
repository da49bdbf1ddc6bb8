"""``oat compare OAT_RUN SWEEP``: one OAT/OATS model against the sweep of dedicated PGDAT models.

Per λ (and per width for OATS): SA and RA of the one model, of the dedicated model, and the difference; the
trade-off plot with both curves; and the training cost in worker-seconds (the epochs' seconds × workers,
without evaluation or start-up) of the one run against the dedicated models it replaces. An OATS width is
compared with the sweep's models at that width (``sweep.widths``) where there are some, else with full width.
Written as ``compare.json``, ``compare.txt`` and ``compare.png``; with ``--mlflow`` also logged as a comparison run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.files import atomic_write_text
from pipeline.launch.sweep import cost_of
from pipeline.science.curves import (
    Point,
    attack_label,
    by_attack,
    comparison_table,
    headline_attack,
    plot_tradeoff,
    read_points,
)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {path.parent} {what}?")
    return json.loads(path.read_text())


def compare(oat_dir: str | Path, sweep_dir: str | Path, *, out: str | Path | None = None,
            mlflow_uri: str | None = None, experiment: str = "oat", quiet: bool = False) -> dict[str, Any]:
    """The OAT/OATS run folder against the sweep's dedicated models: ``compare.json``, ``.txt`` and ``.png``."""
    oat_dir, sweep_dir = Path(oat_dir), Path(sweep_dir)
    if not (oat_dir / "eval.json").is_file():
        raise FileNotFoundError(f"{oat_dir / 'eval.json'} does not exist: is {oat_dir} a finished OAT/OATS run folder?")
    all_pts = read_points(oat_dir / "eval.json")
    history = _read_json(oat_dir / "history.json", "a finished OAT/OATS run folder")
    workers = len(json.loads((oat_dir / "workers.json").read_text())) if (oat_dir / "workers.json").is_file() else 1
    sweep = _read_json(sweep_dir / "sweep.json", "a sweep folder (oat sweep --out)")
    trials = {(float(t["lambda"]), float(t.get("width", 1.0))): t for t in sweep["trials"]}
    # AutoAttack numbers where both sides have them, else PGD
    attack = headline_attack(all_pts, *([Point.from_dict(d) for d in t["points"]] for t in trials.values()))
    pts = by_attack(all_pts, attack)
    # OATS with eval.strong_widths: the widths the strong attack skipped are compared under PGD, and say so
    strong_widths = {p.width for p in pts}
    pts += [p for p in by_attack(all_pts, "pgd") if p.width not in strong_widths]
    method = pts[0].method.upper() if pts else "OAT"
    blocks, rows, used, dedicated_series = _match(pts, trials, method)
    oat_cost = cost_of(history, workers)
    sweep_cost = float(sum(trials[k]["train_worker_s"] for k in used))  # the models this comparison replaces
    cost = {"oat_worker_s": oat_cost, "sweep_worker_s": sweep_cost, "dedicated_models": len(used),
            "ratio": oat_cost / sweep_cost if sweep_cost else None}
    ratio = f" = {cost['ratio']:.2f}× the sweep" if cost["ratio"] else ""
    a = pts[0]
    text = (f"{method} ({oat_dir}) vs {len(used)} dedicated PGDAT models ({sweep['sweep']}); test split, "
            f"{a.n} images; SA = clean, RA = {attack_label(a)} {a.norm} ε={a.eps:g}, in %; Δ = {method} − PGDAT\n\n"
            + "\n\n".join(blocks)
            + f"\n\ntraining cost: {method} {oat_cost:,.0f} worker-s ({workers} worker(s)) vs sweep "
              f"{sweep_cost:,.0f} worker-s ({len(used)} models){ratio}")
    dest = Path(out) if out is not None else sweep_dir
    dest.mkdir(parents=True, exist_ok=True)
    png = _plot(pts, dedicated_series, method, dest)
    result = {"oat_run": str(oat_dir), "sweep": sweep["sweep"], "method": method, "attack": attack,
              "attack_label": attack_label(a), "rows": rows, "cost": cost,
              "oat_points": [p.to_dict() for p in pts], "dedicated": [p.to_dict() for p in dedicated_series],
              "table": text}
    atomic_write_text(json.dumps(result, indent=1) + "\n", dest / "compare.json")
    atomic_write_text(text + "\n", dest / "compare.txt")
    if not quiet:
        print(text)
        print(f"\nplot: {png}; table: {dest / 'compare.txt'}")
    if mlflow_uri is not None:
        result["mlflow_run_id"] = log_comparison(result, dest, mlflow_uri or None, experiment)
    return result


def _match(pts: list[Point], trials: dict[tuple[float, float], dict[str, Any]], method: str
           ) -> tuple[list[str], list[dict[str, Any]], set[tuple[float, float]], list[Point]]:
    """Per width, each point against its dedicated model under the same attack: the tables, the rows, the trials
    used and the dedicated curve."""
    def ded(t: dict[str, Any], attack: str) -> Point:
        return next(p for p in map(Point.from_dict, t["points"]) if p.attack == attack)

    widths = sorted({p.width for p in pts}, reverse=True)
    blocks, rows, used = [], [], set()
    dedicated_series: list[Point] = []
    for w in widths:
        attack = next(p.attack for p in pts if p.width == w)
        # a dedicated model at this width where the sweep trained one (sweep.widths), else the full-width one
        dw = w if any(k[1] == w for k in trials) else 1.0
        dedicated = {lam: ded(t, attack) for (lam, tw), t in trials.items() if tw == dw}
        at_w = [p for p in pts if p.width == w and p.lam in dedicated]
        notes = [] if dw == w else ["no dedicated models at this width in the sweep: compared with full width"]
        if at_w and at_w[0].attack != pts[0].attack:
            notes.append(f"RA: {attack_label(at_w[0])}")
        note = f" ({'; '.join(notes)})" if notes else ""
        head = f"width {w:g}{note}\n" if len(widths) > 1 else ""
        blocks.append(head + comparison_table(at_w, dedicated, method[:4]))
        for p in at_w:
            d = dedicated[p.lam]
            used.add((p.lam, dw))
            rows.append({"lambda": p.lam, "width": w, "dedicated_width": dw, "attack": attack, "clean_acc": p.clean_acc,
                         "robust_acc": p.robust_acc, "dedicated_clean_acc": d.clean_acc,
                         "dedicated_robust_acc": d.robust_acc, "delta_clean": p.clean_acc - d.clean_acc,
                         "delta_robust": p.robust_acc - d.robust_acc})
        if dw == w:
            dedicated_series += dedicated.values()
    if not dedicated_series:  # OATS widths compared with full-width models only
        dedicated_series = [ded(t, pts[0].attack) for k, t in trials.items() if k[1] == 1.0]
    return blocks, rows, used, dedicated_series


def _plot(pts: list[Point], dedicated_series: list[Point], method: str, dest: Path) -> Path:
    series: dict[str, Sequence[Point]] = {}
    for w in sorted({p.width for p in pts}, reverse=True):
        series[f"{method} (one model)" + ("" if w == 1.0 else f", width {w:g}")] = [p for p in pts if p.width == w]
    series["PGDAT (one model per λ" + ("" if {p.width for p in dedicated_series} == {1.0} else " and width")
           + ")"] = dedicated_series
    return plot_tradeoff(series, dest / "compare.png", title=f"{method} vs dedicated PGDAT (test split)")


def log_comparison(result: dict[str, Any], folder: Path, uri: str | None, experiment: str) -> str:
    """The comparison as an MLflow run: metrics per λ (and width), the cost, the plot and the table."""
    from pipeline.platform.tracking import log_result
    from pipeline.training.metrics import metric_key

    metrics = {metric_key(k, r["lambda"], r["width"]): float(r[k]) for r in result["rows"]
               for k in ("delta_clean", "delta_robust", "clean_acc", "robust_acc", "dedicated_clean_acc",
                         "dedicated_robust_acc")}
    metrics.update({f"cost/{k}": float(v) for k, v in result["cost"].items()
                    if k in ("oat_worker_s", "sweep_worker_s", "ratio") and v is not None})
    name = f"compare {Path(result['oat_run']).name} vs {result['sweep']}"
    rid = log_result(uri, experiment, what="the comparison", run_name=name,
                     tags={"kind": "comparison", "method": result["method"]},
                     params={k: result[k] for k in ("oat_run", "sweep", "method")}, metrics=metrics,
                     artifacts=[folder / f for f in ("compare.png", "compare.json", "compare.txt")])
    print(f"[tracking] comparison logged as MLflow run '{name}' in experiment '{experiment}'")
    return rid
