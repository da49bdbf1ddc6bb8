"""The best weights per (λ, width), kept by the validation objective (1-λ)·SA + λ·RA, as the reference does."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig
from pipeline.files import atomic_save, atomic_write_text
from pipeline.science.curves import Point
from pipeline.science.model import RobustNet
from pipeline.training.checkpoint import model_checkpoint


class BestKeeper:
    """Best weights per (λ, width) by the validation objective (1-λ)·SA + λ·RA (λ = 0: SA, λ = 1: RA).

    Files are shared: ``best/epochE.pt`` holds one epoch's weights once however many points it is best
    for, and ``best/index.json`` maps each point to its file. Unreferenced files are removed."""

    def __init__(self, folder: Path, index: dict[str, Any] | None = None):
        self.folder = folder
        self.index: dict[str, Any] = dict(index or {})

    @staticmethod
    def key(lam: float, width: float) -> str:
        return f"lambda={lam:g},width={width:g}"

    def update(self, points: Sequence[Point], epoch: int, model: RobustNet, job: JobConfig) -> list[str]:
        improved = []
        for p in points:
            score = (1 - p.lam) * p.clean_acc + p.lam * p.robust_acc
            k = self.key(p.lam, p.width)
            if k not in self.index or score >= self.index[k]["score"]:
                self.index[k] = {"epoch": epoch, "score": score, "clean_acc": p.clean_acc,
                                 "robust_acc": p.robust_acc, "file": f"epoch{epoch}.pt"}
                improved.append(k)
        if improved:
            atomic_save(model_checkpoint(model, job, epoch), self.folder / f"epoch{epoch}.pt")
            atomic_write_text(json.dumps(self.index, indent=2) + "\n", self.folder / "index.json")
            keep = {v["file"] for v in self.index.values()}
            for f in self.folder.glob("epoch*.pt"):
                if f.name not in keep:
                    f.unlink(missing_ok=True)
        return improved

