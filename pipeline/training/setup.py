"""What a run is built from: the device, the data and model, the optimiser and its schedule.

Functions of the job only; the loop (:mod:`pipeline.training.loop`) calls them in this order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pipeline.config import JobConfig
from pipeline.data import DataSource, open_data
from pipeline.science.methods import get_method
from pipeline.science.model import ModelSpec, RobustNet, build_model


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


def build_optimizer(job: JobConfig, model: nn.Module, steps_per_epoch: int = 1) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and its LR schedule; :func:`per_step_schedule` says whether the schedule steps per batch
    (onecycle, over ``train.epochs × steps_per_epoch`` steps) or per epoch (the others)."""
    o = job.optim
    opt: torch.optim.Optimizer
    if o.name == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                              nesterov=o.nesterov)
    sched: Any
    if o.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=o.lr, total_steps=job.train.epochs * steps_per_epoch)
    elif o.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=job.train.epochs)
    elif o.schedule == "multistep":
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=o.milestones, gamma=0.1)
    else:
        sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)
    return opt, sched


def per_step_schedule(job: JobConfig) -> bool:
    return job.optim.schedule == "onecycle"


def epoch_eps(job: JobConfig, epoch: int) -> float:
    """The training attack's ε at ``epoch``: the full ε, or its linear warm-up (``attack.warmup_epochs``)."""
    w = job.attack.warmup_epochs
    return float(job.attack.eps) * (min(1.0, (epoch + 1) / w) if w else 1.0)


def prepare(job: JobConfig, device: torch.device) -> tuple[DataSource, RobustNet]:
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


def spec_from_job(job: Any, in_channels: int, num_classes: int, input_size: Sequence[int]) -> ModelSpec:
    """The model a job trains. ``job`` is a resolved :class:`pipeline.config.JobConfig`."""
    m, meth = job.model, job.method
    oat = get_method(meth.name).conditioned
    return ModelSpec(
        backbone=m.backbone,
        in_channels=int(in_channels),
        num_classes=int(num_classes),
        input_size=[int(s) for s in input_size],
        method=meth.name,
        lambdas=list(job.lambdas),
        widths=list(m.widths),
        film=oat,
        dual_bn=oat and m.use2BN,  # resolve() turned use2BN off where there is no BN to pair
        batch_norm=m.batch_norm,
        clean_bn=oat and m.use2BN and m.clean_bn and not m.batch_norm,
        encoding=m.encoding if oat else "none",
        dim=m.dim if oat else 1,
        encoding_seed=m.encoding_seed,
        channels=m.channels,
        blocks=m.blocks,
        depth=m.depth,
        widen=m.widen,
        dropout=float(m.dropout or 0.0),
    )
