"""infra/: the Kubernetes manifests validated against the published schemas (KubeRay v1.7.0's CRDs from
../shared/schemas, Kubernetes' own kinds from the kubernetes-validate package), secrets kept out of them, the
schedules in step with the job, and the image's build recipe linted with hadolint. (No cluster and no Docker
daemon can run here: these are the checks that can.)"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pipeline.config import load_job
from pipeline.cron import Cron

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "infra" / "k8s"
CRDS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"
K8S_VERSION = "1.33.0"


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(f.read_text())):
            if doc and doc.get("kind") != "Kustomization":
                out.append((f"{f.name}#{i}:{doc['kind']}", doc))
    return out


def _strict(schema: Any) -> Any:
    """A CRD's structural schema as the API server applies it, plus: an unknown field is an error (the server
    would silently drop it, which is how a typo in a manifest goes unnoticed)."""
    if isinstance(schema, dict):
        s = {k: _strict(v) for k, v in schema.items()}
        if "properties" in s and not s.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in s:
            s["additionalProperties"] = False
        return s
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    for f in CRDS.glob("*.yaml"):
        crd = yaml.safe_load(f.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
            schema = _strict(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
            schema["properties"]["metadata"] = {"type": "object"}
            return jsonschema.Draft7Validator(schema)
    raise AssertionError(f"no CRD for {kind} in {CRDS}")


def validate(doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith("ray.io/"):
        errors = sorted(crd_validator(doc["kind"]).iter_errors(doc), key=lambda e: list(e.path))
        if errors:
            raise AssertionError("; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:5]))
    else:
        import kubernetes_validate

        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name,doc", manifests(), ids=[n for n, _ in manifests()])
def test_manifest_validates_against_its_published_schema(name, doc):
    validate(doc)


def test_the_validator_rejects_what_a_cluster_would_reject():
    docs = dict(manifests())
    cluster = copy.deepcopy(docs["raycluster.yaml#0:RayCluster"])
    cluster["spec"]["workerGroupSpec"] = cluster["spec"].pop("workerGroupSpecs")  # a typo
    with pytest.raises(AssertionError, match="workerGroupSpec"):
        validate(cluster)
    cron = copy.deepcopy(docs["raycronjob-retrain.yaml#0:RayCronJob"])
    del cron["spec"]["schedule"]
    with pytest.raises(AssertionError, match="schedule"):
        validate(cron)
    import kubernetes_validate

    deploy = copy.deepcopy(docs["mlflow.yaml#1:Deployment"])
    deploy["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


def test_kustomization_lists_files_that_exist_and_every_image_is_the_pipelines():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    images = {c["image"] for _, d in manifests() for c in _containers(d)}
    assert "oat-pipeline" in images and {i.split(":")[0] for i in images} <= {"oat-pipeline", "postgres",
                                                                               "minio/minio"}
    assert [i["name"] for i in kust["images"]] == ["oat-pipeline"]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("containers", "initContainers") and isinstance(v, list):
                    found.extend(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(doc)
    return found


def test_no_secret_in_any_manifest():
    """Credentials only by reference to a Secret: no Secret objects, no literal values in env vars whose
    names say they hold one, nothing that looks like a key."""
    text = "\n".join(f.read_text() for f in K8S.glob("*.yaml"))
    assert not re.search(r"(?m)^kind:\s*Secret\b", text)
    assert not re.search(r"AKIA[0-9A-Z]{16}", text) and "BEGIN PRIVATE KEY" not in text
    for name, doc in manifests():
        for c in _containers(doc):
            for env in c.get("env", []):
                if re.search(r"PASSWORD|SECRET|TOKEN|_KEY|URI$", env["name"]) and env["name"] not in (
                        "MLFLOW_TRACKING_URI",):
                    assert "valueFrom" in env and "value" not in env, f"{name}: {env['name']} holds a literal"
    for _, doc in manifests():
        if doc["kind"] == "ConfigMap":
            assert not [k for k in doc["data"] if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", k)]


def test_cluster_schedules_are_the_jobs_schedule_and_entrypoints_name_real_jobs():
    docs = dict(manifests())
    job = load_job(REPO / "jobs" / "oats_wrn.yaml")
    assert job.schedule and Cron.parse(job.schedule)
    ray_cron = docs["raycronjob-retrain.yaml#0:RayCronJob"]["spec"]
    k8s_cron = docs["cronjob-retrain.yaml#0:CronJob"]["spec"]
    assert ray_cron["schedule"] == k8s_cron["schedule"] == job.schedule
    assert k8s_cron["concurrencyPolicy"] == "Forbid"
    entrypoints = [ray_cron["jobTemplate"]["entrypoint"], docs["rayjob-oats-wrn.yaml#0:RayJob"]["spec"]["entrypoint"],
                   " ".join(k8s_cron["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"])]
    for ep in entrypoints:
        (path,) = re.findall(r"jobs/\S+\.yaml", ep)
        load_job(REPO / path)  # a valid job file
    assert "oat retrain jobs/oats_wrn.yaml" in entrypoints[0] and entrypoints[1] == "oat run jobs/oats_wrn.yaml"
    assert job.retrain.runner == "ray"  # on the cluster, retraining runs on the Ray workers
    workers = docs["rayjob-oats-wrn.yaml#0:RayJob"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] * 1 >= 1 and workers["template"]["spec"]["containers"][0]["resources"]["limits"][
        "nvidia.com/gpu"] == "1"


def test_dockerfile_lints_clean_and_copies_only_what_exists():
    hadolint = Path(sys.executable).with_name("hadolint")
    docker = REPO / "infra" / "docker"
    r = subprocess.run([str(hadolint), "--config", str(docker / ".hadolint.yaml"), str(docker / "Dockerfile")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (docker / "Dockerfile").read_text()
    for line in re.findall(r"(?m)^COPY (?!--from)(.+)$", text):
        parts = [p for p in line.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"COPY {src}: not in the repository"
    # the image installs the pinned versions the machines use
    assert "requirements-torch.txt" in text and "ffcv-build-constraints.txt" in text
    bad = REPO / "test-artifacts" / "Dockerfile.bad"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text(text.replace("USER 1000:1000", "USER root").replace("rm -rf /var/lib/apt/lists/*", "true"))
    r = subprocess.run([str(hadolint), "--config", str(docker / ".hadolint.yaml"), str(bad)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and ("DL3002" in r.stdout or "DL3009" in r.stdout)
