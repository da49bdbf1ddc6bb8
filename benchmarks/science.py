"""The matched study: OAT and OATS against the dedicated PGDAT models, per data set, under a strong attack.

    .venv/bin/python -m benchmarks.science [--quick] [--datasets mnist5k digits] [--seeds 0 1 2] [--jobs 2]
                                           [--lambdas 0 0.2 0.4 1] [--oats-widths 0.5 1] [--attack autoattack]
                                           [--ablations lambdas_0_1 epochs_x2 ...] [--no-oats] [--device cuda]
                                           [--work runs/science]

Per data set, the job pair ``jobs/<data set>_oat.yaml`` / ``jobs/<data set>_pgdat.yaml`` (their recipe: backbone,
attack, optimiser, epochs) trains one OAT model, one OATS model and one dedicated PGDAT model per λ of the OAT
job's λ list, with the same epochs, batch, loader and seed on every side, each in this process through the same
loop as ``oat train`` (no tracking). Every model is tested on the full test split with PGD-20 (the job's step
rule) and the strong attack (standard AutoAttack by default). Per λ (and OATS width): clean (SA), PGD-20 and
strong-attack accuracy, mean ± std over the seeds; the difference OAT − PGDAT and whether it meets the goal
(|Δ| ≤ 2 points, or ≤ 2·√((sd₁² + sd₂²)/n) over n seeds); flagged points (collapsed, masked); the compute of one
OAT run against the whole sweep; the literature anchors. Writes ``benchmarks/results/science.json`` and
``science.md``. Restartable: every run lives under ``--work`` and a finished run with the same settings is reused.

``--quick`` (the integration tier's smoke run, about a minute on 2 cores): digits only, one seed, 2 epochs,
λ ∈ {0, 1}, 100 test images, APGD-CE, no OATS, one ablation (a λ = 0 share of 50%); its results go to ``--out``
(default: a ``science_quick`` pair in ``--work``), never over the recorded study.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_result
from pipeline.config import load_job
from pipeline.launch.sweep import cost_of
from pipeline.science.curves import ATTACK_NAMES, read_flags, read_points
from pipeline.training.loop import fit

REPO = Path(__file__).resolve().parents[1]
ANCHORS = {  # literature figures (clean / AutoAttack, %) to read ours against; not comparable one to one
    "mnist5k": "Madry et al.'s PGD-trained MNIST model: 98.5 clean / 88.5 AutoAttack at ε = 0.3 (RobustBench; 60,000 "
               "training images, a 4-layer CNN of 3.3 M parameters, 100 epochs). Ours: 3,500 images, a CPU budget.",
    "digits": "no published anchor (8×8 images, 17 grey levels): read the dedicated λ = 1 model as the reference.",
}
GOAL_POINTS = 0.02
# OAT variants that look for the cause where OAT misses the goal (issue 20), each against the same dedicated models:
# name -> (what it is, overrides given the base job's epochs)
ABLATIONS: dict[str, tuple[str, Any]] = {
    "lambdas_0_1": ("λ list [0, 1] only", lambda epochs: ["method.lambda_choices=[0, 1]"]),
    "epochs_x2": ("epochs ×2", lambda epochs: [f"train.epochs={2 * epochs}"]),
    "epochs_x4": ("epochs ×4", lambda epochs: [f"train.epochs={4 * epochs}"]),
    "zero_share_0.1": ("λ = 0 share 10% (default 1/|Λ|)", lambda epochs: ["method.zero_fraction=0.1"]),
    "zero_share_0.5": ("λ = 0 share 50%", lambda epochs: ["method.zero_fraction=0.5"]),
}


def run(job_path: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """Train (or reuse) one model; its test points, flags and training worker-seconds."""
    job = load_job(job_path, overrides)
    done = out / "eval.json"
    saved = out / "config.yaml"  # read through today's schema: a setting added since takes its default
    if not (done.is_file() and saved.is_file() and load_job(saved).to_yaml() == job.to_yaml()):
        fit(job, out, progress=True, resume=True, label=f"{job.name} {out.name}")
    history = json.loads((out / "history.json").read_text())
    return {"points": [p.to_dict() for p in read_points(done)], "flags": read_flags(done),
            "worker_s": cost_of(history, 1), "job": job.name}


def study_runs(ds: str, seeds: list[int], common: list[str], lambdas: list[float], oats: list[float] | None,
               work: Path, jobs: int = 1, ablations: Sequence[str] = ()) -> dict[str, Any]:
    """Every run of one data set; ``jobs`` > 1 runs that many at a time, in processes of one thread each."""
    oat_job, pgdat_job = REPO / "jobs" / f"{ds}_oat.yaml", REPO / "jobs" / f"{ds}_pgdat.yaml"
    lam_set = f"method.lambda_choices=[{', '.join(f'{v:g}' for v in lambdas)}]"
    tasks: dict[tuple[str, int, float | None], tuple[Path, list[str], Path]] = {}
    for seed in seeds:
        seeded = [*common, f"train.seed={seed}", lam_set, "train.threads=1"]  # one thread a run: runs side by side
        for lam in sorted(lambdas, reverse=True):  # the costly λ = 1 first: the pool ends evenly
            tasks[("pgdat", seed, lam)] = (pgdat_job, [*seeded, f"method.Lambda={lam:g}"],
                                           work / ds / f"pgdat_l{lam:g}_s{seed}")
        if oats:
            ws = f"model.widths=[{', '.join(f'{w:g}' for w in oats)}]"
            tasks[("oats", seed, None)] = (oat_job, [*seeded, "method.name=oats", ws], work / ds / f"oats_s{seed}")
        tasks[("oat", seed, None)] = (oat_job, seeded, work / ds / f"oat_s{seed}")
        epochs = load_job(oat_job, seeded).train.epochs
        for name in ablations:
            tasks[(f"ablation:{name}", seed, None)] = (oat_job, [*seeded, *ABLATIONS[name][1](epochs)],
                                                       work / ds / f"oat_{name}_s{seed}")
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            futures = {k: pool.submit(run, *t) for k, t in tasks.items()}
            results = {k: f.result() for k, f in futures.items()}
    else:
        results = {k: run(*t) for k, t in tasks.items()}
    runs: dict[str, Any] = {"oat": {}, "oats": {}, "pgdat": {s: {} for s in seeds}, "ablations": {}}
    for (method, seed, lam), r in results.items():
        if method == "pgdat":
            runs["pgdat"][seed][lam] = r
        elif method.startswith("ablation:"):
            runs["ablations"].setdefault(method.split(":", 1)[1], {})[seed] = r
        else:
            runs[method][seed] = r
    return runs


def _value(points: list[dict[str, Any]], lam: float, width: float, attack: str, key: str) -> float | None:
    for p in points:
        if abs(p["lambda"] - lam) < 1e-9 and abs(p["width"] - width) < 1e-9 and p.get("attack", "pgd") == attack:
            return float(p[key])
    return None


def _stats(values: list[float | None]) -> dict[str, float] | None:
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"mean": statistics.fmean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _delta(a: dict[str, float] | None, b: dict[str, float] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return None
    d = a["mean"] - b["mean"]
    bound = 2 * math.sqrt((a["sd"] ** 2 + b["sd"] ** 2) / min(a["n"], b["n"]))
    return {"delta": d, "bound": bound, "met": abs(d) <= max(GOAL_POINTS, bound)}


def summarise(ds: str, runs: dict[str, Any], lambdas: list[float], attack: str) -> dict[str, Any]:
    """Per λ (and OATS width): SA, PGD-20 and strong-attack accuracy, mean ± std; Δ against PGDAT."""
    rows = []
    quantities = {"sa": ("pgd", "clean_acc"), "pgd20": ("pgd", "robust_acc"), "strong": (attack, "robust_acc")}
    widths = sorted({p["width"] for r in runs["oats"].values() for p in r["points"]}, reverse=True)
    for method, width in [("oat", 1.0), *[("oats", w) for w in widths]]:
        for lam in lambdas:
            row: dict[str, Any] = {"method": method, "lambda": lam, "width": width}
            for q, (att, key) in quantities.items():
                mine = _stats([_value(r["points"], lam, width, att, key) for r in runs[method].values()])
                ded = _stats([_value(r[lam]["points"], lam, 1.0, att, key) for r in runs["pgdat"].values()])
                row[q] = {method: mine, "pgdat": ded, "vs": _delta(mine, ded)}
            rows.append(row)
    flags = [{"run": f"{m} seed {s}" + ("" if m != "pgdat" else f" λ={lam:g}"), **f}
             for m in ("oat", "oats") for s, r in runs[m].items() for f in r["flags"]]
    flags += [{"run": f"pgdat seed {s} λ={lam:g}", **f} for s, by in runs["pgdat"].items()
              for lam, r in by.items() for f in r["flags"]]
    ablations = []
    for name, by_seed in runs.get("ablations", {}).items():
        for lam in lambdas:
            row = {"ablation": name, "what": ABLATIONS[name][0], "lambda": lam}
            for q, (att, key) in (("sa", ("pgd", "clean_acc")), ("strong", (attack, "robust_acc"))):
                mine = _stats([_value(r["points"], lam, 1.0, att, key) for r in by_seed.values()])
                ded = _stats([_value(r[lam]["points"], lam, 1.0, att, key) for r in runs["pgdat"].values()])
                row[q] = {"oat": mine, "pgdat": ded, "vs": _delta(mine, ded)}
            ablations.append(row)
        flags += [{"run": f"oat ({name}) seed {s}", **f} for s, r in by_seed.items() for f in r["flags"]]
    oat_s = statistics.fmean(r["worker_s"] for r in runs["oat"].values())
    sweep_s = statistics.fmean(sum(r["worker_s"] for r in by.values()) for by in runs["pgdat"].values())
    return {"dataset": ds, "attack": attack, "rows": rows, "ablations": ablations, "flags": flags,
            "anchor": ANCHORS.get(ds, ""),
            "compute": {"oat_worker_s": oat_s, "sweep_worker_s": sweep_s,
                        "ratio": oat_s / sweep_s if sweep_s else None},
            "seeds": sorted(runs["oat"])}


def _cell(s: dict[str, float] | None) -> str:
    if s is None:
        return "–"
    return f"{100 * s['mean']:.1f}" + (f" ± {100 * s['sd']:.1f}" if s["n"] > 1 else "")


def markdown(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    out = ["# OAT / OATS against the dedicated models, under a strong attack", "",
           f"`python -m benchmarks.science {settings['argv']}` ({settings['date']}, {settings['seconds']:.0f} s). "
           "Accuracies in % on the full test split, mean ± std over the seeds; Δ = OAT − PGDAT; ✓: |Δ| ≤ 2 points "
           "or ≤ 2·√((sd₁² + sd₂²)/n).", ""]
    missing = [ds for ds in ANCHORS if ds not in {r["dataset"] for r in results}]
    if missing:
        out += [f"Not in this run: {', '.join(missing)} (`--datasets`).", ""]
    for r in results:
        strong = ATTACK_NAMES.get(r["attack"], r["attack"])
        out += [f"## {r['dataset']} (seeds {', '.join(map(str, r['seeds']))}; strong attack: {strong})", "",
                f"| method | λ | width | SA | SA PGDAT | Δ SA | {strong} | {strong} PGDAT | Δ | PGD-20 "
                "| PGD-20 PGDAT |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            def d(q: str, row: dict[str, Any] = row) -> str:
                v = row[q]["vs"]
                return "–" if v is None else f"{100 * v['delta']:+.1f} {'✓' if v['met'] else '✗'}"
            m = row["method"]
            out.append(f"| {m.upper()} | {row['lambda']:g} | {row['width']:g} | {_cell(row['sa'][m])} | "
                       f"{_cell(row['sa']['pgdat'])} | {d('sa')} | {_cell(row['strong'][m])} | "
                       f"{_cell(row['strong']['pgdat'])} | {d('strong')} | {_cell(row['pgd20'][m])} | "
                       f"{_cell(row['pgd20']['pgdat'])} |")
        if r.get("ablations"):
            out += ["", f"Ablations: OAT variants against the same dedicated models ({strong})", "",
                    f"| ablation | λ | SA | Δ SA | {strong} | Δ |", "|---|---|---|---|---|---|"]
            for row in r["ablations"]:
                def dv(q: str, row: dict[str, Any] = row) -> str:
                    v = row[q]["vs"]
                    return "–" if v is None else f"{100 * v['delta']:+.1f} {'✓' if v['met'] else '✗'}"
                out.append(f"| {row['what']} | {row['lambda']:g} | {_cell(row['sa']['oat'])} | {dv('sa')} | "
                           f"{_cell(row['strong']['oat'])} | {dv('strong')} |")
        c = r["compute"]
        ratio = f"{c['ratio']:.2f}×" if c["ratio"] else "–"
        out += ["", f"Compute: one OAT run {c['oat_worker_s']:.0f} worker-s against the sweep's "
                    f"{c['sweep_worker_s']:.0f} ({ratio}).", "", f"Anchor: {r['anchor']}", ""]
        if r["flags"]:
            out += ["Flagged (a failed run, not a result):", ""]
            out += [f"* {f['run']}, λ={f['lambda']:g} w={f['width']:g}: {'; '.join(f['reasons'])}" for f in r["flags"]]
            out.append("")
    return "\n".join(out)


def perturbed_figure(datasets: dict[str, Path], out: Path, per_class: int = 1) -> Path:
    """Why the ε: per data set, one test image per class clean, then PGD-20 at the job's ε against the dedicated
    λ = 1 model of seed 0 (the strongest perturbation the study trains against), with the model's predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from pipeline.data import open_data
    from pipeline.science.attacks import PGD
    from pipeline.science.model import load_model
    from pipeline.science.robustness import load_test_tensors

    fig, axes = plt.subplots(2 * len(datasets), 10, figsize=(10, 2.3 * len(datasets)), squeeze=False)
    for k, (ds, run_dir) in enumerate(datasets.items()):
        job = load_job(run_dir / "config.yaml")
        model = load_model(run_dir).at(1.0, 1.0)
        x, y = load_test_tensors(open_data(job.data).loader("test", 500))
        idx = torch.stack([torch.nonzero(y == c)[0, 0] for c in range(10)])
        xc, yc = x[idx], y[idx]
        adv = PGD.from_config(job.attack, 20)(model, xc, yc)
        with torch.no_grad():
            pc, pa = model(xc).argmax(1), model(adv).argmax(1)
        for c in range(10):
            for r, (img, pred) in enumerate(((xc, pc), (adv, pa))):
                ax = axes[2 * k + r, c]
                ax.imshow(img[c, 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"→ {int(pred[c])}", fontsize=8, color="black" if pred[c] == c else "red")
            if c == 0:
                axes[2 * k, 0].set_ylabel(f"{ds}\nclean", fontsize=8)
                axes[2 * k + 1, 0].set_ylabel(f"PGD-20\nε = {job.attack.eps:g}", fontsize=8)
    fig.suptitle("Test digits, clean and at the study's ε (PGD-20 against the dedicated λ = 1 model); "
                 "→ its prediction, red where wrong", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--datasets", nargs="+", default=["mnist5k", "digits"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--attack", default="autoattack", choices=sorted(ATTACK_NAMES))
    ap.add_argument("--no-oats", action="store_true")
    ap.add_argument("--oats-widths", nargs="+", type=float, default=[0.5, 1.0], help="OATS: its widths")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (each in a process of one thread)")
    ap.add_argument("--ablations", nargs="+", default=[], choices=sorted(ABLATIONS),
                    help="OAT variants trained beside the study (per seed), against the same dedicated models")
    ap.add_argument("--lambdas", nargs="+", type=float,
                    help="the λ list of every model (OAT trains it, PGDAT one model per λ); default: the OAT job's")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where every run trains and is attacked (cuda: --jobs runs share the GPU); standard "
                         "AutoAttack on mnist5k takes about 45 min a robust point on one CPU thread")
    ap.add_argument("--work", default="runs/science")
    ap.add_argument("--out", help="the JSON result (default: results/science.json; --quick: WORK/science_quick.json)")
    a = ap.parse_args()
    t0 = time.perf_counter()
    work = Path(a.work)
    common = ["data.loader=memory", f"train.device={a.device}"]
    if a.quick:
        a.datasets, a.seeds, a.attack, a.no_oats, a.ablations = ["digits"], [0], "apgd-ce", True, ["zero_share_0.5"]
        common += ["train.epochs=2", "eval.max_images=100", "attack.warmup_epochs=1", "eval.every=100"]
        lambdas = [0.0, 1.0]
    common.append(f"eval.test_attacks=[pgd, {a.attack}]")
    results = []
    for ds in a.datasets:
        if not a.quick:
            lambdas = a.lambdas or list(load_job(REPO / "jobs" / f"{ds}_oat.yaml").method.lambda_choices)
        runs = study_runs(ds, a.seeds, common, lambdas, None if a.no_oats else a.oats_widths, work, a.jobs,
                          a.ablations)
        results.append(summarise(ds, runs, lambdas, a.attack))
    def arg(v: Any) -> str:
        return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else str(v)

    settings = {"argv": " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {arg(v)}")
                                 for k, v in vars(a).items() if v not in (None, False, [])),
                "seconds": time.perf_counter() - t0}
    out = Path(a.out) if a.out else (work / "science_quick.json" if a.quick else RESULTS / "science.json")
    path = write_result("science", {"settings": settings, "results": results}, out)
    settings["date"] = json.loads(path.read_text())["date"]
    md = markdown(results, settings)
    if not a.quick:
        fig = perturbed_figure({r["dataset"]: work / r["dataset"] / f"pgdat_l1_s{r['seeds'][0]}" for r in results
                                if 1.0 in lambdas}, path.with_name("science_perturbed.png"))
        md += f"\n## Why these ε\n\n![clean and perturbed test digits]({fig.name})\n"
    path.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
