"""The test-split trade-off curve a finished run reports: SA and RA per (λ, width), eval.json and its plot.

PGD-<eval.test_steps> at every point, plus the strong attacks of ``eval.test_attacks`` (AutoAttack or its
components) where the job asks; under DDP every rank attacks its shard and the counts are summed.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from pipeline.config import JobConfig
from pipeline.data import DataSource
from pipeline.science.attacks import PGD
from pipeline.science.curves import (
    Point,
    by_attack,
    check_points,
    evaluate_model,
    flag_lines,
    headline_attack,
    plot_tradeoff,
    points_table,
    write_points,
)
from pipeline.science.methods import get_method
from pipeline.science.model import RobustNet
from pipeline.science.robustness import AttackSpec, evaluate_attacks, load_test_tensors
from pipeline.training.ddp import Dist, all_reduce_sum
from pipeline.training.progress import Progress


def test_attacks(model: RobustNet, job: JobConfig, data: DataSource, device: torch.device, attacks: Sequence[str],
                  lambdas: Sequence[float], dist: Dist, progress: Progress | None) -> list[Point]:
    """AutoAttack (or its components) on the test split: each rank attacks its shard, counts are summed."""
    loader = data.loader("test", job.eval.batch_size, device=device, limit=job.eval.max_images,
                         rank=dist.rank, world_size=dist.world)
    x, y = load_test_tensors(loader)
    specs = [AttackSpec(a, job.attack.norm, job.attack.eps, seed=job.train.seed) for a in attacks]
    log = progress.message if progress is not None and dist.is_main else (lambda _m: None)
    widths = job.eval.strong_widths or job.eval.widths or [1.0]
    ev = evaluate_attacks(model, x, y, lambdas, widths, specs, batch_size=job.eval.batch_size,
                          log=log)
    model.eval()
    local = ev.points  # counts add up over shards, the per-image worst case included
    counts = torch.tensor([[round(p.clean_acc * p.n), round(p.robust_acc * p.n), p.n] for p in local],
                          dtype=torch.long, device=device)
    table = all_reduce_sum(counts, dist).tolist()
    return [dataclasses.replace(p, clean_acc=c / max(n, 1), robust_acc=r / max(n, 1), n=n)
            for p, (c, r, n) in zip(local, table)]



def test_model(model: RobustNet, job: JobConfig, data: DataSource, device: torch.device, out: Path, *,
               amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
               progress: Progress | None = None, dist: Dist | None = None) -> list[Point]:
    """The test-split trade-off curve with PGD-<eval.test_steps>: eval.json, tradeoff.png, a table (on rank 0;
    under DDP every rank attacks its shard of the test split)."""
    dist = dist or Dist()
    loader = data.loader("test", job.eval.batch_size, device=device, limit=job.eval.max_images,
                         rank=dist.rank, world_size=dist.world)
    attack = PGD.from_config(job.attack, job.eval.test_steps)
    lambdas = job.eval.lambdas or job.lambdas
    reduce = (lambda t: all_reduce_sum(t, dist)) if dist.world > 1 else None
    pts = evaluate_model(model, loader, lambdas, job.eval.widths or [1.0], attack, amp, reduce=reduce,
                         fuse=job.eval.fuse_lambdas)
    extra = [a for a in job.eval.test_attacks if a != "pgd"]
    if extra:
        pts += test_attacks(model, job, data, device, extra, lambdas, dist, progress)
    shares = top_class_shares(model, loader, lambdas, job.eval.widths or [1.0], dist)
    if not dist.is_main:
        return pts
    flags = check_points(pts, shares)
    write_points(pts, out / "eval.json", {"split": "test", "dataset": data.name, "attack_settings":
                                          attack.describe(), "job": job.name, "flags": flags})
    head = headline_attack(pts)
    plot_tradeoff({get_method(job.method.name).label: by_attack(pts, head)}, out / "tradeoff.png",
                  title=f"{job.name} on {data.name} (test)")
    if progress is not None:
        progress.message(points_table(pts, f"test split, {pts[0].n if pts else 0} images"))
        for line in flag_lines(flags):
            progress.message(line + " — a failed point, not a result (it is never registered as champion)")
    return pts


@torch.no_grad()
def top_class_shares(model: RobustNet, loader: Any, lambdas: Sequence[float], widths: Sequence[float],
                     dist: Dist) -> dict[tuple[float, float], float]:
    """Per (λ, width): the largest share of the test images that the model predicts as one class."""
    model.eval()
    k = int(model.spec.num_classes)
    keys = [(float(lam), float(w)) for w in widths for lam in lambdas]
    counts: torch.Tensor | None = None
    for x, _ in loader:
        preds = [model(x, model.condition(lam, w)).argmax(1) for lam, w in keys]
        batch = torch.stack([torch.bincount(p, minlength=k) for p in preds])
        counts = batch if counts is None else counts + batch
    if counts is None:
        return {}
    counts = all_reduce_sum(counts, dist)
    return {key: float(c.max()) / max(float(c.sum()), 1.0) for key, c in zip(keys, counts)}

