"""MLflow tracking against the real local stack (SeaweedFS + `mlflow server` + Ray head, started once per
session by the `stack` fixture): runs, metrics, artifacts in the bucket, the registry serving λ, outages,
bad endpoints, secrets, and the UI in headless Chromium."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.platform.services import free_port
from pipeline.platform.tracking import Tracker, begin, flatten, redact
from pipeline.training.metrics import epoch_metrics, metric_key
from tests.conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("OAT_TEST_ARTIFACTS", REPO / "test-artifacts"))


def client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def write_job(path: Path, **sections) -> Path:
    path.write_text(tiny_job(**sections).to_yaml())
    return path


def oat(*args: str, env: dict[str, str] | None = None, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=REPO, **kw)


# ------------------------------------------------------------------------------------------ no server
def test_redact_and_flatten_hide_credentials():
    assert redact("http://alice:s3cr3t@host:5000/x") == "http://***@host:5000/x"
    assert redact("https://b.s3/x?X-Amz-Signature=abc&X-Amz-Credential=AKIA/1&y=2") == \
        "https://b.s3/x?X-Amz-Signature=***&X-Amz-Credential=***&y=2"
    job = tiny_job(tracking={"uri": "http://u:pw@127.0.0.1:1"})
    flat = flatten(job.to_dict())
    assert flat["tracking.uri"] == "http://***@127.0.0.1:1"
    assert flat["method.lambda_choices"] == "[0.0, 0.1, 0.2, 0.3, 0.4, 1.0]"
    assert flat["data.dataset"] == "digits"


def test_metric_names_are_valid_mlflow_names():
    from mlflow.utils.validation import _validate_metric_name

    rec = {"epoch": 3, "loss": 1.0, "lr": 0.1, "seconds": 2.0, "images_per_s": 10.0, "data_wait_share": 0.1,
           "val": [{"lambda": 0.1, "width": 0.5, "clean_acc": 0.9, "robust_acc": 0.2}]}
    metrics = epoch_metrics(rec)
    assert metrics["val/clean_acc/lam_0.1/w_0.5"] == 0.9 and metrics["epoch_seconds"] == 2.0
    for name in metrics:
        _validate_metric_name(name)
    assert metric_key("test/robust_acc", 1.0, 1.0) == "test/robust_acc/lam_1"


def test_the_test_curve_is_one_key_per_quantity_and_attack_with_step_100_lambda():
    from mlflow.utils.validation import _validate_metric_name

    from pipeline.training.metrics import curve_metrics

    pts = [{"lambda": lam, "width": w, "clean_acc": 0.9 - lam / 10, "robust_acc": r, "attack": a, "steps": s,
            **({"settings": {"over": ["APGD-CE", "APGD-T"]}} if a == "worst-case" else {})}
           for lam in (0.0, 0.25, 1.0) for w in (1.0, 0.5)
           for a, s, r in (("pgd", 20, 0.5), ("apgd-ce", 0, 0.4), ("worst-case", 0, 0.3))]
    pts.append({"lambda": 1.0, "width": 1.0, "clean_acc": 0.5, "robust_acc": 0.2, "attack": "autoattack"})
    curves = curve_metrics(pts)
    assert sorted(curves) == [0, 25, 100]
    assert curves[25] == {"test/clean_acc": 0.875, "test/robust_acc/pgd20": 0.5, "test/robust_acc/apgd-ce": 0.4,
                          "test/robust_acc/apgd": 0.3, "test/clean_acc/w_0.5": 0.875,
                          "test/robust_acc/pgd20/w_0.5": 0.5, "test/robust_acc/apgd-ce/w_0.5": 0.4,
                          "test/robust_acc/apgd/w_0.5": 0.3}
    assert curves[100]["test/robust_acc/autoattack"] == 0.2 and curves[100]["test/clean_acc"] == 0.8  # PGD's clean
    for by_step in curves.values():
        for name in by_step:
            _validate_metric_name(name)


def test_a_long_description_is_cut_at_a_line_and_keeps_its_table_closed():
    from pipeline.platform.registry import fit_note

    text = "intro\n\n```\n" + "\n".join(f"row {i:04d}  98.7  38.0" for i in range(600)) + "\n```\nafter"
    cut = fit_note(text, 5000)
    assert len(cut) <= 5000 and cut.startswith("intro\n\n```\nrow 0000")
    assert cut.count("```") == 2 and "cut to fit MLflow's limit" in cut.splitlines()[-1]
    assert all(line.startswith(("row", "```", "intro", "…")) or not line for line in cut.splitlines())
    assert fit_note("short", 5000) == "short"


def test_model_card_and_descriptions_say_what_a_model_serves_and_how_it_scored():
    from pipeline.platform.tracking import model_card, points_markdown

    job = tiny_job(method={"name": "oats", "lambda_choices": [0.0, 1.0]}, model={"widths": [0.5, 1.0]})
    pts = [{"method": "oats", "lambda": lam, "width": w, "clean_acc": 0.9, "robust_acc": r, "attack": a,
            "steps": 20 if a == "pgd" else 0, "eps": 0.2, "n": 397, "norm": "linf"}
           for lam in (0.0, 1.0) for w in (0.5, 1.0) for a, r in (("pgd", 0.5), ("apgd-t", 0.25))]
    table = points_markdown(pts)
    lines = table.splitlines()
    assert lines[0] == lines[-1] == "```"  # aligned columns in a fenced block: the UI pads no table cell
    assert lines[1].split() == ["λ", "width", "clean", "APGD-T", "PGD-20"]  # the quoted attack first
    assert "1    0.5   90.0    25.0    50.0" in table and len({len(x) for x in lines[1:-1]}) == 1
    card = model_card(job, pts, {"name": "digits", "digest": "abcd", "counts": {"train": 1200, "test": 397}}, "r1")
    assert "**Serves** λ ∈ {0, 1} and width ∈ {0.5, 1}" in card and table in card
    assert "L∞ ε = 0.2 on images in [0, 1]; test split, 397 images; robust accuracy quoted under APGD-T" in card
    assert "fingerprint `abcd`" in card and "1,200 train / 397 test" in card and "run `r1`" in card


def test_tracking_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="tracking.alias"):
        tiny_job(tracking={"alias": "latest"})
    with pytest.raises(ConfigError, match="tracking.flush_timeout_s"):
        tiny_job(tracking={"flush_timeout_s": -1})
    assert tiny_job(method={"name": "pgdat"}).tracking.register is False
    assert tiny_job().tracking.register is True and tiny_job().tracking.model_name == "tiny"


def test_outbox_survives_a_crash_and_redelivery_logs_nothing_twice(tmp_path):
    """Events written while no delivery runs (a crash, an outage) are delivered by the next Tracker on the same
    folder; re-sending already delivered events (a restore from an older checkpoint) duplicates nothing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tiny_job(tracking={"enabled": True, "uri": uri, "experiment": "outbox"})
    info = begin(job, where=str(tmp_path / "run"))
    folder = tmp_path / "run" / "tracking"
    t = Tracker(info, folder, start=False)  # "crashed" before delivering anything
    for e in range(3):
        t.log_metrics({"loss": 1.0 / (e + 1)}, e + 1)
    (tmp_path / "f.txt").write_text("payload")
    t.log_artifact(tmp_path / "f.txt", "files")
    assert t.pending == 4 and (folder / "outbox.jsonl").is_file()
    t2 = Tracker(info, folder)
    assert t2.close(timeout=60) == 0
    c = client(uri)
    assert [m.step for m in c.get_metric_history(info.run_id, "loss")] == [1, 2, 3]
    assert [f.path for f in c.list_artifacts(info.run_id, "files")] == ["files/f.txt"]
    assert not any((folder / "pending").iterdir())  # delivered snapshots are released
    (folder / "delivered").write_text("0\n")  # as if restored from a checkpoint taken before delivery
    assert Tracker(info, folder).close(timeout=60) == 0
    assert len(c.get_metric_history(info.run_id, "loss")) == 3
    assert c.get_run(info.run_id).data.params["data.dataset"] == "digits"


def test_a_flagged_run_is_tagged_and_never_registered(tmp_path):
    """A run with a collapsed point (eval.json's flags) gets the tag quality=FLAGGED… and no model version."""
    from pipeline.platform.tracking import finish_tracking
    from pipeline.science.curves import Point, write_points

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tiny_job(tracking={"enabled": True, "uri": uri, "experiment": "flags", "register": True,
                             "register_flagged": False, "flush_timeout_s": 60})
    out = tmp_path / "run"
    info = begin(job, where=str(out))
    out.mkdir()
    (out / "final.pt").write_bytes(b"weights")  # never read: a flagged run registers nothing
    pts = [Point(lam=1.0, width=1.0, clean_acc=0.1, robust_acc=0.1, attack="pgd", steps=3, eps=0.2, n=50,
                 method="oat")]
    write_points(pts, out / "eval.json", {"flags": [{"lambda": 1.0, "width": 1.0, "reasons": ["collapsed: x"]}]})
    finish_tracking(Tracker(info, out / "tracking"), job, out, pts)
    c = client(uri)
    assert c.get_run(info.run_id).data.tags["quality"] == "FLAGGED: FLAGGED λ=1: collapsed: x"
    assert c.search_model_versions(f"name = '{job.tracking.model_name}'") == []
    events = [json.loads(line)["t"] for line in (out / "tracking" / "outbox.jsonl").read_text().splitlines()]
    assert "tags" in events and "register" not in events


# ------------------------------------------------------------------------------------------ the real stack
@pytest.fixture(scope="module")
def tracked(stack, mlflow_uri, tmp_path_factory):
    """`oat train --mlflow URI` on a tiny OAT job, as a user runs it: S3 keys and an MLflow password in the
    environment (so that the secret scan has something to find), output captured."""
    tmp = tmp_path_factory.mktemp("tracked")
    job = write_job(tmp / "job.yaml", name="tiny_tracked", train={"epochs": 3},
                    tracking={"experiment": "tests", "system_metrics_interval": 1.0})
    s3 = stack.s3().env()
    env = {**s3, "MLFLOW_TRACKING_USERNAME": "oat", "MLFLOW_TRACKING_PASSWORD": "pw-" + s3["AWS_SECRET_ACCESS_KEY"]}
    proc = oat("train", str(job), "--out", str(tmp / "run"), "--mlflow", mlflow_uri, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = client(mlflow_uri)
    exp = c.get_experiment_by_name("tests")
    runs = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_tracked'")
    assert len(runs) == 1
    return {"run": runs[0], "exp": exp, "out": tmp / "run", "proc": proc, "job": job, "env": env,
            "secrets": [s3["AWS_SECRET_ACCESS_KEY"], s3["AWS_ACCESS_KEY_ID"], env["MLFLOW_TRACKING_PASSWORD"]]}


@pytest.mark.integration
def test_run_has_params_tags_metrics_and_artifacts_in_the_bucket(tracked, stack, mlflow_uri):
    run = tracked["run"]
    c = client(mlflow_uri)
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert (tags["method"], tags["backbone"], tags["dataset"]) == ("oat", "small_cnn", "digits")
    assert len(tags["git_commit"]) == 40
    assert params["train.epochs"] == "3" and params["attack.eps"] == "0.2"
    loss = c.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == [1, 2, 3]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "val/robust_acc/lam_1")] == [1, 2, 3]
    assert {"lr", "images_per_s", "test/clean_acc", "test/robust_acc/pgd3"} <= set(run.data.metrics)
    # the test curve is a line over λ (step = 100·λ), not one bar per λ
    curve = c.get_metric_history(run.info.run_id, "test/clean_acc")
    assert sorted(m.step for m in curve) == [0, 10, 20, 30, 40, 100]
    assert not any("/lam_" in k for k in run.data.metrics if k.startswith("test/"))
    # the description says what the run is and holds its test table; the data set is an input
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**OAT** on digits") and re.search(r"\n *λ +clean +PGD-3\n", note)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "digits" and len(inp.dataset.digest) == 16
    assert json.loads(inp.dataset.profile)["test"] == 397 and "scikit-learn" in inp.dataset.source
    assert "How to read this experiment" in tracked["exp"].tags["mlflow.note.content"]
    assert any(k.startswith("system/cpu_utilization") for k in run.data.metrics)
    names = {f.path for f in c.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "encoding.json", "checkpoints", "eval.json", "tradeoff.png", "history.json"} <= names
    best = {f.path for f in c.list_artifacts(run.info.run_id, "checkpoints/best")}
    assert "checkpoints/best/index.json" in best
    # the files are in the object store (proxied: this client never had S3 keys)
    import boto3
    from botocore.config import Config

    s3env = stack.s3().env()
    s3 = boto3.client("s3", endpoint_url=s3env["AWS_ENDPOINT_URL"], aws_access_key_id=s3env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1",
                      config=Config(s3={"addressing_style": "path"}))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="mlflow", Prefix="artifacts/")["Contents"]]
    mine = [k for k in keys if f"/{run.info.run_id}/" in k]
    assert any(k.endswith("checkpoints/final.pt") for k in mine) and any(k.endswith("tradeoff.png") for k in mine)
    # one child run per test point, for the clean-vs-robust scatter
    kids = c.search_runs([tracked["exp"].experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    points = json.loads((tracked["out"] / "eval.json").read_text())["points"]
    assert len(kids) == len(points) == 6
    by_lam = {k.data.params["lambda"]: k for k in kids}
    p = next(p for p in points if p["lambda"] == 0.4)
    assert by_lam["0.4"].data.metrics["robust_acc"] == pytest.approx(p["robust_acc"])
    assert by_lam["0.4"].data.params["method"] == "OAT" and by_lam["0.4"].data.params["width"] == "1"


@pytest.mark.integration
def test_rerun_continues_the_same_run(tracked, mlflow_uri):
    """The same job in the same folder again (a resubmission): no second run, no duplicate children."""
    proc = oat("train", str(tracked["job"]), "--out", str(tracked["out"]), "--mlflow", mlflow_uri, "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "continues" in proc.stdout
    c = client(mlflow_uri)
    exp_id = tracked["exp"].experiment_id
    assert len(c.search_runs([exp_id], "attributes.run_name = 'tiny_tracked'")) == 1
    rid = tracked["run"].info.run_id
    assert len(c.search_runs([exp_id], f"tags.mlflow.parentRunId = '{rid}'")) == 6
    assert len(c.get_metric_history(rid, "loss")) == 3
    assert len(c.search_model_versions(f"name = 'tiny_tracked' and run_id = '{rid}'")) == 1


@pytest.mark.integration
def test_registered_model_serves_lambda(tracked, mlflow_uri, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    mv = client(mlflow_uri).get_model_version_by_alias("tiny_tracked", "champion")
    assert mv.tags["lambdas"] == "0,0.1,0.2,0.3,0.4,1" and mv.run_id == tracked["run"].info.run_id
    model = mlflow.pyfunc.load_model("models:/tiny_tracked@champion")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    clean, robust = model.predict(x, params={"lam": 0.0}), model.predict(x, params={"lam": 1.0})
    assert clean.shape == (5, 10) and np.allclose(clean.sum(1), 1, atol=1e-5)
    assert np.abs(clean - robust).max() > 1e-4  # λ = 0 routes through BN_c and its FiLM code: another model
    from pipeline import load_model

    ref = load_model(tracked["out"] / "final.pt").at(1.0)
    import torch

    with torch.no_grad():
        np.testing.assert_allclose(robust, torch.softmax(ref(torch.from_numpy(x)), 1).numpy(), atol=1e-6)
    with pytest.raises(Exception, match="was not trained"):
        model.predict(x, params={"lam": 0.55})
    # no pickle of ours: the model is code + weights
    info = mlflow.models.get_model_info("models:/tiny_tracked@champion")
    assert info.flavors["python_function"].get("model_code_path", "").endswith("serving_model.py")


@pytest.mark.integration
def test_model_served_over_rest_answers_with_the_chosen_lambda(tracked, mlflow_uri):
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)  # mlflow runs `uvicorn` from PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": bin_dir + os.pathsep + os.environ["PATH"]}
    log = open(tracked["out"] / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m",
                             "models:/tiny_tracked@champion", "--env-manager", "local", "-h", "127.0.0.1", "-p",
                             str(port)], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tracked["out"] / "serve.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2):
                    break
            except OSError:
                time.sleep(1)
        x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)

        def ask(params):
            body = json.dumps({"inputs": x.tolist(), "params": params}).encode()
            req = urllib.request.Request(url + "/invocations", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return np.array(json.loads(r.read())["predictions"])

        a, b = ask({"lam": 0.0}), ask({"lam": 1.0})
        assert a.shape == (3, 10) and np.abs(a - b).max() > 1e-4
        with pytest.raises(urllib.error.HTTPError) as err:
            ask({"lam": 0.7})
        assert err.value.code == 400 and "was not trained" in err.value.read().decode()
        with pytest.raises(urllib.error.HTTPError) as err:  # λ is required (the signature's default is None)
            ask({})
        assert err.value.code == 400 and "params.lam is required" in err.value.read().decode()
        x[0, 0, 0, 0] = float("nan")
        with pytest.raises(urllib.error.HTTPError) as err:
            ask({"lam": 1.0})
        assert err.value.code == 400 and "NaN or infinite" in err.value.read().decode()
        x[0, 0, 0, 0] = 0.5
        assert ask({"lam": 1.0}).shape == (3, 10)  # still serving
    finally:  # `mlflow models serve` starts its server in a process group of its own: stop the whole tree
        import psutil

        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGTERM)
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            p.kill()
        proc.wait(timeout=10)
        log.close()


@pytest.mark.integration
def test_no_secret_in_params_tags_artifacts_or_logs(tracked, stack, mlflow_uri, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)  # models:/ resolves through the registry URI

    c = client(mlflow_uri)
    rid = tracked["run"].info.run_id
    texts = [tracked["proc"].stdout, tracked["proc"].stderr]
    runs = [c.get_run(rid)] + c.search_runs([tracked["exp"].experiment_id], f"tags.mlflow.parentRunId = '{rid}'")
    for r in runs:
        texts += [json.dumps(r.data.params), json.dumps(r.data.tags), json.dumps(sorted(r.data.metrics))]
    for mv in c.search_model_versions("name = 'tiny_tracked'"):
        texts += [json.dumps(mv.tags), mv.source or ""]
    got = Path(mlflow.artifacts.download_artifacts(run_id=rid, dst_path=str(tmp_path / "a"), tracking_uri=mlflow_uri))
    model = Path(mlflow.artifacts.download_artifacts("models:/tiny_tracked@champion", dst_path=str(tmp_path / "m")))
    blobs = [f.read_bytes() for root in (got, model) for f in root.rglob("*") if f.is_file()]
    assert len(blobs) > 10
    for f in stack.logs.glob("*.log"):  # the servers' own logs
        texts.append(f.read_text(errors="replace"))
    for secret in tracked["secrets"]:
        assert not any(secret in t for t in texts), "a secret leaked into tracking or logs"
        assert not any(secret.encode() in b for b in blobs), "a secret leaked into an artifact"


@pytest.mark.integration
def test_mlflow_ui_shows_the_runs(tracked, mlflow_uri):
    """The MLflow UI rendered in headless Chromium: the runs table lists the run; the screenshot is kept."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed: infra/setup.sh installs it")
    url = f"{mlflow_uri}/#/experiments/{tracked['exp'].experiment_id}/runs"
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--window-size=1600,1000", "--virtual-time-budget=20000"]
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    assert "tiny_tracked" in dom and "Training runs" in dom
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui_runs.png"
    shot.unlink(missing_ok=True)
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    import matplotlib.image

    img = matplotlib.image.imread(shot)
    assert img.shape[:2] == (1000, 1600) and img.std() > 0.05  # a rendered page, not a blank one


# ------------------------------------------------------------------------------------------ faults
def test_unreachable_server_fails_before_training(tmp_path):
    job = write_job(tmp_path / "job.yaml")
    t0 = time.monotonic()
    proc = oat("train", str(job), "--out", str(tmp_path / "run"), "--mlflow", f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("oat: error: MLflow tracking server http://127.0.0.1:")
    assert "not reachable" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "latest.pt").exists()
    assert time.monotonic() - t0 < 120


@pytest.mark.integration
def test_bad_artifact_store_credentials_fail_before_training(stack, tmp_path):
    """An MLflow server whose S3 keys are wrong: one clear message, exit 2, no training."""
    from pipeline.platform.services import MlflowServer

    env = {**stack.s3().env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret-key"}
    server = MlflowServer(tmp_path / "bad", env, port=free_port()).start()
    try:
        job = write_job(tmp_path / "job.yaml")
        proc = oat("train", str(job), "--out", str(tmp_path / "run"), "--mlflow", server.uri)
    finally:
        server.stop()
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("oat: error: the artifact store behind MLflow") and "S3" in last
    assert "wrong-secret-key" not in proc.stderr + proc.stdout
    assert not (tmp_path / "run" / "latest.pt").exists()


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _epochs_done(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text()))
    except (OSError, ValueError):
        return 0


@pytest.mark.integration
def test_outages_of_mlflow_and_s3_lose_nothing_and_do_not_stop_training(stack, mlflow_uri, tmp_path):
    """Stop the MLflow server after epoch 1 and start it again after epoch 4; then stop the object store while
    the final artifacts are uploading and start it again. Training never waits; every epoch's metrics, the
    artifacts and the registered model all arrive."""
    job = write_job(tmp_path / "job.yaml", name="tiny_outage", train={"epochs": 7, "max_steps_per_epoch": 6},
                    eval={"every": 100, "last_quarter": False},
                    tracking={"experiment": "tests", "system_metrics": False, "flush_timeout_s": 300})
    out = tmp_path / "run"
    log = open(tmp_path / "train.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "train", str(job), "--out", str(out), "--mlflow",
                             mlflow_uri, "--quiet"], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        _wait_for(lambda: _epochs_done(out) >= 1, 300, "epoch 1", proc)
        stack.stop_service("mlflow")
        _wait_for(lambda: _epochs_done(out) >= 4, 300, "epoch 4 with MLflow down", proc)
        stack.start_service("mlflow")
        # the object store goes down while the end-of-run artifacts are queued
        _wait_for(lambda: (out / "final.pt").is_file(), 300, "final.pt", proc)
        stack.stop_service("s3")
        time.sleep(3)
        assert proc.poll() is None, "the run ended without delivering its artifacts"
        stack.start_service("s3")
        assert proc.wait(timeout=300) == 0, (tmp_path / "train.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
        for name in ("s3", "mlflow"):  # leave the stack up for the other tests
            if stack.health()[name][0] != "running":
                stack.start_service(name)
    history = json.loads((out / "history.json").read_text())
    c = client(mlflow_uri)
    exp = c.get_experiment_by_name("tests")
    (run,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_outage'")
    assert run.info.status == "FINISHED"
    loss = c.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in loss] == list(range(1, 8))
    assert [m.value for m in loss] == pytest.approx([h["loss"] for h in history])
    arts = {f.path for f in c.list_artifacts(run.info.run_id, "checkpoints")}
    assert "checkpoints/final.pt" in arts
    assert c.get_model_version_by_alias("tiny_outage", "champion").run_id == run.info.run_id
    # training did not wait for the server: epochs during the outage took no longer than the others
    secs = [h["seconds"] for h in history]
    assert max(secs[1:4]) < 3 * np.median(secs) + 1.0, secs
    text = (tmp_path / "train.log").read_text()
    assert "Traceback" not in text


@pytest.mark.integration
def test_stack_status_and_idempotent_up(stack):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "stack", "status", "--root", str(stack.root),
                        "--env-file", str(stack.env_file)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("s3", "mlflow", "ray"):
        assert any(line.startswith(name) and "running" in line for line in r.stdout.splitlines())
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "stack", "up", "--root", str(stack.root),
                        "--env-file", str(stack.env_file)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.count("already running") == 3, r.stdout
    assert stack.settings["OAT_S3_SECRET_KEY"] not in r.stdout + r.stderr
    assert oct(stack.env_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.integration
def test_tracked_ray_run_reports_through_rank_0(ray_cluster, mlflow_uri, tmp_path):
    """`oat run` with tracking on the two-node cluster: the driver begins the run, rank 0 of two DDP workers
    reports every epoch, the artifacts and the test points arrive."""
    job = write_job(tmp_path / "job.yaml", name="tiny_ray_tracked", train={"epochs": 2},
                    ray={"num_workers": 2, "placement_strategy": "STRICT_SPREAD",
                         "storage_path": str(tmp_path / "ray")},
                    tracking={"experiment": "tests", "system_metrics": False})
    env = {**ray_cluster.env()}
    proc = oat("run", str(job), "--out", str(tmp_path / "run"), "--mlflow", mlflow_uri, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    c = client(mlflow_uri)
    exp = c.get_experiment_by_name("tests")
    (run,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_ray_tracked'")
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.source.name"] == "oat run"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "checkpoints/final.pt" in {f.path for f in c.list_artifacts(run.info.run_id, "checkpoints")}
    workers = json.loads((tmp_path / "run" / "workers.json").read_text())
    assert len({w["node_ip"] for w in workers}) == 2
    assert len(c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")) == 6


def test_a_resume_logs_the_epochs_a_crash_kept_from_the_outbox(tmp_path):
    """Killed between writing latest.pt and logging that epoch's metrics: the resumed run's callback logs the
    restored epochs the outbox never got, and no epoch twice (found by the retraining kill test under load)."""
    from pipeline.platform.tracking import MlflowCallback
    from pipeline.training.callbacks import RunContext

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = tiny_job(tracking={"enabled": True, "uri": uri, "experiment": "resume-gap"})
    info = begin(job, where=str(tmp_path / "run"))
    folder = tmp_path / "run" / "tracking"
    t = Tracker(info, folder, start=False)
    t.log_epoch({"epoch": 0, "loss": 2.0})  # epoch 1 (index 1) reached latest.pt, not the outbox
    history = [{"epoch": 0, "loss": 2.0}, {"epoch": 1, "loss": 1.5}]
    cb = MlflowCallback.__new__(MlflowCallback)  # its tracker as a resumed run has it
    cb.tracker = Tracker(info, folder)
    (tmp_path / "run" / "encoding.json").write_text("{}")
    cb.on_start(RunContext(job, tmp_path / "run", None, start_epoch=2, history=history))  # type: ignore[arg-type]
    cb.tracker.log_epoch({"epoch": 2, "loss": 1.0})
    assert cb.tracker.close(timeout=60) == 0 and cb.tracker.epochs_logged() == {0, 1, 2}
    c = client(uri)
    assert [(m.step, m.value) for m in c.get_metric_history(info.run_id, "loss")] == [(1, 2.0), (2, 1.5), (3, 1.0)]


@pytest.mark.integration
def test_sync_delivers_a_leftover_outbox(mlflow_uri, tmp_path):
    """`oat track sync RUN_DIR` delivers what a run could not (say the server was down past the flush timeout)."""
    job = tiny_job(tracking={"enabled": True, "uri": mlflow_uri, "experiment": "tests"}, name="tiny_sync")
    info = begin(job, where=str(tmp_path / "run"))
    t = Tracker(info, tmp_path / "run" / "tracking", start=False)
    t.log_metrics({"loss": 0.5}, 1)
    t.log_metrics({"loss": 0.25}, 2)
    r = oat("track", "sync", str(tmp_path / "run"))
    assert r.returncode == 0 and "all delivered" in r.stdout, r.stdout + r.stderr
    assert [m.value for m in client(mlflow_uri).get_metric_history(info.run_id, "loss")] == [0.5, 0.25]
