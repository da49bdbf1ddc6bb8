"""λ sampling: which trade-off weight each training sample gets, on every worker and micro-batch.

* :class:`LambdaSampler`: the reference's element-wise sampler (the first ceil(B·f) samples of a batch get
  λ = 0, f = 1/|Λ| by default; every other sample draws uniformly from the non-zero choices).
* :func:`lambda_draws`: one training step's draws for one rank, so that W workers see exactly the λ
  assignment that one worker with ``accumulate = W`` sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


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


def lambda_draws(sampler: LambdaSampler | None, micro: int, rank: int, world: int, accumulate: int
                 ) -> Callable[[torch.Generator], list[Tensor | None]]:
    """Per step, the λ of this rank's micro-batches (``sampler`` None: a method without per-sample λ).

    Every rank draws the whole step (world × accumulate blocks of ``micro`` samples) from the same
    epoch-seeded generator and keeps its own blocks, so each block has its own λ = 0 share and 2 workers
    see the λ assignment that 1 worker with ``accumulate=2`` sees."""
    if sampler is None:
        return lambda g: [None] * accumulate
    lo, hi = rank * accumulate, (rank + 1) * accumulate

    def draw(g: torch.Generator) -> list[Tensor | None]:
        blocks = [sampler(micro, g) for _ in range(world * accumulate)]
        return list(blocks[lo:hi])

    return draw
