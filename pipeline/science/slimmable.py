"""Slimmable layers (OATS): convs and linears whose active width slices the first channels of one weight.

A width α keeps int(C·α) channels of every layer; the weights are shared across widths, each width
has its own BN pair (:class:`pipeline.science.dual_bn.CondNorm`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


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
