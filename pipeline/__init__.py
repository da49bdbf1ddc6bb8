"""Once-for-All Adversarial Training (OAT, OATS) and dedicated PGDAT baselines.

Public API: :func:`load_model` returns a :class:`RobustNet`; ``model.at(lam=..., width=...)`` is a
plain ``nn.Module`` for attack libraries and deployment.
"""

from pipeline.science.model import ConditionedModel, RobustNet, load_model

__version__ = "0.1.0"
__all__ = ["ConditionedModel", "RobustNet", "__version__", "load_model"]
