"""PGD-7, PGD-20 and AutoAttack per λ for the main job's models: the OAT model and the dedicated PGDAT sweep.

    .venv/bin/python -m benchmarks.robustness_digits [--pipeline runs/digits_pipeline] [--max-images N]

Needs a finished ``oat run jobs/pipeline_digits.yaml`` (the README's main job). On the whole digits test split
(397 images, L∞ ε = 0.3) it evaluates the OAT model at every λ and each dedicated model at its own λ with
PGD-7 (the training attack), PGD-20 (the pipeline's test attack) and standard AutoAttack, plus the per-image
worst case; runs the sanity checks on the OAT model at λ = 1; and writes
``benchmarks/results/robustness_digits.{json,txt}`` and the OAT model's HTML report beside them.
Restartable: its state lives in ``<pipeline>/robustness_state``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pipeline.config import job_from_dict
from pipeline.data import open_data
from pipeline.files import load_checkpoint, resolve_checkpoint
from pipeline.launch.assess import Assessment, _environment, _sha256, summary_table, write_report
from pipeline.science.model import load_model
from pipeline.science.robustness import AttackSpec, evaluate_attacks, load_test_tensors, sanity_checks

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="runs/digits_pipeline")
    ap.add_argument("--max-images", type=int)
    a = ap.parse_args()
    torch.set_num_threads(2)
    root = Path(a.pipeline)
    oat_ckpt = resolve_checkpoint(root / "oat")
    job = job_from_dict(load_checkpoint(oat_ckpt)["job"])
    data = open_data(job.data)
    x, y = load_test_tensors(data.loader("test", 200, device=torch.device("cpu"), limit=a.max_images))
    eps = job.attack.eps
    specs = [AttackSpec("pgd", "linf", eps, 7), AttackSpec("pgd", "linf", eps, 20),
             AttackSpec("autoattack", "linf", eps)]
    state = root / "robustness_state"
    t0 = time.perf_counter()
    oat = load_model(oat_ckpt)
    print(f"OAT model {oat_ckpt}: {len(y)} test images, λ ∈ {oat.lambdas}", flush=True)
    ev = evaluate_attacks(oat, x, y, oat.lambdas, [1.0], specs, batch_size=200, state_dir=state / "oat",
                          state_tag=_sha256(oat_ckpt))
    checks = sanity_checks(oat.at(1.0), x, y, eps=eps, batch_size=200,
                           known={"PGD-20": next(p.robust_acc for p in ev.points
                                                 if p.attack == "pgd" and p.steps == 20 and p.lam == 1.0)})
    res = Assessment(str(oat_ckpt), _sha256(oat_ckpt), job.name, "oat", data.name, len(y), "linf", eps, ev.points,
                     [s.describe() for s in specs], checks, {"lambda": 1.0, "width": 1.0, "images": len(y)},
                     dict(ev.seconds), ev.warnings, _environment("cpu"))
    write_report(res, RESULTS / "robustness_digits_oat")
    dedicated = []
    sweep = json.loads((root / "sweep" / "sweep.json").read_text())
    for t in sweep["trials"]:
        ck = resolve_checkpoint(t["checkpoint"])
        m = load_model(ck)
        print(f"PGDAT λ={t['lambda']:g} ({ck})", flush=True)
        e = evaluate_attacks(m, x, y, m.lambdas, [1.0], specs, batch_size=200,
                             state_dir=state / f"pgdat_{t['lambda']:g}", state_tag=_sha256(ck))
        dedicated += e.points
    seconds = time.perf_counter() - t0

    def cell(pts: list, lam: float, attack: str, steps: int = 0) -> float:
        return next(100 * p.robust_acc for p in pts if p.lam == lam and p.attack == attack
                    and (attack != "pgd" or p.steps == steps))

    lams = sorted({p.lam for p in ev.points})
    head = (f"{'λ':>5} │ {'SA':>5} {'PGD-7':>6} {'PGD-20':>6} {'AA':>6} │ {'SA':>5} {'PGD-7':>6} {'PGD-20':>6} "
            f"{'AA':>6} │ {'ΔAA':>6}")
    lines = [f"digits test split, {len(y)} images, L∞ ε={eps:g}; robust accuracy in %; left: the one OAT model, "
             "right: the dedicated PGDAT model at that λ", f"{'':>5} │ {'OAT':^27} │ {'PGDAT (one per λ)':^27} │",
             head, "─" * len(head)]
    for lam in lams:
        o = [cell(ev.points, lam, "pgd", 7), cell(ev.points, lam, "pgd", 20), cell(ev.points, lam, "autoattack")]
        d = [cell(dedicated, lam, "pgd", 7), cell(dedicated, lam, "pgd", 20), cell(dedicated, lam, "autoattack")]
        sa_o = next(100 * p.clean_acc for p in ev.points if p.lam == lam)
        sa_d = next(100 * p.clean_acc for p in dedicated if p.lam == lam)
        lines.append(f"{lam:>5.2f} │ {sa_o:>5.1f} {o[0]:>6.1f} {o[1]:>6.1f} {o[2]:>6.1f} │ {sa_d:>5.1f} {d[0]:>6.1f} "
                     f"{d[1]:>6.1f} {d[2]:>6.1f} │ {o[2] - d[2]:>+6.1f}")
    lines.append("")
    lines.append("sanity checks (OAT, λ = 1): " + "; ".join(f"{c.name} {'passed' if c.passed else 'FAILED'} "
                                                             f"({c.detail})" for c in checks))
    lines.append(f"time: {seconds:.0f} s on {platform.machine()} ({torch.get_num_threads()} threads)")
    text = "\n".join(lines)
    print("\n" + summary_table(res) + "\n\n" + text)
    (RESULTS / "robustness_digits.txt").write_text(text + "\n")
    (RESULTS / "robustness_digits.json").write_text(json.dumps({
        "oat": [p.to_dict() for p in ev.points], "dedicated": [p.to_dict() for p in dedicated],
        "sanity_checks": [c.to_dict() for c in checks], "seconds": seconds, "environment": _environment("cpu"),
        "oat_checkpoint_sha256": res.checkpoint_sha256, "n": len(y)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
