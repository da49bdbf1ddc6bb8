"""Metric names, one function for every consumer: the loop's records, Ray's reports and MLflow.

``metric_key("val/clean_acc", 0.1, 0.5)`` is ``val/clean_acc/lam_0.1/w_0.5`` (the width only when it is not 1):
the per-epoch validation points and Ray's reports. The test curve of a finished run is logged the other way round,
so that a metrics UI draws it as a line over λ: one key per quantity, attack and width (``test/clean_acc``,
``test/robust_acc/apgd``, ``test/robust_acc/pgd20``, ``…/w_0.5``), with step = round(100·λ) (:func:`curve_metrics`).
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


def curve_step(lam: float) -> int:
    """The step of λ on a test curve: round(100·λ) (λ = 0.25 is step 25)."""
    return round(100 * float(lam))


def attack_key(point: Mapping[str, Any]) -> str:
    """A test point's attack as a metric-key part: ``pgd20``, ``apgd-ce``, ``apgd-t``, ``apgd`` (the per-image worst
    case of APGD-CE and APGD-T), ``autoattack`` (the standard version only), ``fab-t``, ``square``, ``worst-case``."""
    attack = str(point.get("attack", "pgd"))
    if attack == "pgd":
        return f"pgd{int(point.get('steps') or 0)}"
    if attack == "worst-case":
        over = {str(a).lower() for a in (point.get("settings") or {}).get("over") or []}
        return "apgd" if over and over <= {"apgd-ce", "apgd-t"} else "worst-case"
    return attack


def curve_metrics(points: Iterable[Mapping[str, Any]], prefix: str = "test") -> dict[int, dict[str, float]]:
    """Test points as curves over λ, by step (:func:`curve_step`): ``{20: {"test/clean_acc": 0.97,
    "test/robust_acc/apgd": 0.41, "test/robust_acc/pgd20": 0.55, "test/clean_acc/w_0.5": …}}``."""
    out: dict[int, dict[str, float]] = {}
    clean_from: dict[tuple[int, str], str] = {}
    for p in points:
        step, w = curve_step(p["lambda"]), float(p.get("width", 1.0))
        suffix = "" if w == 1.0 else f"/w_{w:g}"
        at = out.setdefault(step, {})
        at[f"{prefix}/robust_acc/{attack_key(p)}{suffix}"] = float(p["robust_acc"])
        clean = f"{prefix}/clean_acc{suffix}"
        # clean accuracy: PGD's point where there is one (every attack's run measures it; PGD's covers the most images)
        if clean not in at or p.get("attack", "pgd") == "pgd" and clean_from.get((step, clean)) != "pgd":
            at[clean] = float(p["clean_acc"])
            clean_from[(step, clean)] = str(p.get("attack", "pgd"))
    return out


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
