"""What a forward pass is conditioned on: the λ code of each sample, the BN route of each sample, the width.

A model's ``forward(x, cond)`` takes the input and a :class:`Cond` and nothing global, so the same
module is correct on any number of data-parallel workers: each worker builds its Cond from its own
samples (:meth:`pipeline.science.model.RobustNet.condition`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from torch import Tensor


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
