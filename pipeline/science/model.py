"""The model: a backbone plus what makes it OAT / OATS (λ codes, FiLM, dual BN, widths), and `load_model`.

:class:`RobustNet` is the one model class of the project. ``forward(x, cond)`` takes a
:class:`~pipeline.science.conditioning.Cond` built by :meth:`RobustNet.condition` from per-sample λ values
and a width; :meth:`RobustNet.at` fixes (λ, width) and returns a plain ``model(x) -> logits`` module
for attack libraries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.files import CheckpointError, load_checkpoint
from pipeline.science.backbones import build_backbone
from pipeline.science.conditioning import Cond, Route
from pipeline.science.dual_bn import CondNorm
from pipeline.science.encoding import encoding_matrix
from pipeline.science.film import FiLM

__all__ = ["Cond", "ConditionedModel", "ModelSpec", "RobustNet", "Route", "build_model", "film_parameters"]

_TOL = 1e-6


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model; stored (as a dict) in every checkpoint."""

    backbone: str
    in_channels: int
    num_classes: int
    input_size: list[int]  # [H, W] the model was trained at
    method: str  # pgdat | oat | oats
    lambdas: list[float]  # the λ values the model was trained for (PGDAT: its one Λ)
    widths: list[float] = field(default_factory=lambda: [1.0])
    film: bool = False
    dual_bn: bool = False
    batch_norm: bool = True  # False: no BN anywhere (model.batch_norm), FiLM alone conditions on λ
    clean_bn: bool = False  # with batch_norm False and dual_bn: BN on the λ = 0 route only (model.clean_bn)
    encoding: str = "none"
    dim: int = 1
    encoding_seed: int = 0
    channels: list[int] | None = None
    blocks: list[int] | None = None
    depth: int | None = None
    widen: int | None = None
    dropout: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"model spec has unknown fields {sorted(unknown)}")
        return cls(**d)


class RobustNet(nn.Module):
    encoding_matrix: Tensor

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.widths = sorted(float(w) for w in spec.widths)
        self.lambdas = [float(v) for v in spec.lambdas]
        film_dim = spec.dim if spec.film else None
        self.backbone = build_backbone(spec.to_dict(), film_dim)
        # The whole encoding matrix travels with the model (a buffer: in state_dict, in checkpoints).
        enc = encoding_matrix(spec.encoding, spec.dim, spec.encoding_seed) if spec.film else torch.zeros(0, 1)
        self.register_buffer("encoding_matrix", enc)

    # ------------------------------------------------------------------ conditioning
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.spec.in_channels, *self.spec.input_size)  # type: ignore[return-value]

    def width_index(self, width: float) -> int:
        for i, w in enumerate(self.widths):
            if abs(w - width) < _TOL:
                return i
        raise ValueError(f"width {width} was not trained; this model accepts widths {self.widths}")

    def _positions(self, lam: Tensor) -> Tensor:
        table = torch.tensor(self.lambdas, dtype=lam.dtype)
        hit = (lam[:, None] - table[None, :]).abs() < _TOL
        ok = hit.any(1)
        if not bool(ok.all()):
            bad = sorted({round(float(v), 6) for v in lam[~ok]})
            hint = "" if self.spec.encoding == "none" else " (only encoding 'none' interpolates between λ values)"
            raise ValueError(f"λ {bad} was not trained; this model accepts λ ∈ {self.lambdas}{hint}")
        return hit.float().argmax(1)

    def condition(self, lam: float | Sequence[float] | Tensor, width: float | None = None) -> Cond:
        """The Cond for per-sample λ (a float: every sample the same) at one width (None: the widest trained,
        which for a one-width model at 0.5 is 0.5).

        λ values live on the CPU (the sampler's), so routing is decided without a device sync.
        """
        wi = self.width_index(self.widths[-1] if width is None else width)
        device = self.encoding_matrix.device
        if isinstance(lam, Tensor):
            lam_t = lam.detach().to("cpu", torch.float64).reshape(-1)
        elif isinstance(lam, (int, float)):
            lam_t = torch.tensor([float(lam)], dtype=torch.float64)
        else:
            lam_t = torch.tensor([float(v) for v in lam], dtype=torch.float64)
        if lam_t.numel() == 0:
            raise ValueError("condition() needs at least one λ")
        if not self.spec.film:  # a dedicated (fixed-Λ) model: no λ input, and it accepts only its own Λ
            self._positions(lam_t)
            codes = code_index = None
        elif self.spec.encoding == "none":
            if bool(((lam_t < 0) | (lam_t > 1)).any()):
                raise ValueError(f"λ must lie in [0, 1], got {lam_t.tolist()}")
            uniq, inv = torch.unique(lam_t, return_inverse=True)
            codes = uniq.float()[:, None].to(device)
            code_index = inv.to(device, non_blocking=True) if uniq.numel() > 1 else None
        else:
            pos = self._positions(lam_t)
            if bool((pos == pos[0]).all()):
                p = int(pos[0])
                codes, code_index = self.encoding_matrix[p:p + 1], None
            else:
                codes = self.encoding_matrix[: len(self.lambdas)]
                code_index = pos.to(device, non_blocking=True)
        clean = lam_t.abs() < _TOL
        n_clean = int(clean.sum())
        order = inverse = None
        if not self.spec.dual_bn or n_clean == lam_t.numel():
            route = Route.CLEAN
        elif n_clean == 0:
            route = Route.ADV
        else:
            route = Route.MIXED
            if not bool(clean[:n_clean].all()):  # not already BN_c-first: gather, then scatter back
                order_cpu = torch.cat([clean.nonzero().flatten(), (~clean).nonzero().flatten()])
                order = order_cpu.to(device, non_blocking=True)
                inverse = torch.argsort(order_cpu).to(device, non_blocking=True)
        return Cond(codes, code_index, route, n_clean, order, inverse, wi)

    def forward(self, x: Tensor, cond: Cond | None = None) -> Tensor:
        if cond is None:
            if len(self.lambdas) != 1 and self.spec.film:
                raise ValueError("this model takes λ: call model(x, model.condition(lam, width)) or model.at(lam)(x)")
            cond = self.condition(self.lambdas[0], self.widths[-1])
        return self.backbone(x, cond)

    def at(self, lam: float | None = None, width: float | None = None) -> ConditionedModel:
        """A plain ``nn.Module`` mapping images in [0, 1] to logits at a fixed (λ, width)."""
        if lam is None:
            if len(self.lambdas) != 1:
                raise ValueError(f"pick a λ: this model accepts λ ∈ {self.lambdas}")
            lam = self.lambdas[0]
        width = self.widths[-1] if width is None else width
        cond = self.condition(float(lam), float(width))  # validates λ and width now, not at the first call
        return ConditionedModel(self, float(lam), float(width), cond)


class ConditionedModel(nn.Module):
    """``model(x)`` at a fixed (λ, width): what AutoAttack, torchattacks and RobustBench call."""

    def __init__(self, net: RobustNet, lam: float, width: float, cond: Cond):
        super().__init__()
        self.net = net
        self.lam, self.width = lam, width
        self._cond = cond

    def forward(self, x: Tensor) -> Tensor:
        cond = self._cond
        if cond.codes is not None and cond.codes.device != x.device:
            cond = self._cond = self.net.condition(self.lam, self.width)
        return self.net(x, cond)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, width={self.width}"


def build_model(spec: ModelSpec) -> RobustNet:
    return RobustNet(spec)


def film_parameters(model: nn.Module) -> int:
    return sum(p.numel() for m in model.modules() if isinstance(m, FiLM) for p in m.parameters())


def count_film_layers(model: nn.Module) -> int:
    return sum(1 for m in model.modules() if isinstance(m, CondNorm) and m.film is not None)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



def load_model(path: str | Path, device: str | torch.device = "cpu") -> RobustNet:
    """A model from a checkpoint file (or a run folder: its final.pt, else latest.pt), in eval mode.

    Loaded with ``torch.load(weights_only=True)``; the λ encoding matrix comes from the checkpoint."""
    ckpt = load_checkpoint(path, map_location=device)
    try:
        model = build_model(ModelSpec.from_dict(ckpt["model_spec"]))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its own model spec: {exc}") from None
    return model.to(device).eval()
