"""`oat run` / `oat submit` / `ray job submit` on a real two-node Ray cluster (no mocks).

Every job here is the tiny digits job, run through the real entry points as subprocesses with the
cluster's address and token in their environment, exactly as a user's shell would have them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from pipeline.training.loop import fit

from .conftest import tiny_job

pytestmark = pytest.mark.integration  # every test here runs on the real two-node Ray cluster

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def ray_job(tmp: Path, name: str, **sections) -> Path:
    """A job file for a 2-worker run, one worker per node."""
    base = {"train": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 4},
            "ray": {"num_workers": 2, "cpus_per_worker": 1, "placement_strategy": "STRICT_SPREAD", "max_failures": 2}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    job = tiny_job(**base)
    job.name = name
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(job.to_dict()))
    return path


def env_for(cluster) -> dict[str, str]:
    return {**os.environ, **cluster.env()}


def oat_run(cluster, job: Path, storage: Path | str, out: Path, *extra: str, timeout: float = 600):
    return subprocess.run([str(BIN / "oat"), "run", str(job), "--storage", str(storage), "--out", str(out), *extra],
                          env=env_for(cluster), cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def params(path: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(path, weights_only=True)
    return ckpt["state_dict"]


@pytest.fixture(scope="module")
def baseline(ray_cluster, tmp_path_factory):
    """An uninterrupted 2-worker, 2-node run (also the reference for the restart test)."""
    tmp = tmp_path_factory.mktemp("ray-baseline")
    job = ray_job(tmp, "baseline", train={"epochs": 6, "max_steps_per_epoch": 6})
    proc = oat_run(ray_cluster, job, tmp / "store", tmp / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp, job, proc


def test_two_node_ddp_job_finishes_with_a_checkpoint(baseline):
    tmp, _, proc = baseline
    out = tmp / "out"
    assert {"final.pt", "latest.pt", "eval.json", "tradeoff.png", "history.json", "workers.json"} <= {
        p.name for p in out.iterdir()}
    workers = json.loads((out / "workers.json").read_text())
    assert sorted(w["node_ip"] for w in workers) == ["127.0.0.2", "127.0.0.3"]  # one worker per node
    assert [w["rank"] for w in workers] == [0, 1] and all(w["device"] == "cpu" for w in workers)
    stored = sorted(p.name for p in (tmp / "store" / "baseline").iterdir() if p.is_dir())
    assert "final" in stored and len([s for s in stored if s.startswith(("epoch_", "final"))]) == 2  # num_to_keep
    assert (tmp / "store" / "baseline" / "final" / "final.pt").is_file()
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == list(range(6)) and all(h["steps"] == 6 for h in hist)
    assert "test split" in proc.stdout and "checkpoints in" in proc.stdout


def test_ddp_matches_one_worker_with_the_same_micro_batches(ray_cluster, tmp_path):
    """2 workers at global batch 32 = 1 worker at batch 32 split in 2 micro-batches (train.accumulate=2):
    the same samples, λ draws and random starts per micro-batch, each with its own BN statistics (what
    each DDP rank computes). Parameters agree to float rounding (rtol 1e-5); BN running statistics are
    not compared (DDP keeps rank 0's)."""
    sections = {"data": {"loader": "memory"}, "train": {"epochs": 2, "max_steps_per_epoch": 3},
                "eval": {"max_images": 20}}
    job = ray_job(tmp_path, "ddp", **sections)
    proc = oat_run(ray_cluster, job, tmp_path / "store", tmp_path / "out")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one = tiny_job(data={"loader": "memory"}, train={"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3,
                                                     "accumulate": 2}, eval={"max_images": 20})
    fit(one, tmp_path / "one", progress=False, final_test=False)
    plain = tiny_job(data={"loader": "memory"}, train={"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 3},
                     eval={"max_images": 20})
    fit(plain, tmp_path / "plain", progress=False, final_test=False)
    a, b, c = (params(p / "final.pt") for p in (tmp_path / "out", tmp_path / "one", tmp_path / "plain"))
    names = [k for k in a if "running" not in k and "num_batches" not in k]
    for k in names:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    # the check has teeth: one batch of 32 (one set of BN statistics) lands measurably elsewhere
    assert max(float((a[k] - c[k]).abs().max()) for k in names) > 1e-3


def test_a_killed_worker_restarts_from_the_last_checkpoint(ray_cluster, baseline, tmp_path):
    _, job, _ = baseline
    store = tmp_path / "store"
    proc = subprocess.Popen([str(BIN / "oat"), "run", str(job), "--storage", str(store),
                             "--out", str(tmp_path / "out")], env=env_for(ray_cluster), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    killed = None
    while time.monotonic() < deadline and proc.poll() is None:
        placed = store / "baseline" / "epoch_0001" / "workers.json"
        snapshot = store / "baseline" / "checkpoint_manager_snapshot.json"
        # kill once Ray has registered epoch 1's checkpoint (its folder appears a little before that)
        if placed.is_file() and snapshot.is_file() and "epoch_0001" in snapshot.read_text(errors="replace"):
            killed = json.loads(placed.read_text())[1]["pid"]  # the checkpoint names this run's workers
            os.kill(killed, signal.SIGKILL)
            break
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=600)
    assert killed is not None, "the run ended before a worker could be killed:\n" + out[-3000:]
    assert proc.returncode == 0, out[-5000:]
    assert "restoring the run from checkpoint" in out and "resuming" in out  # not from scratch
    a, b = params(tmp_path / "out" / "final.pt"), params(baseline[0] / "out" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit the uninterrupted run's model (CPU, gloo)


def test_ray_job_submit_runs_the_demo_job(ray_cluster, tmp_path):
    """Ray's own CLI, as in the README, against the cluster's dashboard (shortened to 1 epoch of 3 steps)."""
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_cluster.dashboard, "--working-dir", ".", "--",
           "oat", "run", "jobs/demo.yaml", "--storage", str(tmp_path / "store"), "--out", str(tmp_path / "out"),
           "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=3", "--set", "eval.max_images=40",
           "--set", "eval.test_steps=2"]
    proc = subprocess.run(cmd, env=env_for(ray_cluster), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    assert (tmp_path / "out" / "final.pt").is_file() and (tmp_path / "store" / "demo" / "final").is_dir()


def test_oat_submit_follows_the_logs(ray_cluster, tmp_path):
    proc = subprocess.run([str(BIN / "oat"), "submit", "jobs/demo.yaml", "--address", ray_cluster.dashboard,
                           "--storage", str(tmp_path / "store"), "--name", "submitted",
                           "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2",
                           "--set", "eval.max_images=40", "--set", "eval.test_steps=2"],
                          env=env_for(ray_cluster), cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("submitted raysubmit_") and "SUCCEEDED" in proc.stdout
    assert "test split" in proc.stdout  # the job's own output, followed live
    assert (tmp_path / "store" / "submitted" / "final" / "final.pt").is_file()
    bad = subprocess.run([str(BIN / "oat"), "submit", "jobs/demo.yaml", "--address", "http://127.0.0.1:9"],
                         env=env_for(ray_cluster), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot reach Ray's job API at http://127.0.0.1:9" in bad.stderr


def test_s3_storage_and_resubmission_resume(ray_cluster, s3_env, tmp_path):
    """Checkpoints in S3 (the session's SeaweedFS); submitting the finished job again with the same storage
    and name restores its last checkpoint instead of training again."""
    from pipeline.data import s3 as storage

    job = ray_job(tmp_path, "s3run", train={"epochs": 2, "max_steps_per_epoch": 3}, eval={"test_steps": 2})
    first = oat_run(ray_cluster, job, "s3://oat/ray-runs", tmp_path / "out1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    keys = {o["Key"] for o in storage.client().list_objects_v2(Bucket="oat", Prefix="ray-runs/s3run/")["Contents"]}
    assert "ray-runs/s3run/final/final.pt" in keys and "ray-runs/s3run/final/eval.json" in keys
    again = oat_run(ray_cluster, job, "s3://oat/ray-runs", tmp_path / "out2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "restoring the run from checkpoint oat/ray-runs/s3run/final" in again.stdout + again.stderr
    assert "epoch 1/2" not in again.stdout + again.stderr  # nothing trained again
    a, b = params(tmp_path / "out1" / "final.pt"), params(tmp_path / "out2" / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert len(json.loads((tmp_path / "out2" / "history.json").read_text())) == 2
