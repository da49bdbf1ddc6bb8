"""The MLflow model registry: registering a trained model as a servable pyfunc, finding the champion, recording
a retraining decision.

A model version is registered from its run (``register_model``: the checkpoint, the served code and an explicit
signature; see :mod:`pipeline.platform.serving`); the version's tags carry its method, λ, widths and test curve.
Aliases name the champion (``tracking.alias``) and a challenger that failed the retraining gate.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from pipeline.platform.serving import CODE_FILE, requirements, serving_code, signature_for

DECISION_HEADING = "### Retraining decision"
CARD_LIMIT = 5000  # MLflow's model-version description column (String(5000) on PostgreSQL and MySQL)
NOTE_LIMIT = 8000  # MLflow's run-tag value limit (a run's description is the tag mlflow.note.content)


def fit_note(text: str, limit: int) -> str:
    """A description within ``limit`` characters: cut at a line, a fenced table closed again, and said so."""
    if len(text) <= limit:
        return text
    tail = "\n… (cut to fit MLflow's limit: every point is in the run's eval.json)"
    lines, out = text.splitlines(), list[str]()
    for line in lines:
        if sum(len(x) + 1 for x in out) + len(line) + len(tail) + 8 > limit:
            break
        out.append(line)
    if sum(1 for x in out if x.startswith("```")) % 2:  # inside a fenced block: close it
        out.append("```")
    return "\n".join(out) + tail


def register_model(info: Any, checkpoint: Path, name: str, alias: str | None,
                   curve: dict[str, str] | None = None, card: str = "") -> int:
    """Log the checkpoint as this run's pyfunc and register it as ``name`` (alias ``alias``); a run already
    registered under ``name`` is not registered twice. ``curve``: the test curve as tags (``eval_attack``,
    ``clean_acc``, ``robust_acc``; see ``tracking.curve_tags``); ``card``: the version's description (its model
    card, ``tracking.model_card``). Returns the model version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from pipeline.science.model import load_model

    client = MlflowClient(info.uri)
    found = client.search_model_versions(f"name = '{name}' and run_id = '{info.run_id}'")
    if found:
        version = max(int(v.version) for v in found)
    else:
        model = load_model(checkpoint, "cpu")
        code = serving_code(Path(tempfile.mkdtemp(prefix="oat-model-code-")))
        mlflow.set_tracking_uri(info.uri)
        mlflow.start_run(run_id=info.run_id, log_system_metrics=False)
        try:
            with warnings.catch_warnings():
                # "add type hints" / "no input example": the explicit signature below is the contract
                warnings.simplefilter("ignore", UserWarning)
                logged = mlflow.pyfunc.log_model(
                    name="model", python_model=str(CODE_FILE), artifacts={"checkpoint": str(checkpoint)},
                    code_paths=[str(code)], pip_requirements=requirements(),
                    signature=signature_for(model), registered_model_name=name, await_registration_for=60)
        finally:
            mlflow.end_run(status="RUNNING")
            shutil.rmtree(code.parent, ignore_errors=True)
        version = int(logged.registered_model_version)
        spec = model.spec
        for k, v in {"method": spec.method, "backbone": spec.backbone, "lambdas": ",".join(f"{x:g}" for x in
                     model.lambdas), "widths": ",".join(f"{x:g}" for x in model.widths), "run_id": info.run_id,
                     "input_shape": "x".join(map(str, model.input_shape)), **(curve or {})}.items():
            client.set_model_version_tag(name, str(version), k, str(v))
        if card:
            client.update_model_version(name, str(version), description=fit_note(card, CARD_LIMIT))
    if alias:
        client.set_registered_model_alias(name, alias, str(version))
    return version


def champion(client: Any, name: str, alias: str) -> Any | None:
    """The model version behind ``name@alias``; None when the model or the alias does not exist yet."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            return None
        raise


def download_run_file(uri: str, run_id: str, artifact: str, dest: Path) -> Path:
    """One artifact of a run (e.g. the champion's ``eval.json``), downloaded into ``dest``."""
    import mlflow

    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact, dst_path=str(dest),
                                                    tracking_uri=uri))


def record_decision(client: Any, name: str, version: str, run_id: str, version_tags: dict[str, str],
                    run_tags: dict[str, str], alias: str) -> None:
    """Tag the version and its run with a retraining decision, then point ``alias`` at the version (last: until
    then the current holder of the alias is untouched)."""
    from mlflow.entities import RunTag

    for k, v in version_tags.items():
        client.set_model_version_tag(name, version, k, v)
    decision = "\n".join(f"* {k.replace('_', ' ')}: {v}" for k, v in version_tags.items())
    # the card keeps one decision section, the latest (a rerun of the same retraining may decide otherwise)
    card = (client.get_model_version(name, version).description or "").split(DECISION_HEADING)[0].rstrip()
    client.update_model_version(name, version, description=fit_note(f"{card}\n\n{DECISION_HEADING}\n\n{decision}"
                                                                     .strip(), CARD_LIMIT))
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in run_tags.items()])
    client.set_registered_model_alias(name, alias, version)
