"""One training step per method, as plain functions of (model, batch, λ, attack).

They know nothing of Ray or MLflow: each returns the loss to back-propagate and detached metric
tensors (summed, with their counts, so that no value is pulled to the host inside the step).

* PGDAT: ``(1-Λ)·mean CE(clean) + Λ·mean CE(adv)`` for one fixed Λ; Λ = 0 is standard training.
* OAT: per-sample λ; the clean forward takes the whole batch (BN routed per sample), PGD and the
  adversarial forward only the λ > 0 samples; loss = mean over the batch of (1-λ)·CE_c + λ·CE_a.
* OATS: the OAT loss averaged over the widths, each width attacking with its own subnetwork.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .models import RobustNet

Attack = Callable[..., Tensor]


@dataclass
class StepResult:
    loss: Tensor  # the scalar to back-propagate
    metrics: dict[str, Tensor]  # detached sums; "n_*" keys are their counts


class LambdaSampler:
    """The reference's element-wise sampler: the first ceil(B·f) samples get λ = 0, the rest a λ drawn
    uniformly from the non-zero choices. Under data parallelism every worker samples its own shard, so
    each keeps its own λ = 0 share and both BNs see data on every rank."""

    def __init__(self, choices: Sequence[float], zero_fraction: float | None = None,
                 generator: torch.Generator | None = None):
        self.choices = [float(c) for c in choices]
        self.nonzero = torch.tensor([c for c in self.choices if c != 0.0], dtype=torch.float64)
        self.zero_fraction = 1.0 / len(self.choices) if zero_fraction is None else float(zero_fraction)
        self.generator = generator

    def n_zero(self, batch_size: int) -> int:
        # round away float noise before ceil: 128/6 -> 22, 120·(1/6) -> 20 (not 21)
        return min(batch_size, math.ceil(round(batch_size * self.zero_fraction, 9)))

    def __call__(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        n0 = self.n_zero(batch_size)
        gen = generator if generator is not None else self.generator
        idx = torch.randint(len(self.nonzero), (batch_size - n0,), generator=gen)
        return torch.cat([torch.zeros(n0, dtype=torch.float64), self.nonzero[idx]])


def _ce_metrics(prefix: str, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    return {f"{prefix}_correct": (logits.detach().argmax(1) == y).sum(), f"n_{prefix}": torch.tensor(y.numel())}


def pgdat_step(model: RobustNet, x: Tensor, y: Tensor, Lambda: float, attack: Attack,
               width: float | None = None) -> StepResult:
    cond = model.condition(Lambda, width)
    logits = model(x, cond)
    loss_c = F.cross_entropy(logits, y)
    metrics = {"loss_clean": loss_c.detach() * y.numel(), **_ce_metrics("clean", logits, y)}
    if Lambda == 0:
        loss = loss_c
    else:
        x_adv = attack(model, x, y, cond)
        logits_adv = model(x_adv, cond)
        loss_a = F.cross_entropy(logits_adv, y)
        loss = (1.0 - Lambda) * loss_c + Lambda * loss_a
        metrics.update({"loss_adv": loss_a.detach() * y.numel(), **_ce_metrics("adv", logits_adv, y)})
    metrics["loss"] = loss.detach() * y.numel()
    metrics["n"] = torch.tensor(y.numel())
    return StepResult(loss, metrics)


def oat_step(model: RobustNet, x: Tensor, y: Tensor, lam: Tensor, attack: Attack,
             width: float | None = None) -> StepResult:
    """``lam``: per-sample λ on the CPU (the sampler's output)."""
    b = y.numel()
    lam_cpu = lam.detach().cpu().double()
    lam_dev = lam_cpu.to(x.device, x.dtype if x.is_floating_point() else torch.float32, non_blocking=True)
    logits = model(x, model.condition(lam_cpu, width))
    ce_c = F.cross_entropy(logits, y, reduction="none")
    total_c = ((1.0 - lam_dev) * ce_c).sum()
    metrics = {"loss_clean": ce_c.detach().sum(), **_ce_metrics("clean", logits, y)}
    adv = lam_cpu > 0
    n_adv = int(adv.sum())
    total_a = total_c.new_zeros(())
    if n_adv:
        n0 = b - n_adv
        if bool(adv[n0:].all()):  # the sampler's layout: λ > 0 is a suffix, so views, not copies
            x_a, y_a, lam_a, lam_a_dev = x[n0:], y[n0:], lam_cpu[n0:], lam_dev[n0:]
        else:
            idx = adv.nonzero().flatten().to(x.device)
            x_a, y_a, lam_a, lam_a_dev = x[idx], y[idx], lam_cpu[adv], lam_dev[idx]
        cond_a = model.condition(lam_a, width)
        x_adv = attack(model, x_a, y_a, cond_a)
        logits_adv = model(x_adv, cond_a)
        ce_a = F.cross_entropy(logits_adv, y_a, reduction="none")
        total_a = (lam_a_dev * ce_a).sum()
        metrics.update({"loss_adv": ce_a.detach().sum(), **_ce_metrics("adv", logits_adv, y_a)})
    loss = (total_c + total_a) / b
    metrics["loss"] = loss.detach() * b
    metrics["n"] = torch.tensor(b)
    return StepResult(loss, metrics)


def oats_step(model: RobustNet, x: Tensor, y: Tensor, lam: Tensor, attack: Attack,
              widths: Sequence[float] | None = None) -> StepResult:
    """L = (1/|W|)·Σ_α OAT loss of the α-subnetwork; one optimiser step for the sum."""
    ws = list(widths) if widths is not None else list(model.widths)
    loss: Tensor | None = None
    metrics: dict[str, Tensor] = {}
    for w in ws:
        r = oat_step(model, x, y, lam, attack, width=w)
        loss = r.loss / len(ws) if loss is None else loss + r.loss / len(ws)
        for k, v in r.metrics.items():
            metrics[f"{k}@w{w:g}"] = v
            if not k.startswith("n"):
                metrics[k] = metrics.get(k, torch.zeros_like(v)) + v / len(ws)
    assert loss is not None
    metrics["loss"] = loss.detach() * y.numel()
    metrics["n"] = torch.tensor(y.numel())
    for k in ("n_clean", "n_adv"):
        if f"{k}@w{ws[-1]:g}" in metrics:
            metrics[k] = metrics[f"{k}@w{ws[-1]:g}"]
    return StepResult(loss, metrics)
