"""Time per training step: OAT and OATS against PGDAT on the same backbone and batch, and what a whole
trade-off curve costs each way.

    .venv/bin/python -m benchmarks.step_time [--batch 16] [--repeats 3] [--backbones wrn16_8 resnet34]
                                             [--layout-backbones wrn16_8 resnet34 lenet small_cnn]

For each backbone (32×32×3 input, the reference constants: PGD-7, ε = 8/255) it times one optimiser
step of PGDAT (Λ = 0.5: the attack runs on the whole batch; Λ = 0: standard training, no attack), OAT
(PGD on the λ > 0 share only) and OATS (three widths), counts the step's FLOPs (torch's FlopCounterMode,
on the warm-up step), and measures the machine's fp32 matrix-multiply rate in the same run. Medians over
``--repeats`` steps. The OAT step is also timed in channels-last memory format.

Layouts: the OAT step of each of ``--layout-backbones`` in both memory layouts, on its reference data set's
image shape (the data set it is the reference backbone of, else CIFAR-10's), at ``--layout-batch``: what
``train.channels_last`` buys a training step.

The curve: the reference's λ set {0, 0.1, 0.2, 0.3, 0.4, 1} needs one OAT model, or a PGDAT sweep of six
(one standard-training model and five adversarial ones); for the same epochs and batch the compute ratio
is t(OAT) / (t(PGDAT Λ=0) + 5·t(PGDAT Λ>0)) (the adversarial PGDAT step does not depend on Λ's value).
Writes ``benchmarks/results/step_time.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import machine, matmul_rate, median, timed
from pipeline.config import job_from_dict
from pipeline.science.attacks import PGD
from pipeline.science.methods import StepParams, get_method
from pipeline.science.model import RobustNet, build_model
from pipeline.science.sampling import LambdaSampler
from pipeline.training.setup import spec_from_job

RESULTS = Path(__file__).parent / "results"


def _fb_flops(model, width: float, train: bool, shape=(3, 32, 32)) -> float:
    """FLOPs per image of forward + backward: to the weights and input (train), or to the input only
    with frozen weights (one PGD iteration). torch's counter cannot see inside autograd.grad, so the
    attack is counted through .backward() on the same graph."""
    dev = next(model.parameters()).device
    x = torch.rand(2, *shape, device=dev, requires_grad=not train)
    flags = [p.requires_grad for p in model.parameters()]
    if not train:
        for p in model.parameters():
            p.requires_grad_(False)
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, model.condition(model.lambdas[-1], width)).sum().backward()
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def step_flops(model, method: str, batch: int, steps: int, n_zero: int, shape=(3, 32, 32)) -> float:
    """FLOPs of one step, composed the way the step runs: clean fwd/bwd of the batch, ``steps`` PGD
    iterations and one adversarial fwd/bwd of the attacked samples (PGDAT: all; OAT: the λ > 0 share)."""
    total = 0.0
    for w in (model.widths if method == "oats" else [1.0]):
        train, atk = _fb_flops(model, w, True, shape), _fb_flops(model, w, False, shape)
        n_adv = batch - n_zero
        total += batch * train + n_adv * (steps * atk + train)
    return total


@dataclass
class Step:
    """One optimiser step of a method on a fixed random batch, and what it costs."""

    run: Callable[[], None]
    model: RobustNet
    flops: float  # of one step (fp32 eager count; AMP and compile change the speed, not the count)
    label: str


def make_step(backbone: str, method: str, batch: int, *, Lambda: float = 0.5, device: str = "cpu",
              channels_last: bool = False, amp: bool = False, compile: bool = False,
              dataset: str = "cifar10") -> Step:
    """The step as training runs it (pipeline.science.methods), with the reference constants (PGD-7, ε = 8/255,
    6 λ choices, OATS widths 0.25–1) on random images of ``dataset``'s shape. ``amp``: bf16 autocast around the
    step (CUDA); ``compile``: pipeline.training.setup.compile_model."""
    from pipeline.data.datasets import get_dataset

    job = job_from_dict({"data": {"dataset": dataset}, "model": {"backbone": backbone},
                         "method": {"name": method, "Lambda": Lambda}})
    shape = get_dataset(dataset).image_shape
    torch.manual_seed(0)
    model = build_model(spec_from_job(job, shape[0], 10, list(shape[1:]))).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    attack = PGD.from_config(job.attack)
    sampler = LambdaSampler(job.method.lambda_choices, generator=torch.Generator().manual_seed(0))
    n_zero = sampler.n_zero(batch) if get_method(method).conditioned else (batch if Lambda == 0 else 0)
    flops = step_flops(model, method, batch, attack.steps, n_zero, shape)
    if compile:
        from pipeline.training.setup import compile_model

        compile_model(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.rand(batch, *shape, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    ctx = (lambda: torch.autocast(torch.device(device).type, dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    m = get_method(method)
    params = StepParams(Lambda, list(model.widths))

    def run() -> None:
        with ctx():
            res = m.objective(model, x, y, sampler(batch) if m.conditioned else None, attack, params)
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        opt.step()

    label = (method if method != "pgdat" else f"pgdat Λ={Lambda:g}") + (" (channels-last)" if channels_last else "")
    return Step(run, model, flops, label)


def layout_dataset(backbone: str) -> str:
    """The data set whose reference backbone ``backbone`` is (pipeline.data.datasets), else CIFAR-10: the image
    shape its layouts are timed on."""
    from pipeline.data.datasets import DATASETS

    return next((name for name, spec in DATASETS.items() if spec.backbone == backbone), "cifar10")


def layouts(backbones: list[str], batch: int, repeats: int, device: str = "cpu", amp: bool = False) -> list[dict]:
    """The OAT step of each backbone in both memory layouts (contiguous NCHW and channels-last), on its reference
    data set's image shape: what ``train.channels_last`` buys a training step."""
    rows = []
    for bb in backbones:
        ds = layout_dataset(bb)
        sec = {}
        for cl in (False, True):
            st = make_step(bb, "oat", batch, device=device, channels_last=cl, amp=amp, dataset=ds)
            sec[cl] = median(timed(st.run, repeats, warmup=1, device=device))
        rows.append({"backbone": bb, "dataset": ds, "batch": batch, "device": device, "amp": amp,
                     "contiguous_s": sec[False], "channels_last_s": sec[True],
                     "channels_last_speedup": sec[False] / sec[True]})
    return rows


def bench(backbone: str, method: str, batch: int, repeats: int, Lambda: float = 0.5,
          channels_last: bool = False) -> dict:
    st = make_step(backbone, method, batch, Lambda=Lambda, channels_last=channels_last)
    times = timed(st.run, repeats, warmup=1)
    sec = median(times)
    return {"backbone": backbone, "method": st.label, "batch": batch, "seconds_per_step": sec,
            "seconds_all": times, "images_per_s": batch / sec, "gflop_per_step": st.flops / 1e9,
            "gflops_achieved": st.flops / sec / 1e9}


def curve_cost(rows: list[dict], backbone: str, n_lambdas: int = 6) -> dict:
    """Compute of a whole trade-off curve (same epochs and batch): one OAT (or OATS) model against the
    PGDAT sweep of ``n_lambdas`` models, one of them at Λ = 0."""
    t = {r["method"]: r["seconds_per_step"] for r in rows if r["backbone"] == backbone}
    sweep = t["pgdat Λ=0"] + (n_lambdas - 1) * t["pgdat Λ=0.5"]
    out = {"lambdas": n_lambdas, "sweep_step_s": sweep, "oat_step_s": t["oat"], "oat_vs_sweep": t["oat"] / sweep}
    if "oats" in t:
        out.update(oats_step_s=t["oats"], oats_vs_sweep=t["oats"] / sweep)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backbones", nargs="+", default=["wrn16_8", "resnet34"])
    ap.add_argument("--layout-backbones", nargs="*", default=["wrn16_8", "resnet34", "lenet", "small_cnn"],
                    help="backbones whose OAT step is timed in both memory layouts (nothing: skip)")
    ap.add_argument("--layout-batch", type=int, default=64, help="batch of the layout comparison")
    ap.add_argument("--out", default=str(RESULTS / "step_time.json"))
    a = ap.parse_args()
    rate_before = matmul_rate()
    rows = []
    for bb in a.backbones:
        rows.append(bench(bb, "pgdat", a.batch, a.repeats, Lambda=0.0))
        rows += [bench(bb, m, a.batch, a.repeats) for m in ("pgdat", "oat", "oats")]
        rows.append(bench(bb, "oat", a.batch, a.repeats, channels_last=True))
    rate = max(rate_before, matmul_rate())
    for r in rows:
        base = next(p for p in rows if p["backbone"] == r["backbone"] and p["method"] == "pgdat Λ=0.5")
        r["vs_pgdat"] = r["seconds_per_step"] / base["seconds_per_step"]
        r["fraction_of_matmul_rate"] = r["gflops_achieved"] / rate
    doc = {"benchmark": "step_time", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "matmul_gflops_fp32": rate,
           "config": {"batch": a.batch, "repeats": a.repeats, "input": [3, 32, 32], "attack": "PGD-7 linf 8/255",
                      "vs_pgdat": "PGDAT at Λ = 0.5 (the attack on the whole batch)"},
           "results": rows, "curve": {bb: curve_cost(rows, bb) for bb in a.backbones},
           "layouts": layouts(a.layout_backbones, a.layout_batch, a.repeats)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"fp32 matmul rate: {rate:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"{'backbone':<9} {'method':<26} {'s/step':>8} {'img/s':>7} {'GFLOP':>8} {'GFLOP/s':>8} "
          f"{'of mm':>6} {'vs PGDAT':>8}")
    for r in rows:
        print(f"{r['backbone']:<9} {r['method']:<26} {r['seconds_per_step']:>8.2f} {r['images_per_s']:>7.2f} "
              f"{r['gflop_per_step']:>8.0f} {r['gflops_achieved']:>8.1f} {r['fraction_of_matmul_rate']:>6.0%} "
              f"{r['vs_pgdat']:>8.2f}")
    for bb, c in doc["curve"].items():
        print(f"{bb}: a 6-λ curve with OAT costs {c['oat_vs_sweep']:.2f}× the PGDAT sweep's compute"
              + (f" (OATS, 3 widths: {c['oats_vs_sweep']:.2f}×)" if "oats_vs_sweep" in c else ""))
    for r in doc["layouts"]:
        print(f"{r['backbone']} on {r['dataset']} (batch {r['batch']}): OAT step {r['contiguous_s']:.3f} s contiguous, "
              f"{r['channels_last_s']:.3f} s channels-last ({r['channels_last_speedup']:.2f}×)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
