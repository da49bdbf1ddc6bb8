"""Training throughput on one CUDA GPU: OAT, OATS and PGDAT on WRN-16-8 and ResNet-34 at batch 128, with and
without bf16 autocast and torch.compile, as a fraction of the GPU's measured matrix rate.

    benchmarks/gpu.sh                       # on a machine with one CUDA GPU; or:
    .venv/bin/python -m benchmarks.gpu [--batch 128] [--steps 20] [--compile oat|all|none]

For every (backbone, method, AMP on/off, compile on/off) it times ``--steps`` optimiser steps after a warm-up
(compilation included in the warm-up, reported as ``compile_s``), with channels-last inputs and weights; the
OAT step of each backbone is also timed in both memory layouts, with and without bf16 autocast (``layouts``:
what ``train.channels_last`` buys a step on this GPU).
The FLOPs of a step are counted once per (backbone, method) with torch's FlopCounterMode (fp32, eager), so
the achieved rate is FLOPs / time whatever the precision. The peak is measured in the same run: the bf16
and the fp32 (TF32 off) matrix-multiply rates of an 8192² product. ``fraction_of_bf16_peak`` of the OAT
WRN-16-8 AMP row is issue 9's GPU target (≥ 40%); ``cifar10_200_epochs_min`` converts images/s into the
wall time of 200 CIFAR-10 epochs (50,000 training images each, plus nothing for evaluation).

It also checks the attack's arithmetic under bf16: a small OAT model is trained on digits on the GPU, and its
PGD-20 robust accuracy per λ under autocast is compared with fp32 (issue 9: within 0.5 points).

``--device cpu --backbones small_cnn`` runs the same code on the CPU (the tests use it; there is no GPU
there). Writes ``benchmarks/results/gpu.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import matmul_rate, median, timed, write_result
from benchmarks.evaluation import bf16_against_fp32, train_digits
from benchmarks.step_time import layouts, make_step

CIFAR10_TRAIN = 50_000


def bf16_check(device: str, epochs: int, images: int | None = None, steps: int | None = None) -> dict:
    """PGD-20 RA per λ of a digits OAT model, bf16 autocast against fp32, deterministic start."""
    from pipeline.science.attacks import PGD

    with tempfile.TemporaryDirectory(prefix="oat-gpu-") as tmp:
        job, model, x, y, _ = train_digits(epochs, Path(tmp), device, steps, images)
    rows = [{"lambda": p.lam, "robust_fp32": p.robust_acc, "robust_bf16": q.robust_acc,
             "diff_points": 100 * (q.robust_acc - p.robust_acc)}
            for p, q in bf16_against_fp32(model, x, y, PGD.from_config(job.attack, 20), batch=400)]
    return {"images": len(y), "attack": "PGD-20, no random start", "points": rows,
            "max_abs_diff_points": max(abs(r["diff_points"]) for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--backbones", nargs="+", default=["wrn16_8", "resnet34"])
    ap.add_argument("--methods", nargs="+", default=["pgdat", "oat", "oats"])
    ap.add_argument("--compile", choices=["none", "oat", "all"], default="oat",
                    help="which methods also run compiled (compiling takes minutes per variant)")
    ap.add_argument("--check-epochs", type=int, default=5, help="digits epochs for the bf16 check (0: skip)")
    ap.add_argument("--check-images", type=int, help="test images for the bf16 check (default: all 397)")
    ap.add_argument("--check-steps", type=int, help="cap the steps per epoch of the bf16 check's training")
    ap.add_argument("--mm-size", type=int, help="matrix size of the peak-rate measurement (8192 on CUDA, 512 on CPU)")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks.gpu: no CUDA GPU here (torch.cuda.is_available() is False); "
                         "--device cpu runs the same code on the CPU")
    cuda = a.device == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    n = a.mm_size or (8192 if cuda else 512)
    peak = {"bf16": matmul_rate(n, 20, torch.bfloat16, a.device), "fp32": matmul_rate(n, 10, torch.float32, a.device)}
    print(f"matrix rate ({n}²): bf16 {peak['bf16'] / 1e3:.1f} TFLOP/s, fp32 {peak['fp32'] / 1e3:.1f} TFLOP/s")
    rows = []
    for bb in a.backbones:
        for method in a.methods:
            for amp in (False, True):
                for comp in (False, True):
                    if comp and not (a.compile == "all" or (a.compile == "oat" and method == "oat")):
                        continue
                    t0 = time.perf_counter()
                    st = make_step(bb, method, a.batch, device=a.device, channels_last=True, amp=amp, compile=comp)
                    for _ in range(a.warmup):
                        st.run()
                    if cuda:
                        torch.cuda.synchronize()
                    warm = time.perf_counter() - t0
                    sec = median(timed(st.run, a.steps, warmup=0, device=a.device))
                    rate = st.flops / sec / 1e9
                    row = {"backbone": bb, "method": method, "amp": amp, "compile": comp, "batch": a.batch,
                           "seconds_per_step": sec, "images_per_s": a.batch / sec, "gflop_per_step": st.flops / 1e9,
                           "gflops_achieved": rate, "fraction_of_bf16_peak": rate / peak["bf16"],
                           "fraction_of_fp32_peak": rate / peak["fp32"], "warmup_s": warm,
                           "cifar10_200_epochs_min": 200 * CIFAR10_TRAIN / (a.batch / sec) / 60}
                    rows.append(row)
                    print(f"{bb:<9} {method:<6} amp={'on ' if amp else 'off'} compile={'on ' if comp else 'off'} "
                          f"{row['images_per_s']:>8.0f} img/s {rate / 1e3:>7.1f} TFLOP/s "
                          f"{row['fraction_of_bf16_peak']:>5.0%} of bf16 peak  200 CIFAR epochs "
                          f"{row['cifar10_200_epochs_min']:>6.0f} min  (warm-up {warm:.0f} s)", flush=True)
                    del st
                    if cuda:
                        torch.cuda.empty_cache()
    # what train.channels_last buys on this GPU: the OAT step contiguous and channels-last
    layout_rows = [r for amp in (False, True) for r in layouts(a.backbones, a.batch, a.steps, a.device, amp=amp)]
    for r in layout_rows:
        print(f"{r['backbone']:<9} oat    amp={'on ' if r['amp'] else 'off'} channels-last "
              f"{r['channels_last_speedup']:.2f}× the contiguous step ({r['contiguous_s'] * 1e3:.1f} → "
              f"{r['channels_last_s'] * 1e3:.1f} ms)", flush=True)
    check = bf16_check(a.device, a.check_epochs, a.check_images, a.check_steps) if a.check_epochs else None
    if check:
        print(f"bf16 vs fp32 PGD-20 RA on digits ({check['images']} images): largest difference "
              f"{check['max_abs_diff_points']:.2f} points")
    body = {"config": {"device": a.device, "batch": a.batch, "steps": a.steps, "warmup": a.warmup,
                       "channels_last": True, "tf32": False, "attack": "PGD-7 linf 8/255 (train)",
                       "compile": a.compile},
            "peak_gflops": peak, "results": rows, "layouts": layout_rows, "bf16_check": check}
    path = write_result("gpu", body, a.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
