"""The public Python API: load a trained model and pick its trade-off point.

    from pipeline import load_model
    m = load_model("runs/digits_oat/final.pt")
    f = m.at(lam=0.3, width=1.0)      # a plain nn.Module: images in [0, 1] -> logits
    m.lambdas, m.widths, m.input_shape
"""

from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .models import ModelSpec, RobustNet, build_model


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
