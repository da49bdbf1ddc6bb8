"""``oat retrain JOB``: retrain a registered OAT/OATS model when there is reason to, and promote it only when
its trade-off curve passes the gate against the current champion.

1. **Reason.** No champion yet; ``--force``; the data set's manifest changed (its fingerprint differs from the
   champion's ``data_fingerprint`` tag); or the champion is older than ``retrain.max_age_days``. Otherwise the
   run stops there, saying why (exit 0).
2. **Train.** From scratch or warm-started from the champion's checkpoint (``retrain.init``), in this
   process or on Ray as ``oat run`` does (``retrain.runner``), into
   ``<retrain.folder>/<model>/<key>``, where the key hashes the job, the data fingerprint and the champion's
   version: a rerun of the same retraining (after a crash, a kill, a lost node) resumes it, and a finished one
   is not trained again. The training run is an MLflow run tagged ``kind=retrain``.
3. **Evaluate** on the fixed test split (the job's test attacks: AutoAttack when listed).
4. **Gate.** Every (λ, width) the champion has must be within ``retrain.max_sa_drop`` points of its clean and
   ``retrain.max_ra_drop`` points of its robust accuracy (AutoAttack where both have it, else PGD).
5. **Register** the new version (its tags: the curve, the data fingerprint, the version it was compared with,
   the decision and why). Passed: alias ``champion`` moves to it. Failed: it gets alias ``challenger`` and the
   champion stays. The alias moves last, so a run that dies earlier leaves the champion as it was.

Every decision is appended to ``<retrain.folder>/<model>/decisions.jsonl``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, derive_job
from pipeline.files import atomic_write_text
from pipeline.science.curves import Point, by_attack, flag_lines, headline_attack, read_flags, read_points
from pipeline.science.methods import get_method


@dataclass
class Decision:
    model: str
    action: str  # skip | promoted | challenger
    reason: str
    champion_before: str | None = None  # version
    version: str | None = None  # the version this run registered
    gate: list[str] = field(default_factory=list)  # what failed the gate (empty: passed)
    run_id: str | None = None
    out: str | None = None
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def data_fingerprint(job: JobConfig) -> str:
    """The prepared data set's fingerprint (:func:`pipeline.data.beton.manifest_fingerprint`)."""
    from pipeline.data.beton import manifest_fingerprint, open_prepared

    return manifest_fingerprint(open_prepared(job.data, log=lambda _m: None).manifest)


def _model_name(job: JobConfig) -> str:
    return str(job.retrain.model_name or job.tracking.model_name or job.name)


def _reason_to_train(job: JobConfig, champ: Any | None, fp: str, force: bool) -> str | None:
    if champ is None:
        return "no champion yet"
    if force:
        return "forced (--force)"
    had = champ.tags.get("data_fingerprint")
    if had != fp:
        return f"the data set's manifest changed ({had or 'unknown'} → {fp})"
    age_days = (time.time() * 1000 - int(champ.creation_timestamp)) / 86_400_000
    if job.retrain.max_age_days is not None and age_days > job.retrain.max_age_days:
        return (f"the champion (v{champ.version}) is {age_days:.1f} days old "
                f"(retrain.max_age_days={job.retrain.max_age_days:g})")
    return None


def _key(job: JobConfig, fp: str, champ: Any | None) -> str:
    d = job.to_dict()
    for k in ("retrain", "schedule", "tracking", "description"):
        d.pop(k, None)
    doc = json.dumps([d, fp, champ.version if champ is not None else None], sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:12]


def _champion_points(uri: str, champ: Any, folder: Path) -> list[Point]:
    """The champion's test curve: the ``eval.json`` of the run that trained it."""
    from pipeline.platform.registry import download_run_file

    return read_points(download_run_file(uri, champ.run_id, "eval.json", folder / "champion"))


def gate(new: list[Point], old: list[Point], max_sa_drop: float, max_ra_drop: float) -> tuple[list[str], str]:
    """What fails the gate (empty: it passes), and the attack compared. Drops are in points (%)."""
    attack = headline_attack(new, old)
    a, b = by_attack(new, attack), by_attack(old, attack)
    have = {(p.lam, p.width): p for p in a}
    out = []
    for o in sorted(b, key=lambda p: (p.width, p.lam)):
        n = have.get((o.lam, o.width))
        where = f"λ={o.lam:g}" + ("" if o.width == 1.0 else f" w={o.width:g}")
        if n is None:
            out.append(f"{where}: not evaluated by the new model")
            continue
        ds, dr = 100 * (o.clean_acc - n.clean_acc), 100 * (o.robust_acc - n.robust_acc)
        if ds > max_sa_drop:
            out.append(f"{where}: SA {100 * n.clean_acc:.1f} vs {100 * o.clean_acc:.1f} "
                       f"(−{ds:.1f} > {max_sa_drop:g})")
        if dr > max_ra_drop:
            out.append(f"{where}: RA {100 * n.robust_acc:.1f} vs {100 * o.robust_acc:.1f} "
                       f"(−{dr:.1f} > {max_ra_drop:g})")
    return out, attack


def retrain(job: JobConfig, *, force: bool = False, progress: bool = True) -> Decision:
    from pipeline.platform.registry import champion
    from pipeline.platform.tracking import TrackingError, error_reason, mlflow_client, redact, resolve_uri

    if not get_method(job.method.name).conditioned:
        raise ValueError("method.name: oat retrain is for OAT/OATS models (a PGDAT baseline is not registered)")
    job.tracking.enabled = True
    job.tracking.uri = uri = resolve_uri(job.tracking.uri)
    name = _model_name(job)
    root = Path(job.retrain.folder) / name
    root.mkdir(parents=True, exist_ok=True)
    client = mlflow_client(uri)
    fp = data_fingerprint(job)
    try:
        champ = champion(client, name, job.tracking.alias)
    except Exception as exc:  # noqa: BLE001
        raise TrackingError(f"MLflow {redact(uri)}: could not read model '{name}': {error_reason(exc)}") from None
    reason = _reason_to_train(job, champ, fp, force)
    before = str(champ.version) if champ is not None else None
    if reason is None:
        assert champ is not None
        age = (time.time() * 1000 - int(champ.creation_timestamp)) / 86_400_000
        d = Decision(name, "skip", f"the data set is unchanged and the champion (v{champ.version}) is {age:.1f} "
                     "days old", before, fingerprint=fp)
        return _record(root, d)
    key = _key(job, fp, champ)
    out = root / key
    print(f"retrain {name}: {reason}; training into {out}", flush=True)
    changes: dict[str, Any] = {"name": f"{job.name}_retrain_{key}", "tracking.register": False,
                               "tracking.enabled": True, "tracking.uri": uri}
    if job.retrain.init == "champion" and champ is not None:
        changes["train.init_from"] = f"runs:/{champ.run_id}/checkpoints/final.pt"  # each worker fetches it
    tjob = derive_job(job, changes)
    tags = {"kind": "retrain", "retrain.model": name, "retrain.reason": reason,
            "retrain.compared_with": f"v{before}" if before else "none", "data_fingerprint": fp}
    info = _train(tjob, out, tags, job.retrain.runner, progress)
    new_pts = read_points(out / "eval.json")
    failures: list[str] = []
    attack = headline_attack(new_pts)
    if champ is not None:
        failures, attack = gate(new_pts, _champion_points(uri, champ, out), job.retrain.max_sa_drop,
                                job.retrain.max_ra_drop)
    if not job.tracking.register_flagged:  # a collapsed or masked point is never a champion
        failures += flag_lines(read_flags(out / "eval.json"))
    action = "challenger" if failures else "promoted"
    why = (f"{reason}; " + ("gate failed: " + "; ".join(failures) if failures else
                            ("gate passed against v" + before if before else "first champion"))
           + f" ({attack})")
    d = Decision(name, action, why, before, None, failures, info.run_id, str(out), fp)
    d.version = _register(client, info, d, job.tracking.alias, key, new_pts, tjob)
    return _record(root, d)


def _train(tjob: JobConfig, out: Path, tags: dict[str, str], runner: str, progress: bool) -> Any:
    """Train the challenger into ``out`` (Ray Train workers, or this process); its MLflow run's info."""
    from pipeline.platform.tracking import begin

    if runner == "ray":  # the cluster's way: Ray Train workers, checkpoints in ray.storage_path
        from pipeline.launch.ray_run import run_job

        res = run_job(tjob, out=out, label="retrain", source="oat retrain", tags=tags)
        assert res.tracking is not None
        return res.tracking
    from pipeline.launch.local import train_here

    info = begin(tjob, where=str(out.resolve()), source="oat retrain", tags=tags)
    train_here(tjob, out, info=info, progress=progress)
    return info


def _register(client: Any, info: Any, d: Decision, alias: str, key: str, points: list[Point], tjob: JobConfig
              ) -> str:
    """Register the challenger (with its model card), tag the version and the run with the decision (appended to
    the card), then move the alias."""
    from pipeline.data.datasets import get_dataset
    from pipeline.platform.registry import record_decision, register_model
    from pipeline.platform.tracking import curve_tags, model_card

    assert d.out is not None
    dicts = [p.to_dict() for p in points]
    data = {"name": tjob.data.dataset, "digest": d.fingerprint, "origin": get_dataset(tjob.data.dataset).origin}
    version = str(register_model(info, Path(d.out) / "final.pt", d.model, None, curve_tags(dicts),
                                 model_card(tjob, dicts, data, info.run_id)))
    record_decision(client, d.model, version, info.run_id,
                    {"data_fingerprint": d.fingerprint, "retrain_key": key,
                     "compared_with": f"v{d.champion_before}" if d.champion_before else "none",
                     "decision": d.action, "decision_reason": d.reason[:4000]},
                    {"retrain.decision": d.action, "retrain.version": f"v{version}",
                     "retrain.gate": "; ".join(d.gate)[:4000] or "passed"},
                    "challenger" if d.gate else alias)
    return version


def _record(root: Path, d: Decision) -> Decision:
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **d.to_dict()})
    with open(root / "decisions.jsonl", "a") as f:
        f.write(line + "\n")
    verdict = {"skip": "nothing to do", "promoted": f"v{d.version} is the new champion",
               "challenger": f"v{d.version} stays a challenger; the champion is still v{d.champion_before}"}[d.action]
    print(f"retrain {d.model}: {verdict}: {d.reason}", flush=True)
    atomic_write_text(line + "\n", root / "last_decision.json")
    return d
