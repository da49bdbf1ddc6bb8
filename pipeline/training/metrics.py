"""Metric names, one function for every consumer: the loop's records, Ray's reports and MLflow.

``metric_key("val/clean_acc", 0.1, 0.5)`` is ``val/clean_acc/lam_0.1/w_0.5`` (the width only when it is not 1).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# an epoch record's scalars and their metric names
EPOCH_SCALARS = {"loss": "loss", "lr": "lr", "images_per_s": "images_per_s", "seconds": "epoch_seconds",
                 "data_wait_share": "data_wait_share", "train_clean_acc": "train_clean_acc",
                 "train_adv_acc": "train_adv_acc", "train_eps": "train_eps"}


def metric_key(kind: str, lam: float, width: float) -> str:
    """``val/clean_acc/lam_0.1`` (``/w_0.5`` appended when the width is not 1)."""
    return f"{kind}/lam_{lam:g}" + ("" if width == 1.0 else f"/w_{width:g}")


def points_metrics(points: Iterable[Mapping[str, Any]], prefix: str) -> dict[str, float]:
    """``test/clean_acc/lam_0.1``, ``test/robust_acc/lam_0.1`` (PGD) and ``test/robust_acc_autoattack/lam_0.1``
    (any other attack: its name after ``robust_acc_``)."""
    out: dict[str, float] = {}
    for p in points:
        attack = p.get("attack", "pgd")
        if attack == "pgd":
            out[metric_key(f"{prefix}/clean_acc", p["lambda"], p["width"])] = float(p["clean_acc"])
        name = "robust_acc" if attack == "pgd" else f"robust_acc_{attack}"
        out[metric_key(f"{prefix}/{name}", p["lambda"], p["width"])] = float(p["robust_acc"])
    return out


def epoch_metrics(record: Mapping[str, Any]) -> dict[str, float]:
    """An epoch record of ``fit`` as flat metrics: its scalars and its validation points."""
    out = {new: float(record[old]) for old, new in EPOCH_SCALARS.items()
           if isinstance(record.get(old), (int, float)) and not isinstance(record.get(old), bool)}
    out.update(points_metrics(record.get("val", []), "val"))
    return out
