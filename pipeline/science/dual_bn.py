"""Dual batch norm (OAT's ``use2BN``): a BN_c / BN_a pair per BN site, routed per sample.

Samples with λ = 0 normalise with BN_c, samples with λ > 0 with BN_a, for both their clean and their
adversarial forward. The official code routes by a batch *prefix* index, which is wrong under data
parallelism; here each sample's route comes from its own λ (:class:`Cond`), correct on any number of
workers. A BN site holds one pair per OATS width, and FiLM (when the model has it) right after.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.science.conditioning import Cond, Route
from pipeline.science.film import FiLM


def _batch_norm(bn: nn.BatchNorm2d, x: Tensor, affine: bool = True) -> Tensor:
    """``bn(x)``, optionally without its affine part (which FiLM then folds into one multiply-add)."""
    if bn.training and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return F.batch_norm(
        x,
        bn.running_mean,
        bn.running_var,
        bn.weight if affine else None,
        bn.bias if affine else None,
        bn.training,
        bn.momentum if bn.momentum is not None else 0.0,
        bn.eps,
    )



class CondNorm(nn.Module):
    """One BN site: a BN (or a BN_c / BN_a pair) per width, optionally followed by FiLM. ``batch_norm=False``
    (the small-data LeNet, ``model.batch_norm: false``): no BN at all, FiLM alone (or the identity); with
    ``clean_bn`` and ``dual`` (``model.clean_bn: true``) the λ = 0 route keeps its BN_c and the λ > 0 route has
    none: dual BN without the adversarial BN."""

    def __init__(self, channels: int, widths: list[float], dual: bool, film_dim: int | None,
                 batch_norm: bool = True, clean_bn: bool = False):
        super().__init__()
        self.active = [max(1, int(channels * w)) for w in widths]
        self.clean_only = not batch_norm and clean_bn and dual
        has_bn_c = batch_norm or self.clean_only
        self.bn_c = nn.ModuleList(nn.BatchNorm2d(c) for c in self.active) if has_bn_c else None
        self.bn_a = nn.ModuleList(nn.BatchNorm2d(c) for c in self.active) if dual and batch_norm else None
        # sized for the widest active width: a one-width model at 0.5 is a plain half-width model throughout
        self.film = FiLM(film_dim, max(self.active), self.active) if film_dim else None

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
        if self.bn_c is None:
            if self.film is None:
                return x
            # No BN re-normalises what FiLM scales: the scale is 1 + a, the identity at a = 0 (a plain a, about
            # 0.01 at initialisation, shrinks every layer's signal and the model never learns; measured)
            a, b = self.film(cond)
            return torch.addcmul(b[:, :, None, None], x, a[:, :, None, None] + 1.0)
        if self.clean_only:
            return self._clean_only(x, cond)
        bn_c = cast(nn.BatchNorm2d, self.bn_c[wi])
        bn_a = cast(nn.BatchNorm2d, self.bn_a[wi]) if self.bn_a is not None else bn_c
        route = cond.route if self.bn_a is not None else Route.CLEAN
        if self.film is None:
            if route != Route.MIXED:
                return (bn_a if route == Route.ADV else bn_c)(x)
            return self._mixed(x, cond, bn_c, bn_a)
        a, b = self.film(cond)
        if route != Route.MIXED:
            # BN's affine and FiLM fold into one multiply-add: (x̂·w + β)·a + b = x̂·(w·a) + (β·a + b).
            bn = bn_a if route == Route.ADV else bn_c
            xhat = _batch_norm(bn, x, affine=False)
            scale = (bn.weight * a)[:, :, None, None]
            shift = torch.addcmul(b, bn.bias, a)[:, :, None, None]
            return torch.addcmul(shift, xhat, scale)
        y = self._mixed(x, cond, bn_c, bn_a)
        return torch.addcmul(b[:, :, None, None], y, a[:, :, None, None])

    def _clean_only(self, x: Tensor, cond: Cond) -> Tensor:
        """BN_c (then FiLM scale a) on the λ = 0 samples, no BN (FiLM scale 1 + a) on the others."""
        assert self.bn_c is not None
        bn_c = cast(nn.BatchNorm2d, self.bn_c[cond.width_idx])
        plain: Tensor | float
        if cond.route == Route.CLEAN:
            y, plain = bn_c(x), 0.0
        elif cond.route == Route.ADV:
            y, plain = x, 1.0
        else:
            y = self._mixed(x, cond, bn_c, nn.Identity())
            plain = torch.ones(x.shape[0], 1, device=x.device, dtype=x.dtype)
            plain[cond.order[: cond.n_clean] if cond.order is not None else slice(0, cond.n_clean)] = 0.0
        if self.film is None:
            return y
        a, b = self.film(cond)
        return torch.addcmul(b[:, :, None, None], y, (a + plain)[:, :, None, None])

    @staticmethod
    def _mixed(x: Tensor, cond: Cond, bn_c: nn.Module, bn_a: nn.Module) -> Tensor:
        n = cond.n_clean
        if cond.order is None:  # BN_c samples first: two views, one concatenation
            return torch.cat([bn_c(x[:n]), bn_a(x[n:])])
        assert cond.inverse is not None
        xs = x.index_select(0, cond.order)
        return torch.cat([bn_c(xs[:n]), bn_a(xs[n:])]).index_select(0, cond.inverse)
