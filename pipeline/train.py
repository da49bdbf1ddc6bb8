"""The training loop: one function for ``oat train`` (one process) and for each Ray Train worker.

Per epoch: a seeded data order and λ draw, one method step per batch (SGD, LR schedule stepped per
epoch), evaluation at the reference cadence, per-(λ, width) best weights, and an atomically written
``latest.pt`` from which a restarted run continues exactly (on CPU: the same losses, bit for bit).

Output folder::

    config.yaml      the resolved job (every default filled in)
    latest.pt        full training state, rewritten atomically after every epoch
    final.pt         the trained model (weights + spec + job)
    best/            best weights per (λ, width) by the validation objective (1-λ)·SA + λ·RA
    history.json     one record per epoch (loss, accuracies, lr, throughput, validation points)
    eval.json        test-split trade-off curve (PGD-<eval.test_steps>), tradeoff.png its plot
    tracking/        with tracking on: the MLflow outbox (what is not yet delivered survives a crash)

Under DDP (:class:`Dist`, set up by :mod:`pipeline.distributed`) ``train.batch_size`` is the global batch:
each rank takes its share of every step's batch and of every λ draw, the method's loss runs inside one
DDP-wrapped module (:class:`TrainStep`) while attacks use the unwrapped network, evaluation is sharded
and its counts summed, and rank 0 alone writes files and hands each epoch's folder to ``Dist.report``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .attacks import PGD
from .checkpoint import FORMAT, CheckpointError, atomic_save, atomic_write_text, load_checkpoint
from .config import JobConfig
from .data import DataSource, open_data
from .data.source import Loader
from .evaluate import (
    Point,
    by_attack,
    evaluate_model,
    headline_attack,
    plot_tradeoff,
    points_table,
    read_points,
    write_points,
)
from .methods import LambdaSampler, oat_step, oats_step, pgdat_step
from .models import ModelSpec, RobustNet, build_model, spec_from_job
from .progress import Progress, fmt_duration
from .tracking import RunInfo, Tracker, finish_tracking, start_tracker, write_encoding

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    out_dir: Path
    history: list[dict[str, Any]]
    test_points: list[Point] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Dist:
    """This process's place in a data-parallel group (the process group is already initialised)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # None: from train.device
    # called on every rank after every epoch with (record, out_dir, final); rank 0's out_dir holds the files
    report: Callable[[dict[str, Any], Path, bool], None] | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA GPU is visible; use train.device=cpu or auto")
    return torch.device(name)


def autocast_for(job: JobConfig, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """bf16 autocast on CUDA when ``train.amp``; a no-op elsewhere."""
    if job.train.amp and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919) % (2**63)


class TrainStep(nn.Module):
    """The method's loss for one (micro-)batch as a module, so that DDP sees exactly one forward per
    backward. The attack inside runs on ``self.net`` itself (unwrapped, frozen, in eval mode)."""

    def __init__(self, net: RobustNet, job: JobConfig, attack: PGD):
        super().__init__()
        self.net = net
        self.method = job.method.name
        self.Lambda = float(job.method.Lambda)
        self.widths = list(job.model.widths or [1.0])
        self.attack = attack

    def forward(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                         dict[str, torch.Tensor]]:
        if self.method == "pgdat":
            r = pgdat_step(self.net, x, y, self.Lambda, self.attack)
        elif self.method == "oat":
            assert lam is not None
            r = oat_step(self.net, x, y, lam, self.attack)
        else:
            assert lam is not None
            r = oats_step(self.net, x, y, lam, self.attack, self.widths)
        return r.loss, r.metrics


def lambda_draws(job: JobConfig, micro: int, rank: int, world: int, accumulate: int
                 ) -> Callable[[torch.Generator], list[torch.Tensor | None]]:
    """Per step, the λ of this rank's micro-batches. Every rank draws the whole step (world × accumulate
    blocks of ``micro`` samples) from the same epoch-seeded generator and keeps its own blocks, so each
    block has its own λ = 0 share and 2 workers see the λ assignment that 1 worker with
    ``accumulate=2`` sees."""
    if job.method.name == "pgdat":
        return lambda g: [None] * accumulate
    sampler = LambdaSampler(job.method.lambda_choices, job.method.zero_fraction)
    lo, hi = rank * accumulate, (rank + 1) * accumulate

    def draw(g: torch.Generator) -> list[torch.Tensor | None]:
        blocks = [sampler(micro, g) for _ in range(world * accumulate)]
        return list(blocks[lo:hi])

    return draw


def eval_due(job: JobConfig, epoch: int) -> bool:
    e = job.train.epochs
    return epoch % job.eval.every == 0 or (job.eval.last_quarter and epoch >= int(0.75 * e)) or epoch == e - 1


def build_optimizer(job: JobConfig, model: nn.Module) -> tuple[torch.optim.Optimizer, Any]:
    o = job.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                          nesterov=o.nesterov)
    sched: Any
    if o.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.train.epochs)
    elif o.schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o.milestones, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


def model_checkpoint(model: RobustNet, job: JobConfig, epoch: int, **extra: Any) -> dict[str, Any]:
    return {"format": FORMAT, "model_spec": model.spec.to_dict(), "state_dict": model.state_dict(),
            "job": job.to_dict(), "epoch": epoch, **extra}


class BestKeeper:
    """Best weights per (λ, width) by the validation objective (1-λ)·SA + λ·RA (λ = 0: SA, λ = 1: RA).

    Files are shared: ``best/epochE.pt`` holds one epoch's weights once however many points it is best
    for, and ``best/index.json`` maps each point to its file. Unreferenced files are removed."""

    def __init__(self, folder: Path, index: dict[str, Any] | None = None):
        self.folder = folder
        self.index: dict[str, Any] = dict(index or {})

    @staticmethod
    def key(lam: float, width: float) -> str:
        return f"lambda={lam:g},width={width:g}"

    def update(self, points: Sequence[Point], epoch: int, model: RobustNet, job: JobConfig) -> list[str]:
        improved = []
        for p in points:
            score = (1 - p.lam) * p.clean_acc + p.lam * p.robust_acc
            k = self.key(p.lam, p.width)
            if k not in self.index or score >= self.index[k]["score"]:
                self.index[k] = {"epoch": epoch, "score": score, "clean_acc": p.clean_acc,
                                 "robust_acc": p.robust_acc, "file": f"epoch{epoch}.pt"}
                improved.append(k)
        if improved:
            atomic_save(model_checkpoint(model, job, epoch), self.folder / f"epoch{epoch}.pt")
            atomic_write_text(json.dumps(self.index, indent=2) + "\n", self.folder / "index.json")
            keep = {v["file"] for v in self.index.values()}
            for f in self.folder.glob("epoch*.pt"):
                if f.name not in keep:
                    f.unlink(missing_ok=True)
        return improved


def _prepare(job: JobConfig, device: torch.device) -> tuple[DataSource, RobustNet]:
    data = open_data(job.data, threads=job.train.threads)
    c, h, w = data.image_shape
    torch.manual_seed(job.train.seed)  # the initial weights are part of the run's definition
    model = build_model(spec_from_job(job, c, data.num_classes, [h, w])).to(device)
    if job.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if job.train.compile:
        compile_model(model)
    return data, model


def compile_model(model: RobustNet, backend: str = "inductor") -> RobustNet:
    """``torch.compile`` the backbone in place (``nn.Module.compile``: parameters and state-dict keys stay as
    they are, so checkpoints are the eager model's). The condition (routes, λ codes) is a plain argument, so
    dynamo guards on it: one graph per route and mode, and shapes go dynamic after the first change."""
    model.backbone.compile(backend=backend, dynamic=None)
    return model


def _check_resumable(ckpt: dict[str, Any], model: RobustNet, job: JobConfig, path: Path) -> None:
    if ckpt.get("kind") != "train":
        raise CheckpointError(f"{path} is not a training checkpoint (no optimiser state to resume from)")
    if ModelSpec.from_dict(ckpt["model_spec"]) != model.spec:
        raise CheckpointError(
            f"{path} belongs to a different model ({ckpt['model_spec']['method']} "
            f"{ckpt['model_spec']['backbone']}); use another --out folder, or --fresh to start over")
    old = ckpt["job"]
    for section in ("method", "attack", "optim"):
        if old.get(section) != job.to_dict()[section]:
            raise CheckpointError(f"{path} was trained with a different '{section}' section; use another "
                                  f"--out folder, or --fresh to start over")


def fit(job: JobConfig, out_dir: str | Path, *, resume: bool = True, progress: bool = True,
        callbacks: Sequence[EpochCallback] = (), final_test: bool = True, label: str = "",
        dist: Dist | None = None, tracking: RunInfo | None = None) -> TrainResult:
    """Train ``job`` into ``out_dir`` (resuming from its ``latest.pt`` when there is one).

    With ``tracking.enabled`` rank 0 reports to MLflow (:mod:`pipeline.tracking`): ``tracking`` is the run
    the launcher began (``oat run``); without it the run is begun here, before any training."""
    dist = dist or Dist()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tracker = start_tracker(job, out, info=tracking, resume=resume) if dist.is_main else None
    try:
        return _fit(job, out, resume=resume, progress=progress, callbacks=callbacks, final_test=final_test,
                    label=label, dist=dist, tracker=tracker)
    except BaseException as exc:
        if tracker is not None:
            tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED", timeout=10)
        raise


def _fetch_init(src: str, job: JobConfig, out: Path) -> Path:
    """``train.init_from``: a file, or an MLflow artifact URI (``runs:/RUN/checkpoints/final.pt``, ``s3://…``)
    that each process fetches itself, so a warm start works on any node."""
    if "://" not in src and not src.startswith(("runs:/", "models:/")):
        return Path(src)
    import mlflow

    from .tracking import resolve_uri

    dest = out / "init"
    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=src, dst_path=str(dest),
                                                    tracking_uri=resolve_uri(job.tracking.uri)))


def _fit(job: JobConfig, out: Path, *, resume: bool, progress: bool, callbacks: Sequence[EpochCallback],
         final_test: bool, label: str, dist: Dist, tracker: Tracker | None) -> TrainResult:
    t_start = time.perf_counter()
    main = dist.is_main
    if job.train.threads:
        torch.set_num_threads(job.train.threads)
    device = dist.device or resolve_device(job.train.device)
    amp = autocast_for(job, device)
    tcfg = job.train
    per_rank, micro = _batch_split(job, dist.world)
    if main:
        atomic_write_text(job.to_yaml(), out / "config.yaml")

    data, model = _prepare(job, device)
    if tracker is not None and not (out / "encoding.json").is_file():
        tracker.log_artifact(write_encoding(model, out / "encoding.json"))
    opt, sched = build_optimizer(job, model)
    history: list[dict[str, Any]] = []
    best = BestKeeper(out / "best")
    start_epoch = 0
    latest = out / "latest.pt"
    if resume and latest.is_file():
        ckpt = load_checkpoint(latest, map_location=device)
        _check_resumable(ckpt, model, job, latest)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        history = list(ckpt["history"])
        best = BestKeeper(out / "best", ckpt.get("best"))
        start_epoch = int(ckpt["epoch"]) + 1
    elif tcfg.init_from:  # a warm start (e.g. `oat retrain` from the champion): weights only, same model
        init = load_checkpoint(_fetch_init(tcfg.init_from, job, out), map_location=device)
        if ModelSpec.from_dict(init["model_spec"]) != model.spec:
            raise CheckpointError(f"train.init_from={tcfg.init_from} holds another model "
                                  f"({init['model_spec']['backbone']}, {init['model_spec']['method']}): "
                                  "a warm start needs the same model spec")
        model.load_state_dict(init["state_dict"])

    if tcfg.batch_size > data.counts["train"]:
        raise ValueError(f"train.batch_size={tcfg.batch_size} is larger than the training split "
                         f"({data.counts['train']} images)")
    train_loader = data.loader("train", per_rank, device=device, train=True, seed=tcfg.seed, rank=dist.rank,
                               world_size=dist.world, channels_last=tcfg.channels_last)
    val_loader = data.loader("val", job.eval.batch_size, device=device, limit=job.eval.max_images,
                             rank=dist.rank, world_size=dist.world, channels_last=tcfg.channels_last)
    attack = PGD.from_config(job.attack)
    val_attack = PGD.from_config(job.attack, job.eval.val_steps)
    stepper: nn.Module = TrainStep(model, job, attack)
    if dist.world > 1:
        # inputs are already on the device (device_ids=None moves nothing); rank 0's BN statistics are
        # broadcast before each forward, so every rank evaluates the same model
        stepper = torch.nn.parallel.DistributedDataParallel(stepper, device_ids=None)
    draws = lambda_draws(job, micro, dist.rank, dist.world, tcfg.accumulate)
    steps = len(train_loader)
    if tcfg.max_steps_per_epoch:
        steps = min(steps, tcfg.max_steps_per_epoch)
    prog = Progress(tcfg.epochs, steps, start_epoch, enabled=progress and main, label=label or job.name)
    if start_epoch:
        prog.message(f"resuming {out} at epoch {start_epoch + 1}/{tcfg.epochs}")
    workers = f", {dist.world} workers × {per_rank}" if dist.world > 1 else ""
    prog.message(f"{job.method.name.upper()} {model.spec.backbone} on {data.name} "
                 f"({data.counts['train']} train / {data.counts['val']} val images, {steps} steps/epoch of "
                 f"{tcfg.batch_size}{workers}, {data.kind} loader, {device})")
    reduce = (lambda t: all_reduce_sum(t, dist)) if dist.world > 1 else None
    bn_stats = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                for b in m.buffers()] if tcfg.accumulate > 1 else []

    for epoch in range(start_epoch, tcfg.epochs):
        record = _train_epoch(job, stepper, opt, train_loader, draws, epoch, steps, prog, amp, dist, bn_stats)
        record["lr"] = opt.param_groups[0]["lr"]
        sched.step()
        if eval_due(job, epoch):
            pts = evaluate_model(model, val_loader, job.eval.lambdas or [], job.eval.widths or [1.0],
                                 val_attack, amp, reduce=reduce,
                                 fuse=job.eval.fuse_lambdas)
            record["val"] = [p.to_dict() for p in pts]
            if main:
                record["best_updated"] = best.update(pts, epoch, model, job)
            prog.message(_val_line(epoch, pts))
        history.append(record)
        if main:
            atomic_save(model_checkpoint(model, job, epoch, kind="train", optimizer=opt.state_dict(),
                                         scheduler=sched.state_dict(), history=history, best=best.index), latest)
            atomic_write_text(json.dumps(history, indent=1) + "\n", out / "history.json")
        if tracker is not None:
            tracker.log_epoch(record)
        if dist.report is not None and epoch < tcfg.epochs - 1:
            dist.report(record, out, False)
        for cb in callbacks:
            cb(record)

    if main:
        final = model_checkpoint(model, job, tcfg.epochs - 1, kind="final",
                                 val=history[-1].get("val") if history else None)
        atomic_save(final, out / "final.pt")
    result = TrainResult(out, history)
    if final_test:
        if start_epoch >= tcfg.epochs and (out / "eval.json").is_file():
            result.test_points = read_points(out / "eval.json")  # a finished run, resubmitted
        else:
            result.test_points = test_model(model, job, data, device, out, amp=amp, progress=prog, dist=dist)
    if tracker is not None:  # before the last report, so that Ray's final checkpoint holds the delivered outbox
        finish_tracking(tracker, job, out, result.test_points, tcfg.epochs)
    if dist.report is not None:  # the last epoch's checkpoint: with final.pt (and the test curve)
        dist.report(history[-1] if history else {}, out, True)
    result.seconds = time.perf_counter() - t_start
    prog.message(f"done in {fmt_duration(result.seconds)}: {out}")
    return result


def _batch_split(job: JobConfig, world: int) -> tuple[int, int]:
    """(per-rank batch, micro-batch) of the global ``train.batch_size``; both BNs need data in every
    micro-batch under DDP, or DDP would find parameters without gradients."""
    b, acc = job.train.batch_size, job.train.accumulate
    if b % (world * acc):
        raise ValueError(f"train.batch_size={b} must divide evenly over {world} worker(s) × "
                         f"train.accumulate={acc}; use a multiple of {world * acc}")
    per_rank = b // world
    micro = per_rank // acc
    if world > 1 and job.method.name != "pgdat":
        n0 = LambdaSampler(job.method.lambda_choices, job.method.zero_fraction).n_zero(micro)
        if job.model.use2BN and not 0 < n0 < micro:
            raise ValueError(f"a micro-batch of {micro} images holds {n0} at λ = 0: each rank needs samples at "
                             "λ = 0 and λ > 0 for both batch norms; raise train.batch_size")
    return per_rank, micro


def _train_epoch(job: JobConfig, stepper: nn.Module, opt: torch.optim.Optimizer, loader: Loader,
                 draws: Callable[[torch.Generator], list[torch.Tensor | None]], epoch: int, steps: int,
                 prog: Progress, amp: Callable[[], contextlib.AbstractContextManager], dist: Dist,
                 bn_stats: Sequence[torch.Tensor] = ()) -> dict[str, Any]:
    """One epoch. With ``train.accumulate = k`` each micro-batch runs as one of k DDP ranks would: from the
    step's starting BN running statistics (which the attack's eval-mode forwards read), and the step ends
    with the first micro-batch's statistics (DDP keeps rank 0's)."""
    seed = epoch_seed(job.train.seed, epoch)
    gen = torch.Generator().manual_seed(seed + 1)  # λ draws: the same stream on every rank
    loader.set_epoch(epoch)
    stepper.train()
    prog.start_epoch_(epoch)
    acc = job.train.accumulate
    no_sync = getattr(stepper, "no_sync", None)
    sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    images = 0
    wait = 0.0  # host time spent waiting for the next batch
    batches = _take(loader, steps)
    i = 0
    while True:
        tw = time.perf_counter()
        batch = next(batches, None)
        wait += time.perf_counter() - tw
        if batch is None:
            break
        x, y = batch
        i += 1
        lams = draws(gen)
        opt.zero_grad(set_to_none=True)
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
                with amp():
                    loss, metrics = stepper(xm, ym, lams[j])
                (loss / acc if acc > 1 else loss).backward()
            for k, v in metrics.items():
                sums[k] = v if k not in sums else sums[k] + v
        for t, v in zip(bn_stats, first):
            t.copy_(v)
        opt.step()
        images += int(y.numel())
        if prog.enabled:
            prog.step(i, float(sums["loss"]) / max(int(sums["n"]), 1), images / (time.perf_counter() - t0))
    seconds = time.perf_counter() - t0
    keys = sorted(sums)
    if dist.world > 1 and keys:  # one collective per epoch: the metrics of every rank
        summed = all_reduce_sum(torch.stack([sums[k].double() for k in keys]), dist)
        sums = dict(zip(keys, summed.unbind()))
    vals = {k: float(v) for k, v in sums.items()}  # one host sync per epoch
    n = max(vals.get("n", 0.0), 1.0)
    images *= dist.world
    rec: dict[str, Any] = {"epoch": epoch, "loss": vals.get("loss", 0.0) / n, "seconds": seconds,
                           "images_per_s": images / seconds if seconds else 0.0, "steps": i,
                           "data_wait_s": wait, "data_wait_share": wait / seconds if seconds else 0.0}
    if "n_clean" in vals:
        rec["train_clean_acc"] = vals["clean_correct"] / max(vals["n_clean"], 1.0)
    if "n_adv" in vals:
        rec["train_adv_acc"] = vals["adv_correct"] / max(vals["n_adv"], 1.0)
    return rec


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


def _test_attacks(model: RobustNet, job: JobConfig, data: DataSource, device: torch.device, attacks: Sequence[str],
                  lambdas: Sequence[float], dist: Dist, progress: Progress | None) -> list[Point]:
    """AutoAttack (or its components) on the test split: each rank attacks its shard, counts are summed."""
    from .robustness import AttackSpec, evaluate_attacks, load_test_tensors

    loader = data.loader("test", job.eval.batch_size, device=device, limit=job.eval.max_images,
                         rank=dist.rank, world_size=dist.world)
    x, y = load_test_tensors(loader)
    specs = [AttackSpec(a, job.attack.norm, job.attack.eps, seed=job.train.seed) for a in attacks]
    log = progress.message if progress is not None and dist.is_main else (lambda _m: None)
    ev = evaluate_attacks(model, x, y, lambdas, job.eval.widths or [1.0], specs, batch_size=job.eval.batch_size,
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
        pts += _test_attacks(model, job, data, device, extra, lambdas, dist, progress)
    if not dist.is_main:
        return pts
    write_points(pts, out / "eval.json", {"split": "test", "dataset": data.name, "attack_settings":
                                          attack.describe(), "job": job.name})
    head = headline_attack(pts)
    plot_tradeoff({job.method.name.upper(): by_attack(pts, head)}, out / "tradeoff.png",
                  title=f"{job.name} on {data.name} (test)")
    if progress is not None:
        progress.message(points_table(pts, f"test split, {pts[0].n if pts else 0} images"))
    return pts
