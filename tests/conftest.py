"""Shared fixtures. Everything here runs on the CPU; no test needs a GPU."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import JobConfig, job_from_dict
from pipeline.science.model import ModelSpec, RobustNet, build_model

os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def tiny_job(**sections: Any) -> JobConfig:
    """A digits job small enough to train in seconds: narrow CNN, few steps, few eval images."""
    base: dict[str, Any] = {
        "name": "tiny",
        "data": {"dataset": "digits"},
        "model": {"backbone": "small_cnn", "channels": [8, 16, 16], "dim": 8},
        "method": {"name": "oat"},
        "attack": {"eps": 0.2, "steps": 2},
        "optim": {"lr": 0.05},
        "train": {"epochs": 3, "batch_size": 32, "device": "cpu", "max_steps_per_epoch": 4},
        "eval": {"batch_size": 50, "every": 1, "max_images": 50, "test_steps": 3},
        # a model trained for seconds is often flagged (collapsed): the registry's plumbing is tested regardless
        "tracking": {"register_flagged": True},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return job_from_dict(base)


def tiny_spec(**kw: Any) -> ModelSpec:
    d: dict[str, Any] = dict(backbone="small_cnn", in_channels=1, num_classes=10, input_size=[8, 8], method="oat",
                             lambdas=[0.0, 0.1, 0.2, 0.3, 0.4, 1.0], widths=[1.0], film=True, dual_bn=True,
                             encoding="rand", dim=8, channels=[8, 16, 16])
    d.update(kw)
    return ModelSpec(**d)


def tiny_model(seed: int = 0, **kw: Any) -> RobustNet:
    torch.manual_seed(seed)
    return build_model(tiny_spec(**kw))


@pytest.fixture(scope="session", autouse=True)
def oat_cache(tmp_path_factory):
    """Prepared .beton sets go to a per-session cache, not the user's ~/.cache/oat."""
    path = tmp_path_factory.mktemp("oat-cache")
    old = os.environ.get("OAT_CACHE_DIR")
    os.environ["OAT_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("OAT_CACHE_DIR", None)
    else:
        os.environ["OAT_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback, started once per session, with its own keys."""
    from pipeline.platform.services import S3Server, free_port

    server = S3Server(tmp_path_factory.mktemp("s3"), port=free_port(), buckets=("oat", "data")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The server's endpoint and keys in this test's environment (as a user would export them)."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return s3_server


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory, oat_cache):
    """A real two-node Ray cluster on this machine (`ray start --head` on 127.0.0.2, a second node on
    127.0.0.3), token-authenticated, started once per session; stopped without touching other Rays."""
    from pipeline.platform.services import RayCluster

    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="oat-ray-")), nodes=2, cpus_per_node=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def job_factory():
    return tiny_job


@pytest.fixture(scope="session")
def stack():
    """The real local stack (`oat stack up`): SeaweedFS S3, an MLflow server with a SQLite backend and proxied
    artifacts in S3, a Ray head; free ports, fresh keys, its own folder; `down` at the end of the session."""
    from pipeline.platform.local_stack import DEFAULTS, LocalStack, ensure_env_file
    from pipeline.platform.services import free_ports

    root = Path(tempfile.mkdtemp(prefix="oat-stack-"))  # short: Ray's socket paths have a length limit
    env_file = root / "stack.env"
    keys = ensure_env_file(env_file)
    ports = dict(zip(["OAT_S3_PORT", "OAT_MLFLOW_PORT", "OAT_RAY_PORT", "OAT_RAY_DASHBOARD_PORT"], free_ports(4)))
    lines = [f"{k}={v}" for k, v in {**DEFAULTS, **keys, **ports}.items()]
    env_file.write_text("\n".join(lines) + "\n")
    st = LocalStack(root, env_file)
    st.up()
    yield st
    st.down()


@pytest.fixture(scope="session")
def mlflow_uri(stack):
    return stack.mlflow().uri


# fixtures that start a real service (S3 server, Ray cluster, the local stack): a test that uses one, directly or
# through another fixture, belongs to the integration tier and must say so (`pytest -m "not integration"` is the
# unit tier, docs/development.md)
SERVICE_FIXTURES = frozenset({"s3_server", "ray_cluster", "stack", "main_job"})


def pytest_collection_modifyitems(config, items):
    """Every test that starts a real service is marked ``integration`` (a collection error names the ones that are
    not).

    Under pytest-xdist (`--dist loadgroup`, infra/test.sh) a test file runs whole on one process, so its
    module fixtures run once. test_retrain and test_tracking share one process and run in that order: the
    tracking tests stop and restart the stack's services, which the retraining tests need up."""
    shared = {"test_retrain": "stack", "test_tracking": "stack"}
    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1].removesuffix(".py")
        item.add_marker(pytest.mark.xdist_group(shared.get(module, module)))
    unmarked = [f"{item.nodeid} (uses {', '.join(sorted(SERVICE_FIXTURES & set(item.fixturenames)))})"
                for item in items
                if SERVICE_FIXTURES & set(item.fixturenames) and item.get_closest_marker("integration") is None]
    if unmarked:
        raise pytest.UsageError("tests that start a real service must be marked integration:\n  "
                                + "\n  ".join(unmarked))
