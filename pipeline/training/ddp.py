"""Data parallelism: this process's place in the group, the one collective the loop needs, and the step module.

Under DDP ``train.batch_size`` is the global batch: each rank takes its share of every step's batch and of
every λ draw (:func:`pipeline.science.sampling.lambda_draws`); the method's loss runs inside one DDP-wrapped
module (:class:`TrainStep`) while attacks use the unwrapped network; evaluation is sharded and its counts
summed (:func:`all_reduce_sum`). The process group itself is set up by the launcher (Ray Train).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline.science.attacks import PGD
from pipeline.science.methods import Method, StepParams
from pipeline.science.model import RobustNet


@dataclass
class Dist:
    """This process's place in a data-parallel group (the process group is already initialised)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # None: from train.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def all_reduce_sum(t: torch.Tensor, dist: Dist) -> torch.Tensor:
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t


class TrainStep(nn.Module):
    """The method's loss for one (micro-)batch as a module, so that DDP sees exactly one forward per
    backward. The attack inside runs on ``self.net`` itself (unwrapped, frozen, in eval mode)."""

    def __init__(self, net: RobustNet, method: Method, params: StepParams, attack: PGD):
        super().__init__()
        self.net = net
        self.method = method
        self.params = params
        self.attack = attack

    def forward(self, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor | None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        r = self.method.objective(self.net, x, y, lam, self.attack, self.params)
        return r.loss, r.metrics
