"""``oat compare OAT_RUN SWEEP``: one OAT/OATS model against the sweep of dedicated PGDAT models.

Per λ (and per width for OATS): SA and RA of the one model, of the dedicated model, and the difference; the
trade-off plot with both curves; and the training cost in worker-seconds (the epochs' seconds × workers,
without evaluation or start-up) of the one run against the dedicated models it replaces. An OATS width is
compared with the sweep's models at that width (``sweep.widths``) where there are some, else with full width.
Written as ``compare.json``, ``compare.txt`` and ``compare.png``; with ``--mlflow`` also logged as a comparison run.
"""

from __future__ import annotations

import hashlib
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


def _row_labels(result: dict[str, Any]) -> dict[tuple[float, float], str]:
    """Per compared (λ, width), the label of the attack its row is compared under."""
    pts = {(p.lam, p.width, p.attack): p for p in map(Point.from_dict, result["oat_points"])}
    return {(r["lambda"], r["width"]): attack_label(pts[(r["lambda"], r["width"], r["attack"])])
            if (r["lambda"], r["width"], r["attack"]) in pts else str(r["attack"]) for r in result["rows"]}


def comparison_note(result: dict[str, Any], run_id: str) -> str:
    """The comparison in words for the compare run's description: the table (λ, SA and the quoted attack's
    accuracy per method, Δ), the compute ratio, and the plot (shown inline by the MLflow UI, and linked)."""
    from pipeline.platform.tracking import md_table

    method, label = result["method"], result["attack_label"]
    widths = sorted({r["width"] for r in result["rows"]}, reverse=True)
    wcol = ["width"] if widths != [1.0] else []
    labels = _row_labels(result)
    mixed = len(set(labels.values())) > 1  # OATS with eval.strong_widths: other widths under PGD, said per row
    ra = "RA" if mixed else label
    cols = ["λ", *wcol, f"SA {method}", "SA PGDAT", "Δ SA", f"{ra} {method}", f"{ra} PGDAT", f"Δ {ra}",
            *(["attack"] if mixed else [])]
    rows = []
    for r in sorted(result["rows"], key=lambda r: (-r["width"], r["lambda"])):
        at = [f"{r['width']:g}" + ("" if r["dedicated_width"] == r["width"] else " (vs 1)")] if wcol else []
        rows.append([f"{r['lambda']:g}", *at] + [f"{100 * r[k]:.1f}" for k in ("clean_acc", "dedicated_clean_acc")]
                    + [f"{100 * r['delta_clean']:+.1f}"]
                    + [f"{100 * r[k]:.1f}" for k in ("robust_acc", "dedicated_robust_acc")]
                    + [f"{100 * r['delta_robust']:+.1f}"] + ([labels[(r["lambda"], r["width"])]] if mixed else []))
    under = "the attack of each row" if mixed else label
    lines = [f"**{method} against the dedicated PGDAT models** (`{result['sweep']}`), test split, accuracy in %; "
             f"robust accuracy (RA) under {under}, Δ = {method} − PGDAT.", "", md_table(cols, rows)]
    cost = result["cost"]
    if cost.get("ratio"):
        lines += ["", f"**Compute**: one {method} run costs {cost['ratio']:.2f}× the {cost['dedicated_models']} "
                      f"dedicated models ({cost['oat_worker_s']:,.0f} against {cost['sweep_worker_s']:,.0f} "
                      "training worker-seconds)."]
    url = f"get-artifact?path=compare.png&run_uuid={run_id}"
    lines += ["", f"![clean, robust and trade-off panels]({url})", "",
              f"The plot: [compare.png]({url}) (artifacts); the table as text: `compare.txt`. The curves "
              "`vs_dedicated/delta_clean_acc` and `vs_dedicated/delta_robust_acc/<attack>` are the Δ over λ "
              "(step = 100·λ)."]
    return "\n".join(lines)


def log_comparison(result: dict[str, Any], folder: Path, uri: str | None, experiment: str) -> str:
    """The comparison as an MLflow run: the differences as curves over λ (``vs_dedicated/delta_clean_acc``,
    ``vs_dedicated/delta_robust_acc/<attack>``, ``/w_0.5`` per OATS width, step = round(100·λ)), the cost, the
    plot, the table, and the table in its description."""
    from pipeline.platform.tracking import log_result
    from pipeline.training.metrics import attack_key, curve_step

    pts = {(p["lambda"], p["width"], p["attack"]): p for p in result["oat_points"]}
    curves: dict[int, dict[str, float]] = {}
    for r in result["rows"]:
        suffix = "" if r["width"] == 1.0 else f"/w_{r['width']:g}"
        attack = attack_key(pts.get((r["lambda"], r["width"], r["attack"]), {"attack": r["attack"]}))
        curves.setdefault(curve_step(r["lambda"]), {}).update({
            f"vs_dedicated/delta_clean_acc{suffix}": float(r["delta_clean"]),
            f"vs_dedicated/delta_robust_acc/{attack}{suffix}": float(r["delta_robust"])})
    # one chart section ("vs_dedicated"), after the "test" curves (the UI orders sections by name)
    metrics = {f"vs_dedicated/{'cost_' if k == 'ratio' else ''}{k}": float(v) for k, v in result["cost"].items()
               if k in ("oat_worker_s", "sweep_worker_s", "ratio") and v is not None}
    name = f"compare {Path(result['oat_run']).name} vs {result['sweep']}"
    rid = log_result(uri, experiment, what="the comparison", run_name=name,
                     tags={"kind": "comparison", "method": result["method"]},
                     params={**{k: result[k] for k in ("oat_run", "sweep", "method")},
                             "attack": result["attack_label"]},
                     metrics=metrics, curves=curves, note=lambda run_id: comparison_note(result, run_id),
                     replaces=hashlib.sha256(f"{Path(result['oat_run']).resolve()}\0{result['sweep']}".encode())
                     .hexdigest()[:24],  # comparing the same runs again replaces the comparison run
                     artifacts=[folder / f for f in ("compare.png", "compare.json", "compare.txt")])
    print(f"[tracking] comparison logged as MLflow run '{name}' in experiment '{experiment}'")
    return rid
