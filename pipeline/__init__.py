"""Once-for-All Adversarial Training (OAT, OATS) and dedicated PGDAT baselines.

Public API: :func:`load_model` returns a :class:`RobustNet`; ``model.at(lam=..., width=...)`` is a
plain ``nn.Module`` for attack libraries and deployment.

The names are imported on first use, so that a process that needs only a light module of the package (the
console relay's Ray actor, :mod:`pipeline.launch.console`) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.science.model import ConditionedModel, RobustNet, load_model

__version__ = "0.1.0"
__all__ = ["ConditionedModel", "RobustNet", "__version__", "load_model"]


def __getattr__(name: str) -> Any:
    if name in ("ConditionedModel", "RobustNet", "load_model"):
        from pipeline.science import model

        return getattr(model, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
