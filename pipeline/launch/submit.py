"""``oat submit``: ``oat run JOB`` through Ray's job submission API, with this folder as the working dir.

The equivalent with Ray's own CLI (what the README shows)::

    ray job submit --address http://HEAD:8265 --working-dir . -- oat run jobs/oats_wrn.yaml

The working dir is uploaded without data, runs, checkpoints or the virtual environment (``.gitignore``
and :data:`EXCLUDES`); the cluster's nodes need the project installed (``infra/setup.sh``) and their own
S3 credentials in their environment: none are sent with the job.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

EXCLUDES = [".venv/", "runs/", "data/", "*.beton", "*.pt", ".git/", "__pycache__/", ".*_cache/", ".oat-stack/",
            "mlruns/", "mlartifacts/", "mlflow.db", "*.env"]  # *.env: infra/local/stack.env holds keys
DEFAULT_ADDRESS = "http://127.0.0.1:8265"


class SubmitError(RuntimeError):
    """The cluster's job API unreachable, or a job that failed."""


class ClusterError(RuntimeError):
    """A Ray cluster to join that does not answer within ``OAT_RAY_CONNECT_TIMEOUT_S`` (``oat run``, ``oat sweep``)."""


def entrypoint(job: str, overrides: Sequence[str] = (), name: str | None = None, storage: str | None = None) -> str:
    args = ["oat", "run", job]
    for o in overrides:
        args += ["--set", o]
    if name:
        args += ["--name", name]
    if storage:
        args += ["--storage", storage]
    return shlex.join(args)


def _probe(addr: str) -> None:
    """Fail in seconds, not after the client's minutes of retries, when nothing answers at ``addr``."""
    import urllib.error
    import urllib.request

    from pipeline.timeouts import timeout_s

    timeout = timeout_s("job_api")
    url = addr if "://" in addr else f"http://{addr}"
    try:
        urllib.request.urlopen(f"{url.rstrip('/')}/api/version", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # something answered (e.g. 401 without a token): let the client say more
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SubmitError(f"cannot reach Ray's job API at {addr} within {timeout:g} s ({reason}): is the head "
                          "node's dashboard running? (ray start --head --include-dashboard=true; "
                          "OAT_JOB_API_TIMEOUT_S waits longer)") from None


def submit(job: str, overrides: Sequence[str] = (), *, address: str | None = None, wait: bool = True,
           name: str | None = None, storage: str | None = None) -> int:
    from pipeline.config import load_job

    load_job(job, overrides)  # a bad job fails here, not on the cluster
    rel = os.path.relpath(Path(job).resolve(), Path.cwd())
    if rel.startswith(".."):
        raise SubmitError(f"{job} is outside the working dir {Path.cwd()}: run oat submit from the project folder")
    addr = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    _probe(addr)
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(addr)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, ValueError... all mean "no job API there"
        raise SubmitError(f"cannot reach Ray's job API at {addr} ({type(exc).__name__}): is the head node's "
                          "dashboard running? (ray start --head --include-dashboard=true)") from None
    from pipeline.platform.tracking import git_commit, redact

    env = {"OAT_GIT_COMMIT": commit} if (commit := git_commit()) else {}  # the job's copy has no .git
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and redact(uri) == uri:  # a plain URI is no secret; one with user:password@ is not sent
        env["MLFLOW_TRACKING_URI"] = uri
    sid = client.submit_job(entrypoint=entrypoint(rel, overrides, name, storage),
                            runtime_env={"working_dir": ".", "excludes": EXCLUDES, "env_vars": env})
    print(f"submitted {sid} to {addr}: {entrypoint(rel, overrides, name, storage)}", flush=True)
    if not wait:
        print(f"follow it with: ray job logs --address {addr} --follow {sid}")
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(sid):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(follow())
    status = client.get_job_status(sid)
    print(f"job {sid}: {status}")
    if status != JobStatus.SUCCEEDED:
        info = client.get_job_info(sid)
        raise SubmitError(f"job {sid} ended {status}: {info.message or ''}".strip())
    return 0
