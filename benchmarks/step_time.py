"""Time per training step: OAT and OATS against PGDAT on the same backbone and batch.

    .venv/bin/python -m benchmarks.step_time [--batch 16] [--repeats 3] [--backbones wrn16_8 resnet34]

For each backbone (32×32×3 input, the reference constants: PGD-7, ε = 8/255) it times one optimiser
step of PGDAT (Λ = 0.5: the attack runs on the whole batch), OAT (PGD on the λ > 0 share only) and
OATS (three widths), counts the step's FLOPs (torch's FlopCounterMode, on the warm-up step), and
measures the machine's fp32 matrix-multiply rate in the same run. Medians over ``--repeats`` steps.
Writes ``benchmarks/results/step_time.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.attacks import PGD
from pipeline.config import job_from_dict
from pipeline.methods import LambdaSampler, oat_step, oats_step, pgdat_step
from pipeline.models import build_model, spec_from_job

RESULTS = Path(__file__).parent / "results"


def matmul_rate(n: int = 1024, repeats: int = 20) -> float:
    """fp32 GFLOP/s of an n×n matrix multiply (median of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def _fb_flops(model, width: float, train: bool) -> float:
    """FLOPs per image of forward + backward: to the weights and input (train), or to the input only
    with frozen weights (one PGD iteration). torch's counter cannot see inside autograd.grad, so the
    attack is counted through .backward() on the same graph."""
    x = torch.rand(2, 3, 32, 32, requires_grad=not train)
    flags = [p.requires_grad for p in model.parameters()]
    if not train:
        for p in model.parameters():
            p.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, model.condition(0.5 if model.spec.method == "pgdat" else 1.0, width)).sum().backward()
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def step_flops(model, method: str, batch: int, steps: int, n_zero: int) -> float:
    """FLOPs of one step, composed the way the step runs: clean fwd/bwd of the batch, ``steps`` PGD
    iterations and one adversarial fwd/bwd of the attacked samples (PGDAT: all; OAT: the λ > 0 share)."""
    total = 0.0
    for w in (model.widths if method == "oats" else [1.0]):
        train, atk = _fb_flops(model, w, True), _fb_flops(model, w, False)
        n_adv = batch if method == "pgdat" else batch - n_zero
        total += batch * train + n_adv * (steps * atk + train)
    return total


def bench(backbone: str, method: str, batch: int, repeats: int) -> dict:
    job = job_from_dict({"data": {"dataset": "cifar10"}, "model": {"backbone": backbone},
                         "method": {"name": method, "Lambda": 0.5}})
    torch.manual_seed(0)
    model = build_model(spec_from_job(job, 3, 10, [32, 32])).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    attack = PGD.from_config(job.attack)
    sampler = LambdaSampler(job.method.lambda_choices, generator=torch.Generator().manual_seed(0))
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step() -> None:
        if method == "pgdat":
            res = pgdat_step(model, x, y, 0.5, attack)
        elif method == "oat":
            res = oat_step(model, x, y, sampler(batch), attack)
        else:
            res = oats_step(model, x, y, sampler(batch), attack)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    step()  # warm-up
    flops = step_flops(model, method, batch, attack.steps, sampler.n_zero(batch))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return {"backbone": backbone, "method": method, "batch": batch, "seconds_per_step": sec,
            "seconds_all": times, "images_per_s": batch / sec, "gflop_per_step": flops / 1e9,
            "gflops_achieved": flops / sec / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbones", nargs="+", default=["wrn16_8", "resnet34"])
    ap.add_argument("--out", default=str(RESULTS / "step_time.json"))
    a = ap.parse_args()
    rate_before = matmul_rate()
    rows = [bench(bb, m, a.batch, a.repeats) for bb in a.backbones for m in ("pgdat", "oat", "oats")]
    rate = max(rate_before, matmul_rate())
    for r in rows:
        base = next(p for p in rows if p["backbone"] == r["backbone"] and p["method"] == "pgdat")
        r["vs_pgdat"] = r["seconds_per_step"] / base["seconds_per_step"]
        r["fraction_of_matmul_rate"] = r["gflops_achieved"] / rate
    doc = {"benchmark": "step_time", "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": {"cpu_count": torch.get_num_threads(), "platform": platform.platform(),
                       "processor": platform.processor(), "python": platform.python_version(),
                       "torch": torch.__version__},
           "matmul_gflops_fp32": rate, "config": {"batch": a.batch, "repeats": a.repeats, "input": [3, 32, 32],
                                                 "attack": "PGD-7 linf 8/255", "pgdat_lambda": 0.5},
           "results": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"fp32 matmul rate: {rate:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"{'backbone':<9} {'method':<6} {'s/step':>8} {'img/s':>7} {'GFLOP':>8} {'GFLOP/s':>8} "
          f"{'of mm':>6} {'vs PGDAT':>8}")
    for r in rows:
        print(f"{r['backbone']:<9} {r['method']:<6} {r['seconds_per_step']:>8.2f} {r['images_per_s']:>7.2f} "
              f"{r['gflop_per_step']:>8.0f} {r['gflops_achieved']:>8.1f} {r['fraction_of_matmul_rate']:>6.0%} "
              f"{r['vs_pgdat']:>8.2f}")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
