"""FiLM: feature-wise linear modulation of a BN site's output by the λ code (OAT's conditioning).

After every BN on the main path, before the ReLU, an MLP ``Linear(d, 2C) -> LeakyReLU(0.01) ->
Linear(2C, 2C)`` maps the code to a scale a and a shift b; the output is ``x * lrelu(a) + lrelu(b)``
(:class:`pipeline.science.dual_bn.CondNorm` applies it, folded into the BN's affine part).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.science.conditioning import Cond


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
