"""The training state on disk: what ``latest.pt``, ``final.pt`` and the best weights hold, and how a run resumes.

Every file is written atomically (:func:`pipeline.files.atomic_save`) and read with ``weights_only=True``;
a restarted run continues from ``latest.pt`` exactly (on CPU: the same losses, bit for bit). A warm start
(``train.init_from``, e.g. ``oat retrain`` from the champion) loads weights only, into the same model spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.config import JobConfig
from pipeline.files import FORMAT, CheckpointError, load_checkpoint
from pipeline.science.model import ModelSpec, RobustNet


def model_checkpoint(model: RobustNet, job: JobConfig, epoch: int, **extra: Any) -> dict[str, Any]:
    return {"format": FORMAT, "model_spec": model.spec.to_dict(), "state_dict": model.state_dict(),
            "job": job.to_dict(), "epoch": epoch, **extra}


def train_state(model: RobustNet, job: JobConfig, epoch: int, opt: torch.optim.Optimizer, sched: Any,
                history: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """``latest.pt``: everything a restarted run needs to continue exactly."""
    return model_checkpoint(model, job, epoch, kind="train", optimizer=opt.state_dict(),
                            scheduler=sched.state_dict(), history=history, best=best)


def check_resumable(ckpt: dict[str, Any], model: RobustNet, job: JobConfig, path: Path) -> None:
    if ckpt.get("kind") != "train":
        raise CheckpointError(f"{path} is not a training checkpoint (no optimiser state to resume from)")
    if ModelSpec.from_dict(ckpt["model_spec"]) != model.spec:
        raise CheckpointError(
            f"{path} belongs to a different model ({ckpt['model_spec']['method']} "
            f"{ckpt['model_spec']['backbone']}); use another --out folder, or --fresh to start over")
    old = ckpt["job"]
    for section in ("method", "attack", "optim"):
        if old.get(section) != job.to_dict()[section]:
            raise CheckpointError(f"{path} was trained with a different '{section}' section; use another "
                                  f"--out folder, or --fresh to start over")


@dataclass
class Restored:
    start_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None


def restore(out: Path, model: RobustNet, job: JobConfig, opt: torch.optim.Optimizer, sched: Any,
            device: torch.device, *, resume: bool, init: Path | None) -> Restored:
    """Resume from ``out/latest.pt`` when ``resume`` and it exists; else warm-start the weights from ``init``."""
    latest = out / "latest.pt"
    if resume and latest.is_file():
        ckpt = load_checkpoint(latest, map_location=device)
        check_resumable(ckpt, model, job, latest)
        model.load_state_dict(ckpt["state_dict"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        return Restored(int(ckpt["epoch"]) + 1, list(ckpt["history"]), ckpt.get("best"))
    if init is not None:
        ckpt = load_checkpoint(init, map_location=device)
        if ModelSpec.from_dict(ckpt["model_spec"]) != model.spec:
            raise CheckpointError(f"train.init_from={job.train.init_from} holds another model "
                                  f"({ckpt['model_spec']['backbone']}, {ckpt['model_spec']['method']}): "
                                  "a warm start needs the same model spec")
        model.load_state_dict(ckpt["state_dict"])
    return Restored()


def is_artifact_uri(src: str) -> bool:
    """``train.init_from`` names an artifact to fetch (``runs:/…``, ``models:/…``, ``s3://…``), not a local file."""
    return "://" in src or src.startswith(("runs:/", "models:/"))


def init_path(job: JobConfig, init: str | Path | None) -> Path | None:
    """The local file of the warm start: ``init`` as fetched by the launcher, else ``train.init_from`` when it
    is a local path. A URI (``runs:/…``, ``s3://…``) must be fetched by the launcher first."""
    if init is not None:
        return Path(init)
    src = job.train.init_from
    if not src:
        return None
    if is_artifact_uri(src):
        raise CheckpointError(f"train.init_from={src} is a URI: the launcher (oat train, oat run, oat retrain) "
                              "fetches it and passes the local file to fit(init=...)")
    return Path(src)
