"""The summary table of benchmarks/results/*.json against issue 9's targets.

    .venv/bin/python -m benchmarks.summary      # rebuilds benchmarks/results/summary.md from the JSON files

Every row names its source file and the date it was measured; a target whose benchmark has not run (the
GPU rows on a machine without one) says "not measured" rather than pass or fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS


@dataclass
class Row:
    what: str
    target: str
    source: str
    measure: Callable[[dict[str, Any]], tuple[float, str]]  # -> (value, text)
    ok: Callable[[float], bool]


def _step(doc: dict, backbone: str, method: str) -> dict:
    return next(r for r in doc["results"] if r["backbone"] == backbone and r["method"] == method)


def _gpu_oat(doc: dict) -> dict:
    rows = [r for r in doc["results"] if r["backbone"] == "wrn16_8" and r["method"] == "oat" and r["amp"]]
    return max(rows, key=lambda r: r["fraction_of_bf16_peak"])


ROWS = [
    Row("OAT step FLOP rate, WRN-16-8 (CPU), channels-last", "≥ 85% of fp32 matmul", "step_time",
        lambda d: ((v := _step(d, "wrn16_8", "oat (channels-last)")["fraction_of_matmul_rate"]),
                   f"{v:.0%} ({_step(d, 'wrn16_8', 'oat (channels-last)')['gflops_achieved']:.0f} of "
                   f"{d['matmul_gflops_fp32']:.0f} GFLOP/s)"), lambda v: v >= 0.85),
    Row("OAT step FLOP rate, WRN-16-8 (CPU), contiguous layout", "≥ 85% of fp32 matmul", "step_time",
        lambda d: ((v := _step(d, "wrn16_8", "oat")["fraction_of_matmul_rate"]),
                   f"{v:.0%} ({_step(d, 'wrn16_8', 'oat')['gflops_achieved']:.0f} of "
                   f"{d['matmul_gflops_fp32']:.0f} GFLOP/s)"), lambda v: v >= 0.85),
    Row("OAT step / PGDAT step, WRN-16-8", "≤ 0.95×", "step_time",
        lambda d: ((v := _step(d, "wrn16_8", "oat")["vs_pgdat"]), f"{v:.2f}×"), lambda v: v <= 0.95),
    Row("OAT step / PGDAT step, ResNet-34", "≤ 0.95×", "step_time",
        lambda d: ((v := _step(d, "resnet34", "oat")["vs_pgdat"]), f"{v:.2f}×"), lambda v: v <= 0.95),
    Row("6-λ curve: OAT compute / PGDAT sweep, WRN-16-8", "≤ 0.25×", "step_time",
        lambda d: ((v := d["curve"]["wrn16_8"]["oat_vs_sweep"]), f"{v:.2f}×"), lambda v: v <= 0.25),
    Row("dual BN + FiLM, one λ group / plain BN + FiLM", "≤ 1.00×", "routing",
        lambda d: ((v := next(r["vs_baseline"] for r in d["results"] if r["variant"] == "CondNorm, one λ group")),
                   f"{v:.2f}×"), lambda v: v <= 1.0),
    Row("FFCV / torchvision loader", "≥ 5×", "data_loader",
        lambda d: (d["speedup"], f"{d['speedup']:.1f}× ({d['ffcv']['img_per_s']:,.0f} vs "
                                 f"{d['torchvision']['img_per_s']:,.0f} img/s)"), lambda v: v >= 5),
    Row("channels-last / contiguous, OAT step (CPU)", "faster on every backbone", "step_time",
        lambda d: (min(r["channels_last_speedup"] for r in d["layouts"]),
                   ", ".join(f"{r['backbone']} {r['channels_last_speedup']:.2f}×" for r in d["layouts"])),
        lambda v: v > 1.0),
    Row("Ray Train, 1 worker: epoch overhead", "< 10%", "ray_overhead",
        lambda d: (d["ray_epoch_overhead"], f"{100 * d['ray_epoch_overhead']:+.1f}% (start-up "
                                            f"{d['ray_startup_s']:.0f} s once)"), lambda v: v < 0.10),
    Row("PGD-20 curve evaluation: fused λ / one pass per λ", "faster (> 1×)", "evaluation",
        lambda d: (d["pgd20_curve_digits"]["speedup"], f"{d['pgd20_curve_digits']['speedup']:.2f}× digits, "
                   f"{d['pgd20_curve_wrn16_8']['speedup']:.2f}× WRN-16-8"), lambda v: v > 1.0),
    Row("bf16 autocast attack: PGD-20 RA against fp32", "within 0.5 points", "evaluation",
        lambda d: ((v := d["bf16_vs_fp32"]["max_robust_diff_points"]), f"{v:.2f} points (CPU)"), lambda v: v <= 0.5),
    Row("GPU: OAT WRN-16-8 bf16, of the bf16 matmul rate", "≥ 40%", "gpu",
        lambda d: ((v := _gpu_oat(d)["fraction_of_bf16_peak"]), f"{v:.0%}; 200 CIFAR-10 epochs in "
                   f"{_gpu_oat(d)['cifar10_200_epochs_min']:.0f} min ({d['machine'].get('gpu', '?')})"),
        lambda v: v >= 0.40),
    Row("GPU: bf16 attack, PGD-20 RA against fp32", "within 0.5 points", "gpu",
        lambda d: ((v := d["bf16_check"]["max_abs_diff_points"]), f"{v:.2f} points"), lambda v: v <= 0.5),
]


def load(results: Path = RESULTS) -> dict[str, dict]:
    docs = {}
    for f in sorted(results.glob("*.json")):
        try:
            docs[f.stem] = json.loads(f.read_text())
        except json.JSONDecodeError:
            continue
    return docs


def table(results: Path = RESULTS) -> str:
    docs = load(results)
    lines = ["| what | target | measured | met | source (date) |", "| --- | --- | --- | --- | --- |"]
    for row in ROWS:
        doc = docs.get(row.source)
        if doc is None:
            lines.append(f"| {row.what} | {row.target} | not measured | – | {row.source}.json (none) |")
            continue
        try:
            value, text = row.measure(doc)
        except (KeyError, StopIteration, TypeError, ValueError) as exc:
            lines.append(f"| {row.what} | {row.target} | not in {row.source}.json ({type(exc).__name__}) | – | |")
            continue
        date = str(doc.get("date", doc.get("when", "?")))[:10]
        lines.append(f"| {row.what} | {row.target} | {text} | {'yes' if row.ok(value) else '**no**'} | "
                     f"{row.source}.json ({date}) |")
    machines = {d["machine"].get("cpu_model") or d["machine"].get("platform") for d in docs.values()
                if isinstance(d.get("machine"), dict)}
    head = "# Benchmark summary\n\nIssue 9's targets against the latest results in this folder (`.venv/bin/python " \
           "-m benchmarks` reruns the CPU suite; `benchmarks/gpu.sh` the GPU one).\n"
    foot = f"\nMachines: {', '.join(sorted(m for m in machines if m))}.\n" if machines else ""
    return head + "\n" + "\n".join(lines) + "\n" + foot


def main() -> None:
    text = table()
    (RESULTS / "summary.md").write_text(text)
    print(text)
    print(f"wrote {RESULTS / 'summary.md'}")


if __name__ == "__main__":
    main()
