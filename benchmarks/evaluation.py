"""Evaluation throughput and precision: PGD-20 over the trade-off curve (one pass per λ against the fused
multi-λ pass), AutoAttack, and the attack under bf16 autocast against fp32.

    .venv/bin/python -m benchmarks.evaluation [--epochs 5] [--images 397] [--repeats 3] [--wrn-batch 4]

1. A small OAT model is trained on digits (jobs/digits_oat.yaml, ``--epochs`` epochs): the numbers below
   need a model that classifies, since AutoAttack only attacks what the model gets right.
2. **PGD-20, the whole curve** (6 λ, batch 100, ``--images`` test images): images·λ per second, with
   ``eval.fuse_lambdas`` off (one pass per λ) and on (one batched pass), medians of ``--repeats``. The same on
   an untrained WRN-16-8 at 32×32 (one batch of ``--wrn-batch``; the attack's cost does not depend on the weights).
3. **AutoAttack** (standard: APGD-CE, APGD-T, FAB-T, Square) at λ = 0 and λ = 1: images per second.
4. **bf16 autocast against fp32**: PGD-20 robust accuracy per λ with the model under autocast (the
   perturbation itself stays fp32); issue 9's bound is 0.5 points. On this CPU autocast runs bf16 kernels
   in software, so only the arithmetic is checked here, not the speed (benchmarks/gpu.py times it on CUDA).

Writes ``benchmarks/results/evaluation.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import median, timed, write_result
from pipeline.science.attacks import PGD
from pipeline.science.curves import Point, evaluate_model

JOB = Path(__file__).resolve().parent.parent / "jobs" / "digits_oat.yaml"
LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]


def train_digits(epochs: int, tmp: Path, device: str = "cpu", steps: int | None = None, images: int | None = None):
    """The digits OAT model (jobs/digits_oat.yaml, ``epochs`` epochs of at most ``steps`` steps) and the test
    split (its first ``images``) on ``device``."""
    from pipeline.config import load_job
    from pipeline.data import open_data
    from pipeline.science.model import load_model
    from pipeline.science.robustness import load_test_tensors
    from pipeline.training.loop import fit

    job = load_job(JOB, [f"train.epochs={epochs}", f"train.device={device}", "eval.every=1000",
                         "eval.last_quarter=false", "eval.max_images=100"]
                   + ([f"train.max_steps_per_epoch={steps}"] if steps else []))
    t0 = time.perf_counter()
    fit(job, tmp / "run", progress=False, final_test=False)
    model = load_model(tmp / "run" / "final.pt").to(device)
    x, y = load_test_tensors(open_data(job.data).loader("test", 200, device=torch.device(device), limit=images))
    return job, model, x, y, time.perf_counter() - t0


def bf16_against_fp32(model, x, y, pgd: PGD, batch: int = 100) -> list[tuple[Point, Point]]:
    """PGD (no random start, so both see the same start) over the 6-λ curve, fp32 and under bf16 autocast
    on the model (the perturbation stays fp32): the (fp32, bf16) points per λ."""
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    det = PGD(pgd.eps, pgd.steps, pgd.step_size, pgd.norm, random_start=False)
    fp32 = evaluate_model(model, batches, LAMBDAS, [1.0], det)
    bf16 = evaluate_model(model, batches, LAMBDAS, [1.0], det,
                          autocast=lambda: torch.autocast(x.device.type, dtype=torch.bfloat16))
    return list(zip(fp32, bf16))


def curve_throughput(model, x, y, attack, batch: int, repeats: int, warmup: int = 1) -> dict:
    batches = [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]
    out = {}
    for fuse in (False, True):
        secs = timed(lambda f=fuse: evaluate_model(model, batches, LAMBDAS, [1.0], attack, fuse=f), repeats,
                     warmup=warmup)
        out["fused" if fuse else "per_lambda"] = {"seconds": median(secs), "seconds_all": secs,
                                                  "images_lambda_per_s": len(x) * len(LAMBDAS) / median(secs)}
    out["speedup"] = out["per_lambda"]["seconds"] / out["fused"]["seconds"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--images", type=int, default=397)
    ap.add_argument("--aa-images", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--wrn-batch", type=int, default=4)
    ap.add_argument("--out")
    a = ap.parse_args()
    from pipeline.config import job_from_dict
    from pipeline.science.model import build_model
    from pipeline.science.robustness import AttackSpec, attack_flags
    from pipeline.training.setup import spec_from_job

    with tempfile.TemporaryDirectory(prefix="oat-bench-eval-") as tmp:
        job, model, x, y, train_s = train_digits(a.epochs, Path(tmp))
    x, y = x[: a.images], y[: a.images]
    eps = job.attack.eps
    pgd20 = PGD.from_config(job.attack, 20)
    print(f"trained the digits OAT model in {train_s:.0f} s; {len(x)} test images, ε = {eps}")

    digits = curve_throughput(model, x, y, pgd20, 100, a.repeats)
    wjob = job_from_dict({"data": {"dataset": "cifar10"}, "model": {"backbone": "wrn16_8"}, "method": {"name": "oat"}})
    torch.manual_seed(0)
    wrn = build_model(spec_from_job(wjob, 3, 10, [32, 32]))
    xw, yw = torch.rand(a.wrn_batch, 3, 32, 32), torch.randint(0, 10, (a.wrn_batch,))
    # no warm-up call: eager WRN steps have nothing to warm, and each call takes half a minute here
    wrn_curve = curve_throughput(wrn, xw, yw, PGD.from_config(wjob.attack, 20), a.wrn_batch, max(1, a.repeats - 1),
                                 warmup=0)

    aa = {}
    xa, ya = x[: a.aa_images], y[: a.aa_images]
    for lam in (0.0, 1.0):
        spec = AttackSpec("autoattack", "linf", eps)
        t0 = time.perf_counter()
        flags = attack_flags(model.at(lam), spec, xa, ya, batch_size=200)
        sec = time.perf_counter() - t0
        aa[str(lam)] = {"seconds": sec, "images_per_s": len(xa) / sec, "clean_acc": float(flags.clean.float().mean()),
                        "robust_acc": float(flags.robust.float().mean()), "images": len(xa)}

    precision = [{"lambda": p.lam, "clean_fp32": p.clean_acc, "clean_bf16": q.clean_acc, "robust_fp32": p.robust_acc,
                  "robust_bf16": q.robust_acc, "robust_diff_points": 100 * (q.robust_acc - p.robust_acc)}
                 for p, q in bf16_against_fp32(model, x, y, pgd20)]
    max_diff = max(abs(r["robust_diff_points"]) for r in precision)

    body = {"config": {"job": JOB.name, "train_epochs": a.epochs, "images": len(x), "lambdas": LAMBDAS,
                       "attack": pgd20.describe(), "repeats": a.repeats, "wrn_batch": a.wrn_batch,
                       "aa_images": len(xa), "aa_version": "standard"},
            "train_seconds": train_s, "pgd20_curve_digits": digits, "pgd20_curve_wrn16_8": wrn_curve,
            "autoattack": aa, "bf16_vs_fp32": {"points": precision, "max_robust_diff_points": max_diff,
                                               "attack": "PGD-20 without random start (same start in both)"}}
    path = write_result("evaluation", body, a.out)
    print(f"\nPGD-20 over {len(LAMBDAS)} λ    {'per λ':>12} {'fused':>12} {'speed-up':>9}   (images·λ/s)")
    for name, r in (("digits small CNN, b=100", digits), (f"WRN-16-8 32², b={a.wrn_batch}", wrn_curve)):
        print(f"{name:<27} {r['per_lambda']['images_lambda_per_s']:>12.1f} {r['fused']['images_lambda_per_s']:>12.1f}"
              f" {r['speedup']:>8.2f}×")
    for lam, r in aa.items():
        print(f"AutoAttack at λ={lam}: {r['images_per_s']:.1f} images/s (SA {100 * r['clean_acc']:.1f}%, "
              f"RA {100 * r['robust_acc']:.1f}%, {r['images']} images)")
    print(f"bf16 autocast vs fp32, PGD-20 RA: largest difference {max_diff:.2f} points over {len(LAMBDAS)} λ")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
