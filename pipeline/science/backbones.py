"""Backbones, each usable plain (PGDAT), with FiLM + dual BN (OAT) and slimmable (OATS).

* ``ResNet``: 3×3 stem (stride 1, no max-pool), BasicBlocks; ResNet-34 is blocks [3, 4, 6, 3] at
  widths 64/128/256/512 (33 FiLM sites). FiLM follows bn1 / bn2 of each block and the stem BN, not the
  shortcut BN.
* ``WideResNet``: pre-activation WRN-d-k with dropout; WRN-16-8 has 12 FiLM sites. The final BN gets
  no FiLM (the reference), but it is dual like every other BN.
* ``SmallCNN``: three conv + BN layers (one 2×2 max-pool) for ``digits`` and the tests.

All end in adaptive average pooling, so any input size and channel count works; at the reference
input sizes this is the reference's fixed pooling.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.science.conditioning import Cond
from pipeline.science.dual_bn import CondNorm
from pipeline.science.slimmable import SlimConv2d, SlimLinear, scaled


class _Factory:
    """Builds conditioned layers with one model-wide setting (widths, dual BN, FiLM dimension)."""

    def __init__(self, widths: list[float], dual: bool, film_dim: int | None, batch_norm: bool = True,
                 clean_bn: bool = False):
        self.widths, self.dual, self.film_dim, self.batch_norm = widths, dual, film_dim, batch_norm
        self.clean_bn = clean_bn

    def ch(self, c: int) -> list[int]:
        return scaled(c, self.widths)

    def conv(self, cin: int | list[int], cout: int, k: int, stride: int = 1, padding: int = 0) -> SlimConv2d:
        in_list = cin if isinstance(cin, list) else self.ch(cin)
        # without BN the conv keeps its bias (BN's shift did its work)
        return SlimConv2d(in_list, self.ch(cout), k, stride=stride, padding=padding, bias=not self.batch_norm)

    def norm(self, c: int, film: bool = True) -> CondNorm:
        return CondNorm(c, self.widths, self.dual, self.film_dim if film else None, self.batch_norm, self.clean_bn)


class BasicBlock(nn.Module):
    def __init__(self, f: _Factory, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = f.conv(cin, cout, 3, stride, 1)
        self.bn1 = f.norm(cout)
        self.conv2 = f.conv(cout, cout, 3, 1, 1)
        self.bn2 = f.norm(cout)
        self.has_shortcut = stride != 1 or cin != cout
        if self.has_shortcut:
            self.sc_conv = f.conv(cin, cout, 1, stride, 0)
            self.sc_bn = f.norm(cout, film=False)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
        out = F.relu(self.bn1(self.conv1(x, wi), cond))
        out = self.bn2(self.conv2(out, wi), cond)
        sc = self.sc_bn(self.sc_conv(x, wi), cond) if self.has_shortcut else x
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, f: _Factory, blocks: list[int], channels: list[int], in_channels: int, num_classes: int):
        super().__init__()
        self.conv1 = f.conv([in_channels] * len(f.widths), channels[0], 3, 1, 1)
        self.bn1 = f.norm(channels[0])
        layers: list[nn.Module] = []
        cin = channels[0]
        for i, (n, c) in enumerate(zip(blocks, channels)):
            for j in range(n):
                layers.append(BasicBlock(f, cin, c, 2 if (i > 0 and j == 0) else 1))
                cin = c
        self.blocks = nn.ModuleList(layers)
        self.linear = SlimLinear(f.ch(cin), num_classes)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x, cond.width_idx), cond))
        for block in self.blocks:
            out = block(out, cond)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out, cond.width_idx)


class WideBlock(nn.Module):
    def __init__(self, f: _Factory, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = f.norm(cin)
        self.conv1 = f.conv(cin, cout, 3, stride, 1)
        self.bn2 = f.norm(cout)
        self.conv2 = f.conv(cout, cout, 3, 1, 1)
        self.dropout = dropout
        self.equal = cin == cout and stride == 1
        if not self.equal:
            self.sc_conv = f.conv(cin, cout, 1, stride, 0)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
        o = F.relu(self.bn1(x, cond))
        out = F.relu(self.bn2(self.conv1(o, wi), cond))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out, wi)
        return out + (x if self.equal else self.sc_conv(o, wi))


class WideResNet(nn.Module):
    def __init__(self, f: _Factory, depth: int, widen: int, dropout: float, in_channels: int, num_classes: int):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n + 4"
        n = (depth - 4) // 6
        chans = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = f.conv([in_channels] * len(f.widths), chans[0], 3, 1, 1)
        layers: list[nn.Module] = []
        cin = chans[0]
        for g, c in enumerate(chans[1:]):
            for j in range(n):
                layers.append(WideBlock(f, cin, c, (1 if g == 0 else 2) if j == 0 else 1, dropout))
                cin = c
        self.blocks = nn.ModuleList(layers)
        self.bn = f.norm(cin, film=False)
        # PyTorch's default initialisation, as the official WideResNetOAT (models/svhn/wide_resnet_OAT.py) has it:
        # the fast_adv code it was taken from drew kaiming weights and zero biases, the official OAT model does not
        self.linear = SlimLinear(f.ch(cin), num_classes)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        out = self.conv1(x, cond.width_idx)
        for block in self.blocks:
            out = block(out, cond)
        out = F.relu(self.bn(out, cond))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out, cond.width_idx)


class SmallCNN(nn.Module):
    """conv-BN-FiLM-ReLU ×3 (one 2×2 max-pool after the second), a final BN without FiLM (as in a
    WRN: FiLM's small initial scale right before pooling would starve the classifier), global average
    pool, linear."""

    def __init__(self, f: _Factory, channels: list[int], in_channels: int, num_classes: int):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = f.conv([in_channels] * len(f.widths), c1, 3, 1, 1)
        self.bn1 = f.norm(c1)
        self.conv2 = f.conv(c1, c2, 3, 1, 1)
        self.bn2 = f.norm(c2)
        self.conv3 = f.conv(c2, c3, 3, 1, 1)
        self.bn3 = f.norm(c3)
        self.bn = f.norm(c3, film=False)
        self.linear = SlimLinear(f.ch(c3), num_classes)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
        out = F.relu(self.bn1(self.conv1(x, wi), cond))
        out = F.relu(self.bn2(self.conv2(out, wi), cond))
        out = F.max_pool2d(out, 2)
        out = F.relu(self.bn3(self.conv3(out, wi), cond))
        out = F.relu(self.bn(out, cond))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out, wi)


class LeNet(nn.Module):
    """conv5-BN-FiLM-ReLU-pool ×2, then fc-ReLU and a linear classifier (Madry et al.'s MNIST layout, narrower).

    Pooling after each conv keeps it cheap at 28×28, and the flattened features keep the spatial layout that a
    global average pool throws away: under strong attacks at ε = 0.3 the global-pool :class:`SmallCNN` learns
    slowly and masks gradients, this one does not (``benchmarks/results/science.md``)."""

    def __init__(self, f: _Factory, channels: list[int], in_channels: int, num_classes: int, input_size: list[int]):
        super().__init__()
        c1, c2, hidden = channels
        cells = (input_size[0] // 4) * (input_size[1] // 4)
        self.conv1 = f.conv([in_channels] * len(f.widths), c1, 5, 1, 2)
        self.bn1 = f.norm(c1)
        self.conv2 = f.conv(c1, c2, 5, 1, 2)
        self.bn2 = f.norm(c2)
        self.fc = SlimLinear([c * cells for c in f.ch(c2)], hidden)
        self.linear = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor, cond: Cond) -> Tensor:
        wi = cond.width_idx
        out = F.max_pool2d(F.relu(self.bn1(self.conv1(x, wi), cond)), 2)
        out = F.max_pool2d(F.relu(self.bn2(self.conv2(out, wi), cond)), 2)
        return self.linear(F.relu(self.fc(out.flatten(1), wi)))


PRESETS: dict[str, dict] = {
    "resnet18": {"kind": "resnet", "blocks": [2, 2, 2, 2], "channels": [64, 128, 256, 512]},
    "resnet34": {"kind": "resnet", "blocks": [3, 4, 6, 3], "channels": [64, 128, 256, 512]},
    "wrn16_8": {"kind": "wrn", "depth": 16, "widen": 8},
    "wrn40_2": {"kind": "wrn", "depth": 40, "widen": 2},
    "small_cnn": {"kind": "small_cnn", "channels": [32, 64, 128]},
    "lenet": {"kind": "lenet", "channels": [16, 32, 128]},
    "resnet": {"kind": "resnet", "channels": [64, 128, 256, 512]},
    "wrn": {"kind": "wrn", "widen": 1},
}


def build_backbone(spec: dict, film_dim: int | None) -> nn.Module:
    """``spec`` is a :class:`pipeline.science.model.ModelSpec` as a dict (what checkpoints store)."""
    preset = dict(PRESETS[spec["backbone"]])
    for key in ("channels", "blocks", "depth", "widen"):
        if spec.get(key) is not None:
            preset[key] = spec[key]
    f = _Factory(list(spec["widths"]), bool(spec["dual_bn"]), film_dim, bool(spec.get("batch_norm", True)),
                 bool(spec.get("clean_bn", False)))
    cin, ncls = spec["in_channels"], spec["num_classes"]
    kind = preset["kind"]
    if kind == "resnet":
        return ResNet(f, preset["blocks"], preset["channels"], cin, ncls)
    if kind == "wrn":
        return WideResNet(f, preset["depth"], preset["widen"], float(spec.get("dropout") or 0.0), cin, ncls)
    if kind == "lenet":
        return LeNet(f, preset["channels"], cin, ncls, list(spec["input_size"]))
    return SmallCNN(f, preset["channels"], cin, ncls)
