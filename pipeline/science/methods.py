"""The training methods, one registry: PGDAT, OAT and OATS, each an objective on (model, batch, λ, attack).

They know nothing of Ray or MLflow: each returns the loss to back-propagate and detached metric
tensors (summed, with their counts, so that no value is pulled to the host inside the step).

* PGDAT: ``(1-Λ)·mean CE(clean) + Λ·mean CE(adv)`` for one fixed Λ; Λ = 0 is standard training.
* OAT: per-sample λ; the clean forward takes the whole batch (BN routed per sample), PGD and the
  adversarial forward only the λ > 0 samples; loss = mean over the batch of (1-λ)·CE_c + λ·CE_a.
* OATS: the OAT loss averaged over the widths, each width attacking with its own subnetwork.

:data:`METHODS` maps a job's ``method.name`` to its :class:`Method`: the objective, whether λ is an input of
the model (and so sampled per sample), whether the model has several widths. Code elsewhere asks the
method (``get_method(name).conditioned``), never compares its name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.science.model import RobustNet
from pipeline.science.sampling import LambdaSampler

Attack = Callable[..., Tensor]


@dataclass
class StepResult:
    loss: Tensor  # the scalar to back-propagate
    metrics: dict[str, Tensor]  # detached sums; "n_*" keys are their counts


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


@dataclass(frozen=True)
class StepParams:
    """What an objective needs beyond the batch: PGDAT's fixed Λ, OATS's widths."""

    Lambda: float = 0.0
    widths: Sequence[float] = (1.0,)


Objective = Callable[[RobustNet, Tensor, Tensor, "Tensor | None", Attack, StepParams], StepResult]


def _pgdat(model: RobustNet, x: Tensor, y: Tensor, lam: Tensor | None, attack: Attack, p: StepParams) -> StepResult:
    return pgdat_step(model, x, y, p.Lambda, attack)


def _oat(model: RobustNet, x: Tensor, y: Tensor, lam: Tensor | None, attack: Attack, p: StepParams) -> StepResult:
    assert lam is not None, "OAT draws a λ per sample"
    return oat_step(model, x, y, lam, attack)


def _oats(model: RobustNet, x: Tensor, y: Tensor, lam: Tensor | None, attack: Attack, p: StepParams) -> StepResult:
    assert lam is not None, "OATS draws a λ per sample"
    return oats_step(model, x, y, lam, attack, p.widths)


@dataclass(frozen=True)
class Method:
    """One training method.

    * ``conditioned``: λ is an input of the model (λ codes, FiLM, optionally dual BN), drawn per sample;
      otherwise the model is plain and trained for one fixed Λ.
    * ``slimmable``: the model trains several widths at once (its ``model.widths``).
    * ``objective``: the loss of one (micro-)batch.
    """

    name: str
    label: str
    conditioned: bool
    slimmable: bool
    objective: Objective
    summary: str
    reference_batch: int = 128  # the official code's default batch size (OAT.py 128, PGDAT.py 256)

    def sampler(self, choices: Sequence[float], zero_fraction: float | None) -> LambdaSampler | None:
        """The per-sample λ sampler of a conditioned method; None for a fixed-Λ one."""
        return LambdaSampler(choices, zero_fraction) if self.conditioned else None

    def trained_lambdas(self, choices: Sequence[float], Lambda: float) -> list[float]:
        """The λ values a model of this method answers for (what its checkpoint records)."""
        return [float(c) for c in choices] if self.conditioned else [float(Lambda)]


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("pgdat", "PGDAT", conditioned=False, slimmable=False, objective=_pgdat,
           summary="dedicated adversarial training for one fixed Λ: (1-Λ)·CE(clean) + Λ·CE(adv)", reference_batch=256),
    Method("oat", "OAT", conditioned=True, slimmable=False, objective=_oat,
           summary="once-for-all adversarial training: λ is a model input (FiLM, dual BN), sampled per sample"),
    Method("oats", "OATS", conditioned=True, slimmable=True, objective=_oats,
           summary="OAT with a slimmable network: the loss averaged over the widths"),
)}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method '{name}'; one of {', '.join(METHODS)}") from None


def method_names() -> tuple[str, ...]:
    return tuple(METHODS)
