"""PGD attacks (L∞ and L2), conditioned per sample on (λ, width) through a Cond.

Reference behaviour (L∞): uniform random start in the ε-ball clamped to [0, 1], sign-gradient ascent
of the *summed* cross-entropy, projection onto the ε-ball and [0, 1] after every step, last iterate
returned. The model runs in eval mode with its parameters frozen (so no parameter gradient is ever
computed); both are restored exactly afterwards, module by module.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

STEP_RULES = ("official", "madry")


def default_step_size(norm: str, eps: float, steps: int, rule: str = "official") -> float:
    """PGD's step size. ``official``: the reference rule, min(1.25ε, ε + 4/255)/steps for L∞ (2.5ε/steps for L2);
    ``madry``: 2.5ε/steps for both (Madry et al.). The official L∞ rule lets PGD travel only ~1.05ε in all at
    large ε (ε = 0.3 on MNIST): the attack then stops short of the ε-ball's corners, and a model trained against
    it can look robust without being so. The small-data jobs use ``madry``."""
    if rule not in STEP_RULES:
        raise ValueError(f"step rule {rule!r}: one of {', '.join(STEP_RULES)}")
    if norm == "linf" and rule == "official":
        return min(1.25 * eps, eps + 4 / 255) / steps
    return 2.5 * eps / steps


class AttackSettings(Protocol):
    """What :meth:`PGD.from_config` reads: a job's ``attack`` section (pipeline.config.AttackConfig)."""

    @property
    def norm(self) -> str: ...

    @property
    def eps(self) -> float: ...

    @property
    def steps(self) -> int: ...

    @property
    def step_size(self) -> float | None: ...

    @property
    def random_start(self) -> bool: ...

    @property
    def step_rule(self) -> str: ...


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside; every module's mode and flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def _input_grad(model: nn.Module, adv: Tensor, y: Tensor, cond: Any) -> Tensor:
    """Gradient of the summed cross-entropy with respect to the input only."""
    adv.requires_grad_(True)
    logits = model(adv) if cond is None else model(adv, cond)
    (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), adv)
    return grad


@dataclass(frozen=True)
class PGD:
    eps: float
    steps: int
    step_size: float
    norm: str = "linf"
    random_start: bool = True

    @classmethod
    def from_config(cls, cfg: AttackSettings, steps: int | None = None, eps: float | None = None) -> PGD:
        """The job's attack; ``steps`` / ``eps`` other than the job's (validation, test, an ε warm-up) re-derive
        the step size by the job's rule, since it depends on both."""
        n = steps if steps is not None else cfg.steps
        e = float(eps) if eps is not None else float(cfg.eps)
        fixed = cfg.step_size is not None and n == cfg.steps and e == cfg.eps
        step = cfg.step_size if fixed else default_step_size(cfg.norm, e, n, cfg.step_rule)
        assert step is not None
        return cls(e, n, step, cfg.norm, cfg.random_start)

    @property
    def name(self) -> str:
        return f"pgd{self.steps}-{self.norm}"

    def describe(self) -> dict[str, Any]:
        return {"attack": "pgd", "norm": self.norm, "eps": self.eps, "steps": self.steps,
                "step_size": self.step_size, "random_start": self.random_start}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, cond: Any = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Adversarial examples for ``model`` (a RobustNet with ``cond``, or any ``model(x)``)."""
        if self.eps == 0 or self.steps == 0:
            return x.detach().clone()
        with frozen_eval(model), torch.enable_grad():
            if self.norm == "linf":
                return self._linf(model, x.detach(), y, cond, generator)
            return self._l2(model, x.detach(), y, cond, generator)

    def _linf(self, model: nn.Module, x: Tensor, y: Tensor, cond: Any, gen: torch.Generator | None) -> Tensor:
        lo = (x - self.eps).clamp_(min=0.0)
        hi = (x + self.eps).clamp_(max=1.0)
        if self.random_start:
            adv = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=gen).add_(x)
            adv = torch.maximum(adv, lo, out=adv)
            adv = torch.minimum(adv, hi, out=adv)
        else:
            adv = x.clone()
        for _ in range(self.steps):
            grad = _input_grad(model, adv, y, cond)
            adv = adv.detach()
            adv.add_(grad.sign_(), alpha=self.step_size)
            torch.maximum(adv, lo, out=adv)
            torch.minimum(adv, hi, out=adv)
        return adv

    def _l2(self, model: nn.Module, x: Tensor, y: Tensor, cond: Any, gen: torch.Generator | None) -> Tensor:
        b = x.shape[0]
        view = (b,) + (1,) * (x.dim() - 1)

        def norms(t: Tensor) -> Tensor:
            return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(view)

        if self.random_start:
            d = torch.empty_like(x).normal_(generator=gen)
            r = torch.empty(b, device=x.device, dtype=x.dtype).uniform_(0, 1, generator=gen).view(view)
            adv = (x + d / norms(d) * r * self.eps).clamp_(0.0, 1.0)
        else:
            adv = x.clone()
        for _ in range(self.steps):
            grad = _input_grad(model, adv, y, cond)
            adv = adv.detach()
            adv.add_(grad / norms(grad), alpha=self.step_size)
            delta = adv.sub_(x)
            delta.mul_((self.eps / norms(delta)).clamp_(max=1.0))
            adv = delta.add_(x).clamp_(0.0, 1.0)
        return adv
