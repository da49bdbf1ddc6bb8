"""Conditioned building blocks: FiLM, dual batch norm routed per sample, slimmable conv / linear.

A forward pass takes the input and a :class:`Cond` (what λ codes the samples carry, which BN each
sample is routed to, which width is active) and nothing global, so the same module is correct on
any number of data-parallel workers: each worker builds its Cond from its own samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Route(IntEnum):
    CLEAN = 0  # every sample to BN_c (λ = 0)
    ADV = 1  # every sample to BN_a (λ > 0)
    MIXED = 2  # per-sample mask; see Cond.n_clean / Cond.order


@dataclass(frozen=True)
class Cond:
    """Per-forward conditioning.

    * ``codes``: the distinct λ codes of this batch, ``[K, d]`` (None: the model has no FiLM).
    * ``code_index``: ``[B]`` index of each sample's code in ``codes``; None when K == 1 (broadcast),
      which keeps a single-λ Cond independent of the batch size.
    * ``route`` / ``n_clean`` / ``order`` / ``inverse``: the BN routing. For a MIXED batch whose BN_c
      samples already come first (the λ sampler's layout) ``order`` is None and the two groups are
      plain views; otherwise ``order`` gathers the BN_c samples first and ``inverse`` undoes it.
    * ``width_idx``: the active width's index in the model's (ascending) width list.
    """

    codes: Tensor | None = None
    code_index: Tensor | None = None
    route: Route = Route.CLEAN
    n_clean: int = 0
    order: Tensor | None = None
    inverse: Tensor | None = None
    width_idx: int = 0


class FiLM(nn.Module):
    """``Linear(d, 2C) -> LeakyReLU(0.01) -> Linear(2C, 2C)``; output ``x * lrelu(a) + lrelu(b)``.

    Slimmable: at a width with ``c < C`` active channels the MLP uses the rows of the first ``c``
    channels of a and of b (and the matching hidden units), so channel i has the same FiLM
    parameters at every width.
    """

    def __init__(self, dim: int, channels: int, active: list[int]):
        super().__init__()
        self.channels = channels
        self.fc1 = nn.Linear(dim, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, 2 * channels)
        for i, c in enumerate(active):
            idx = torch.cat([torch.arange(c), channels + torch.arange(c)])
            self.register_buffer(f"rows{i}", idx, persistent=False)
        self.active = active

    def forward(self, cond: Cond) -> tuple[Tensor, Tensor]:
        """Scale and shift ``[K or B, c]`` (before the leaky ReLU is applied: both get it)."""
        assert cond.codes is not None, "a FiLM model needs a Cond with λ codes"
        c = self.active[cond.width_idx]
        if c == self.channels:
            h = self.fc2(F.leaky_relu(self.fc1(cond.codes), 0.01))
        else:
            rows: Tensor = getattr(self, f"rows{cond.width_idx}")
            w1, b1 = self.fc1.weight.index_select(0, rows), self.fc1.bias.index_select(0, rows)
            w2 = self.fc2.weight.index_select(0, rows).index_select(1, rows)
            b2 = self.fc2.bias.index_select(0, rows)
            h = F.linear(F.leaky_relu(F.linear(cond.codes, w1, b1), 0.01), w2, b2)
        h = F.leaky_relu(h, 0.01)
        if cond.code_index is not None:
            h = h.index_select(0, cond.code_index)
        return h[:, :c], h[:, c:]


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
    """One BN site: a BN (or a BN_c / BN_a pair) per width, optionally followed by FiLM."""

    def __init__(self, channels: int, widths: list[float], dual: bool, film_dim: int | None):
        super().__init__()
        self.active = [max(1, int(channels * w)) for w in widths]
        self.bn_c = nn.ModuleList(nn.BatchNorm2d(c) for c in self.active)
        self.bn_a = nn.ModuleList(nn.BatchNorm2d(c) for c in self.active) if dual else None
        # sized for the widest active width: a one-width model at 0.5 is a plain half-width model throughout
        self.film = FiLM(film_dim, max(self.active), self.active) if film_dim else None

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
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

    @staticmethod
    def _mixed(x: Tensor, cond: Cond, bn_c: nn.BatchNorm2d, bn_a: nn.BatchNorm2d) -> Tensor:
        n = cond.n_clean
        if cond.order is None:  # BN_c samples first: two views, one concatenation
            return torch.cat([bn_c(x[:n]), bn_a(x[n:])])
        assert cond.inverse is not None
        xs = x.index_select(0, cond.order)
        return torch.cat([bn_c(xs[:n]), bn_a(xs[n:])]).index_select(0, cond.inverse)


class SlimConv2d(nn.Conv2d):
    """A conv whose active width slices the first input/output channels of the full weight."""

    def __init__(self, in_list: list[int], out_list: list[int], kernel_size: int, stride: int = 1,
                 padding: int = 0, bias: bool = False):
        super().__init__(max(in_list), max(out_list), kernel_size, stride=stride, padding=padding, bias=bias)
        self.in_list, self.out_list = in_list, out_list

    def forward(self, x: Tensor, width_idx: int = -1) -> Tensor:
        cin, cout = self.in_list[width_idx], self.out_list[width_idx]
        w = self.weight if (cin, cout) == tuple(self.weight.shape[:2]) else self.weight[:cout, :cin]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, w, bias, self.stride, self.padding)


class SlimLinear(nn.Linear):
    def __init__(self, in_list: list[int], out_features: int):
        super().__init__(max(in_list), out_features)
        self.in_list = in_list

    def forward(self, x: Tensor, width_idx: int = -1) -> Tensor:
        cin = self.in_list[width_idx]
        w = self.weight if cin == self.in_features else self.weight[:, :cin]
        return F.linear(x, w, self.bias)


def scaled(channels: int, widths: list[float]) -> list[int]:
    """Active channel counts of a layer with ``channels`` at each width (int(C·α), as in slimmable nets)."""
    return [max(1, int(channels * w)) for w in widths]
