"""`oat retrain` (the retraining policy) and `oat schedule` (the local scheduler) end to end against the real
local stack (MLflow server, registry, artifacts in SeaweedFS S3), on digits prepared as a real .beton set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cron import Cron
from tests.conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]
MODEL = "tiny_retrain"


def oat(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="module")
def setup(mlflow_uri, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("retrain")
    r = oat("data", "prepare", "--dataset", "digits", "--out", str(tmp / "beton"))
    assert r.returncode == 0, r.stderr[-2000:]
    # the gate is wide (a tiny model on 100 images is noisy) but a model trained for one step fails it: 60 steps
    # of 64 give 35-50% clean accuracy at every λ, one step ~7% (30 steps of 32 were at chance, so the gate
    # compared noise with noise)
    job = tiny_job(name=MODEL, data={"beton": str(tmp / "beton")},
                   train={"epochs": 3, "max_steps_per_epoch": 20, "batch_size": 64},
                   eval={"max_images": 100},
                   tracking={"enabled": True, "uri": mlflow_uri, "experiment": "retrain", "system_metrics": False},
                   retrain={"folder": str(tmp / "retrain"), "max_sa_drop": 20.0, "max_ra_drop": 25.0},
                   schedule="*/3 * * * * *")
    (tmp / "job.yaml").write_text(job.to_yaml())
    return {"tmp": tmp, "job": str(tmp / "job.yaml"), "uri": mlflow_uri, "folder": tmp / "retrain" / MODEL}


def champion(uri: str, alias: str = "champion"):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri).get_model_version_by_alias(MODEL, alias)


def decision(setup) -> dict:
    return json.loads((setup["folder"] / "last_decision.json").read_text())


@pytest.fixture(scope="module")
def first(setup):
    r = oat("retrain", setup["job"], "--mlflow", setup["uri"], "--quiet")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


@pytest.mark.integration
def test_first_run_becomes_champion(first, setup):
    d = decision(setup)
    assert d["action"] == "promoted" and d["reason"].startswith("no champion yet") and d["champion_before"] is None
    mv = champion(setup["uri"])
    assert mv.version == d["version"] and mv.tags["decision"] == "promoted"
    assert mv.tags["data_fingerprint"] == d["fingerprint"] and mv.tags["compared_with"] == "none"
    assert mv.tags["robust_acc"].count(":") == 6  # the curve, one entry per λ
    # the model card, with the retraining gate's decision appended
    assert "**Serves** λ ∈ {0, 0.1, 0.2, 0.3, 0.4, 1}" in mv.description
    assert f"fingerprint `{d['fingerprint']}`" in mv.description
    assert mv.description.index("### Retraining decision") > mv.description.index("**Threat model**")
    assert "* decision: promoted" in mv.description
    from mlflow.tracking import MlflowClient

    run = MlflowClient(setup["uri"]).get_run(mv.run_id)
    assert run.data.tags["kind"] == "retrain" and run.data.tags["retrain.decision"] == "promoted"


@pytest.mark.integration
def test_unchanged_data_skips(first, setup):
    before = champion(setup["uri"]).version
    r = oat("retrain", setup["job"], "--mlflow", setup["uri"], "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    d = decision(setup)
    assert d["action"] == "skip" and "unchanged" in d["reason"] and champion(setup["uri"]).version == before
    assert "nothing to do" in r.stdout


@pytest.fixture(scope="module")
def changed(first, setup, stack):
    """The cluster's way (jobs/oats_wrn.yaml): `retrain.runner: ray` on the stack's Ray head, warm-started from
    the champion, whose checkpoint each Ray Train worker fetches from MLflow itself."""
    r = oat("data", "prepare", "--dataset", "digits", "--out", str(setup["tmp"] / "beton"), "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    r = oat("retrain", setup["job"], "--mlflow", setup["uri"], "--quiet", "--set", "retrain.init=champion",
            "--set", "retrain.runner=ray", "--set", "ray.num_workers=1",
            "--set", f"ray.storage_path={setup['tmp'] / 'ray'}", env=stack.ray().env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return {**decision(setup), "stdout": r.stdout}


@pytest.mark.integration
def test_changed_manifest_retrains_and_promotes(changed, setup):
    assert changed["action"] == "promoted" and "manifest changed" in changed["reason"]
    assert changed["champion_before"] == "1" and changed["version"] == "2"
    mv = champion(setup["uri"])
    assert mv.version == "2" and mv.tags["compared_with"] == "v1" and "gate passed against v1" in \
        mv.tags["decision_reason"]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(setup["uri"]).get_run(mv.run_id)  # warm-started from v1's weights, fetched from MLflow
    v1 = MlflowClient(setup["uri"]).get_model_version(MODEL, "1")
    assert run.data.params["train.init_from"] == f"runs:/{v1.run_id}/checkpoints/final.pt"
    assert run.data.tags["oat_run_where"].startswith("ray:")  # the run the Ray driver began
    ray_run = setup["tmp"] / "ray" / f"{MODEL}_retrain_{Path(changed['out']).name}"
    assert (ray_run / "final" / "final.pt").is_file()  # trained by Ray Train, checkpoints in ray.storage_path
    assert (Path(changed["out"]) / "final.pt").is_file() and (Path(changed["out"]) / "eval.json").is_file()


@pytest.mark.integration
def test_worse_model_stays_challenger(changed, setup):
    r = oat("retrain", setup["job"], "--mlflow", setup["uri"], "--quiet", "--force",
            "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1", "--set", "optim.lr=0.0001")
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = decision(setup)
    assert d["action"] == "challenger" and d["gate"] and "SA" in " ".join(d["gate"])
    assert champion(setup["uri"]).version == "2"
    ch = champion(setup["uri"], "challenger")
    assert ch.version == d["version"] and ch.tags["decision"] == "challenger" and "gate failed" in \
        ch.tags["decision_reason"]
    assert "* decision: challenger" in ch.description and "* decision reason: " in ch.description
    assert "stays a challenger; the champion is still v2" in r.stdout


@pytest.mark.integration
def test_killed_retraining_leaves_the_champion_and_a_rerun_finishes_it(changed, setup):
    args = ["retrain", setup["job"], "--mlflow", setup["uri"], "--quiet", "--force", "--set", "train.epochs=6"]
    before = {p.parent for p in setup["folder"].glob("*/latest.pt")}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 300:
        new = [p for p in setup["folder"].glob("*/latest.pt") if p.parent not in before]
        if new:
            break
        time.sleep(0.2)
    assert new, "the retraining never wrote a checkpoint"
    os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up of any kind
    proc.wait()
    assert champion(setup["uri"]).version == "2"  # untouched
    killed = new[0].parent
    assert not (killed / "final.pt").exists()
    r = oat(*args)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    d = decision(setup)
    assert d["out"] == str(killed) and d["action"] in ("promoted", "challenger")  # the same run, resumed
    history = json.loads((killed / "history.json").read_text())
    assert [h["epoch"] for h in history] == list(range(6))
    from mlflow.tracking import MlflowClient

    c = MlflowClient(setup["uri"])
    runs = c.search_runs([c.get_experiment_by_name("retrain").experiment_id],
                         f"attributes.run_name = '{MODEL}_retrain_{killed.name}'")
    assert len(runs) == 1 and [m.step for m in c.get_metric_history(runs[0].info.run_id, "loss")] == list(range(1, 7))


def test_cron_schedules():
    from datetime import datetime, timezone

    t = datetime(2026, 11, 30, 5, 12, 30, tzinfo=timezone.utc)  # a Monday
    assert Cron.parse("0 3 * * 0").next_after(t) == datetime(2026, 12, 6, 3, 0, tzinfo=timezone.utc)
    assert Cron.parse("*/10 * * * * *").next_after(t) == datetime(2026, 11, 30, 5, 12, 40, tzinfo=timezone.utc)
    assert Cron.parse("0 9 * * mon-fri").next_after(t) == datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    assert Cron.parse("0 0 29 2 *").next_after(t) == datetime(2028, 2, 29, 0, 0, tzinfo=timezone.utc)
    for bad, msg in (("0 3 * *", "5 fields"), ("61 * * * *", "minute: 61 is outside 0-59"),
                     ("0 0 30 2 *", "never fires")):
        with pytest.raises(ValueError, match=msg):
            Cron.parse(bad).next_after(t)


@pytest.mark.integration
def test_scheduler_fires_on_time_never_overlaps_and_survives_a_restart(changed, setup):
    """Every 3 s; a retraining check (here: a skip, the champion is current) takes longer than that to start
    Python, so fire times that find it running are skipped. Then the scheduler restarts from its state."""
    from pipeline.launch.schedule import wait_for_run

    r = oat("schedule", setup["job"], "--max-fires", "4", "--set", "retrain.max_age_days=1000", timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    wait_for_run(setup["folder"], timeout=120)
    st = json.loads((setup["folder"] / "schedule.json").read_text())
    fires = [h["fire"] for h in st["history"]]
    assert len(fires) == 4 and fires == sorted(fires) and len(set(fires)) == 4
    assert all(int(f[17:19]) % 3 == 0 for f in fires)  # on the schedule's seconds
    started = [h for h in st["history"] if h["event"] == "started"]
    skipped = [h for h in st["history"] if h["event"] == "skipped"]
    assert started and skipped, st["history"]
    for a, b in zip(started, started[1:]):  # no two retrainings ever ran at once
        assert a.get("ended") and a["ended"] <= b["started"]
    assert "still running" in r.stdout
    logs = [Path(h["log"]) for h in started]
    assert all(p.is_file() for p in logs) and "nothing to do" in logs[0].read_text()
    # a second scheduler while one runs is refused; a restarted one continues after the last fire time
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "schedule", setup["job"], "--max-fires", "4",
                             "--set", "retrain.max_age_days=1000"], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    while "next:" not in proc.stdout.readline():  # it holds the lock and waits for its first fire time
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    dup = oat("schedule", setup["job"], "--max-fires", "1")
    assert dup.returncode == 2 and "already runs this job" in dup.stderr
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    wait_for_run(setup["folder"], timeout=120)
    st2 = json.loads((setup["folder"] / "schedule.json").read_text())
    new = [h["fire"] for h in st2["history"]][len(fires):]
    assert new and all(f > fires[-1] for f in new)
