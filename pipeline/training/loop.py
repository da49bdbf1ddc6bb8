"""The training loop: one function, :func:`fit`, for ``oat train`` (one process), each Ray Train worker and
each Ray Tune trial.

Per epoch: a seeded data order and λ draw, one method step per batch (SGD, LR schedule stepped per
epoch), evaluation at the reference cadence, per-(λ, width) best weights, and an atomically written
``latest.pt`` from which a restarted run continues exactly (on CPU: the same losses, bit for bit).
The loop's only way out is its callbacks (:mod:`pipeline.training.callbacks`): it knows nothing of
Ray or MLflow.

Output folder::

    config.yaml      the resolved job (every default filled in)
    latest.pt        full training state, rewritten atomically after every epoch
    final.pt         the trained model (weights + spec + job)
    best/            best weights per (λ, width) by the validation objective (1-λ)·SA + λ·RA
    history.json     one record per epoch (loss, accuracies, lr, throughput, validation points)
    eval.json        test-split trade-off curve (PGD-<eval.test_steps>), tradeoff.png its plot

Under DDP (:class:`~pipeline.training.ddp.Dist`, set up by the launcher) ``train.batch_size`` is the global
batch; rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.data import DataSource
from pipeline.data.source import Loader
from pipeline.files import atomic_save, atomic_write_text
from pipeline.science.attacks import PGD
from pipeline.science.curves import Point, evaluate_model, read_points
from pipeline.science.methods import StepParams, get_method
from pipeline.science.model import RobustNet
from pipeline.science.sampling import lambda_draws
from pipeline.training.best import BestKeeper
from pipeline.training.callbacks import Callback, Callbacks, RunContext, TrainResult
from pipeline.training.checkpoint import init_path, model_checkpoint, restore, train_state
from pipeline.training.curve import test_model
from pipeline.training.ddp import Dist, TrainStep, all_reduce_sum
from pipeline.training.progress import Progress, fmt_duration
from pipeline.training.setup import (
    autocast_for,
    build_optimizer,
    epoch_eps,
    per_step_schedule,
    prepare,
    resolve_device,
)

Draws = Callable[[torch.Generator], list[torch.Tensor | None]]
Amp = Callable[[], contextlib.AbstractContextManager]


def fit(job: JobConfig, out: str | Path, callbacks: Sequence[Callback] = (), *, resume: bool = True,
        progress: bool = True, final_test: bool = True, label: str = "", dist: Dist | None = None,
        init: str | Path | None = None) -> TrainResult:
    """Train ``job`` into the folder ``out`` and return its history and test curve.

    Args:
        job: the resolved job (:func:`pipeline.config.load_job`).
        out: the run folder; created if missing. With ``resume`` and a ``latest.pt`` there, training
            continues from it (a finished run is not trained again).
        callbacks: called at start, after every epoch, at the end and on failure, in order, on every rank
            (MLflow tracking and the Ray report are callbacks; the loop imports neither).
        resume: False ignores an existing ``latest.pt`` (``oat train --fresh``).
        progress: print progress lines (epoch, step, loss, throughput, ETA) on rank 0.
        final_test: evaluate the test-split trade-off curve (``eval.json``) after the last epoch.
        label: the progress lines' prefix (default: the job's name).
        dist: this process's place in a data-parallel group (default: one process).
        init: the local file of ``train.init_from`` once the launcher fetched it (a URI cannot be read here).
    """
    dist = dist or Dist()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    cbs = Callbacks(callbacks)
    t0 = time.perf_counter()
    try:
        run = _build(job, run_dir, dist, resume=resume, progress=progress, label=label, init=init_path(job, init))
        cbs.on_start(run.ctx)
        for epoch in range(run.start_epoch, job.train.epochs):
            record = _epoch(run, epoch)
            cbs.on_epoch_end(run.ctx, record, epoch == job.train.epochs - 1)
        result = _finish(run, final_test)
        result.seconds = time.perf_counter() - t0
        cbs.on_end(run.ctx, result)
        run.prog.message(f"done in {fmt_duration(result.seconds)}: {run_dir}")
        return result
    except BaseException as exc:
        cbs.on_error(exc)
        raise


@dataclass
class _Run:
    """Everything an epoch needs, built once by :func:`_build`."""

    job: JobConfig
    out: Path
    dist: Dist
    device: torch.device
    amp: Amp
    data: DataSource
    model: RobustNet
    opt: torch.optim.Optimizer
    sched: Any
    step: TrainStep  # the method's step (``stepper`` is it, or its DDP wrapper)
    stepper: nn.Module
    draws: Draws
    train_loader: Loader
    val_loader: Loader
    val_attack: PGD
    steps: int
    prog: Progress
    ctx: RunContext
    history: list[dict[str, Any]]
    best: BestKeeper
    start_epoch: int
    bn_stats: list[torch.Tensor]


def _build(job: JobConfig, out: Path, dist: Dist, *, resume: bool, progress: bool, label: str,
           init: Path | None) -> _Run:
    if job.train.threads:
        torch.set_num_threads(job.train.threads)
    device = dist.device or resolve_device(job.train.device)
    per_rank, micro = batch_split(job, dist.world)
    if dist.is_main:
        atomic_write_text(job.to_yaml(), out / "config.yaml")
    data, model = prepare(job, device)
    if job.train.batch_size > data.counts["train"]:
        raise ValueError(f"train.batch_size={job.train.batch_size} is larger than the training split "
                         f"({data.counts['train']} images)")
    tcfg = job.train
    train_loader = data.loader("train", per_rank, device=device, train=True, seed=tcfg.seed, rank=dist.rank,
                               world_size=dist.world, channels_last=tcfg.channels_last)
    val_loader = data.loader("val", job.eval.batch_size, device=device, limit=job.eval.max_images,
                             rank=dist.rank, world_size=dist.world, channels_last=tcfg.channels_last)
    steps = min(len(train_loader), tcfg.max_steps_per_epoch or len(train_loader))
    opt, sched = build_optimizer(job, model, steps)
    state = restore(out, model, job, opt, sched, device, resume=resume, init=init)
    method = get_method(job.method.name)
    step = TrainStep(model, method, StepParams(float(job.method.Lambda), list(job.model.widths or [1.0])),
                     PGD.from_config(job.attack))
    stepper: nn.Module = step
    if dist.world > 1:
        # inputs are already on the device (device_ids=None moves nothing); rank 0's BN statistics are
        # broadcast before each forward, so every rank evaluates the same model
        stepper = torch.nn.parallel.DistributedDataParallel(stepper, device_ids=None)
    draws = lambda_draws(method.sampler(job.method.lambda_choices, job.method.zero_fraction), micro, dist.rank,
                         dist.world, tcfg.accumulate)
    prog = Progress(tcfg.epochs, steps, state.start_epoch, enabled=progress and dist.is_main,
                    label=label or job.name)
    bn_stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for b in m.buffers()] if tcfg.accumulate > 1 else []
    run = _Run(job, out, dist, device, autocast_for(job, device), data, model, opt, sched, step, stepper, draws,
               train_loader, val_loader, PGD.from_config(job.attack, job.eval.val_steps), steps, prog,
               RunContext(job, out, model, dist.rank, dist.world, state.start_epoch, list(state.history),
                          data.as_input()),
               state.history,
               BestKeeper(out / "best", state.best), state.start_epoch, bn_stats)
    _announce(run, per_rank)
    return run


def _announce(run: _Run, per_rank: int) -> None:
    job, data, dist = run.job, run.data, run.dist
    if run.start_epoch:
        run.prog.message(f"resuming {run.out} at epoch {run.start_epoch + 1}/{job.train.epochs}")
    workers = f", {dist.world} workers × {per_rank}" if dist.world > 1 else ""
    run.prog.message(f"{get_method(job.method.name).label} {run.model.spec.backbone} on {data.name} "
                     f"({data.counts['train']} train / {data.counts['val']} val images, {run.steps} steps/epoch "
                     f"of {job.train.batch_size}{workers}, {data.kind} loader, {run.device})")


def batch_split(job: JobConfig, world: int) -> tuple[int, int]:
    """(per-rank batch, micro-batch) of the global ``train.batch_size``; both BNs need data in every
    micro-batch under DDP, or DDP would find parameters without gradients."""
    b, acc = job.train.batch_size, job.train.accumulate
    if b % (world * acc):
        raise ValueError(f"train.batch_size={b} must divide evenly over {world} worker(s) × "
                         f"train.accumulate={acc}; use a multiple of {world * acc}")
    per_rank = b // world
    micro = per_rank // acc
    sampler = get_method(job.method.name).sampler(job.method.lambda_choices, job.method.zero_fraction)
    if world > 1 and sampler is not None and job.model.use2BN:
        n0 = sampler.n_zero(micro)
        if not 0 < n0 < micro:
            raise ValueError(f"a micro-batch of {micro} images holds {n0} at λ = 0: each rank needs samples at "
                             "λ = 0 and λ > 0 for both batch norms; raise train.batch_size")
    return per_rank, micro


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


def eval_due(job: JobConfig, epoch: int) -> bool:
    e = job.train.epochs
    return epoch % job.eval.every == 0 or (job.eval.last_quarter and epoch >= int(0.75 * e)) or epoch == e - 1


def _epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch, validate when due, write ``latest.pt`` and ``history.json`` (rank 0)."""
    job = run.job
    run.step.attack = PGD.from_config(job.attack, eps=epoch_eps(job, epoch))
    record = _train_epoch(run, epoch)
    record["lr"] = run.opt.param_groups[0]["lr"]
    if job.attack.warmup_epochs:
        record["train_eps"] = run.step.attack.eps
    if not per_step_schedule(job):
        run.sched.step()
    if eval_due(job, epoch):
        reduce = (lambda t: all_reduce_sum(t, run.dist)) if run.dist.world > 1 else None
        pts = evaluate_model(run.model, run.val_loader, job.eval.lambdas or [], job.eval.widths or [1.0],
                             run.val_attack, run.amp, reduce=reduce, fuse=job.eval.fuse_lambdas)
        record["val"] = [p.to_dict() for p in pts]
        if run.dist.is_main:
            record["best_updated"] = run.best.update(pts, epoch, run.model, job)
        run.prog.message(_val_line(epoch, pts))
    run.history.append(record)
    if run.dist.is_main:
        atomic_save(train_state(run.model, job, epoch, run.opt, run.sched, run.history, run.best.index),
                    run.out / "latest.pt")
        atomic_write_text(json.dumps(run.history, indent=1) + "\n", run.out / "history.json")
    return record


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    seed = epoch_seed(run.job.train.seed, epoch)
    gen = torch.Generator().manual_seed(seed + 1)  # λ draws: the same stream on every rank
    run.train_loader.set_epoch(epoch)
    run.stepper.train()
    run.prog.start_epoch_(epoch)
    sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    images, i = 0, 0
    wait = 0.0  # host time spent waiting for the next batch
    batches = _take(run.train_loader, run.steps)
    while True:
        tw = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - tw
        if batch is None:
            break
        i += 1
        _step(run, batch, run.draws(gen), seed, i, sums)
        images += int(batch[1].numel())
        if run.prog.enabled:
            run.prog.step(i, float(sums["loss"]) / max(int(sums["n"]), 1), images / (time.perf_counter() - t0))
    return _epoch_record(run, epoch, sums, time.perf_counter() - t0, images * run.dist.world, i, wait)


def _step(run: _Run, batch: tuple[torch.Tensor, torch.Tensor], lams: list[torch.Tensor | None], seed: int, i: int,
          sums: dict[str, torch.Tensor]) -> None:
    """One optimiser step. With ``train.accumulate = k`` each micro-batch runs as one of k DDP ranks would: from
    the step's starting BN running statistics (which the attack's eval-mode forwards read), and the step ends
    with the first micro-batch's statistics (DDP keeps rank 0's)."""
    x, y = batch
    acc, dist, bn_stats = run.job.train.accumulate, run.dist, run.bn_stats
    no_sync = getattr(run.stepper, "no_sync", None)
    run.opt.zero_grad(set_to_none=True)
    start = [t.clone() for t in bn_stats]
    first: list[torch.Tensor] = []
    for j, (xm, ym) in enumerate(zip(x.chunk(acc), y.chunk(acc)) if acc > 1 else [(x, y)]):
        if j == 1:
            first = [t.clone() for t in bn_stats]
        if j >= 1:
            for t, v in zip(bn_stats, start):
                t.copy_(v)
        sync = contextlib.nullcontext() if (no_sync is None or j == acc - 1) else no_sync()
        # dropout and PGD random starts: seeded by the global micro-batch index, so W workers and
        # 1 worker with accumulate=W draw the same numbers for the same samples
        torch.manual_seed((seed + 104_729 * ((i - 1) * dist.world * acc + dist.rank * acc + j)) % (2**63))
        with sync:
            with run.amp():
                loss, metrics = run.stepper(xm, ym, lams[j])
            (loss / acc if acc > 1 else loss).backward()
        for k, v in metrics.items():
            sums[k] = v if k not in sums else sums[k] + v
    for t, v in zip(bn_stats, first):
        t.copy_(v)
    run.opt.step()
    if per_step_schedule(run.job):
        run.sched.step()


def _epoch_record(run: _Run, epoch: int, sums: dict[str, torch.Tensor], seconds: float, images: int, steps: int,
                  wait: float) -> dict[str, Any]:
    keys = sorted(sums)
    if run.dist.world > 1 and keys:  # one collective per epoch: the metrics of every rank
        summed = all_reduce_sum(torch.stack([sums[k].double() for k in keys]), run.dist)
        sums = dict(zip(keys, summed.unbind()))
    vals = {k: float(v) for k, v in sums.items()}  # one host sync per epoch
    n = max(vals.get("n", 0.0), 1.0)
    rec: dict[str, Any] = {"epoch": epoch, "loss": vals.get("loss", 0.0) / n, "seconds": seconds,
                           "images_per_s": images / seconds if seconds else 0.0, "steps": steps,
                           "data_wait_s": wait, "data_wait_share": wait / seconds if seconds else 0.0}
    if "n_clean" in vals:
        rec["train_clean_acc"] = vals["clean_correct"] / max(vals["n_clean"], 1.0)
    if "n_adv" in vals:
        rec["train_adv_acc"] = vals["adv_correct"] / max(vals["n_adv"], 1.0)
    return rec


def _finish(run: _Run, final_test: bool) -> TrainResult:
    """``final.pt`` and the test curve (read back for a finished run that was submitted again)."""
    job, out = run.job, run.out
    if run.dist.is_main:
        final = model_checkpoint(run.model, job, job.train.epochs - 1, kind="final",
                                 val=run.history[-1].get("val") if run.history else None)
        atomic_save(final, out / "final.pt")
    result = TrainResult(out, run.history)
    if final_test:
        if run.start_epoch >= job.train.epochs and (out / "eval.json").is_file():
            result.test_points = read_points(out / "eval.json")
        else:
            result.test_points = test_model(run.model, job, run.data, run.device, out, amp=run.amp, progress=run.prog,
                                            dist=run.dist)
    return result


def _take(loader: Loader, steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    it = iter(loader)
    try:
        for _ in range(steps):
            batch = next(it, None)
            if batch is None:
                return
            yield batch
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()  # a generator loader releases its resources (FFCV: its background thread) now


def _val_line(epoch: int, pts: Sequence[Point]) -> str:
    cells = "  ".join(f"λ={p.lam:g}{'' if p.width == 1.0 else f'/w={p.width:g}'}: {100 * p.clean_acc:.1f}/"
                      f"{100 * p.robust_acc:.1f}" for p in pts)
    return f"epoch {epoch + 1} val SA/RA (PGD-{pts[0].steps if pts else 0}) {cells}"
