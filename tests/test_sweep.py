"""`oat sweep` (Ray Tune over Ray Train runs, one dedicated PGDAT model per λ) on the real two-node cluster with
trials tracked in the real MLflow server, and `oat compare` on real runs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.launch.sweep import baseline_job, sweep_lambdas
from tests.conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]


def oat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=900, cwd=REPO)


def test_baseline_job_is_the_oat_job_with_a_fixed_lambda():
    job = tiny_job(name="x", sweep={"lambdas": [0.1, 1.0]})
    base = baseline_job(job, 0.1)
    assert base.method.name == "pgdat" and base.method.Lambda == 0.1 and base.name == "x_pgdat_lam0.1"
    assert base.model.use2BN is False and base.eval.lambdas == [0.1] and base.tracking.register is False
    assert base.model.widths == [1.0] and base.eval.widths == [1.0]
    assert (base.attack, base.optim, base.train, base.data) == (job.attack, job.optim, job.train, job.data)
    narrow = baseline_job(job, 0.1, 0.5)
    assert narrow.name == "x_pgdat_lam0.1_w0.5" and narrow.model.widths == [0.5] and narrow.eval.widths == [0.5]
    assert sweep_lambdas(job) == [0.1, 1.0]
    assert sweep_lambdas(tiny_job()) == [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]


def test_compare_without_a_sweep_is_one_clear_error(tmp_path):
    r = oat("compare", str(tmp_path / "nothing"), str(tmp_path / "nosweep"))
    assert r.returncode == 2 and r.stderr.startswith("oat: error: ") and "Traceback" not in r.stderr


def kill_a_train_worker_mid_run(stop: threading.Event, killed: list[str], storage: Path) -> None:
    """Once a trial has reported its first checkpoint (so it is training, with epochs to go), kill its rank-0
    Ray Train worker, as a lost node would; the checkpoint's workers.json names this run's own processes (other
    tests may run Ray workers at the same time). The trial fails and Tune retries it (``sweep.max_failures``)."""
    while not stop.is_set():
        for placed in storage.glob("*/epoch_0001/workers.json"):
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError, ProcessLookupError):
                pid = int(json.loads(placed.read_text())[0]["pid"])
                os.kill(pid, signal.SIGKILL)
                killed.append(str(pid))
                return
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sweep_run(ray_cluster, mlflow_uri, tmp_path_factory):
    """Four trials (λ ∈ {0, 1} × widths {1, 0.5}); one trial's training worker is killed mid-run."""
    tmp = tmp_path_factory.mktemp("sweep")
    # in-memory data: each trial is a fresh Ray Train worker, and a fresh FFCV loader costs its import and a JIT
    # compile (about 2 s) in each; FFCV-fed trials run in tests/test_pipeline.py's sweep
    job = tiny_job(name="tiny_sw", data={"loader": "memory"}, train={"epochs": 3, "max_steps_per_epoch": 8},
                   sweep={"lambdas": [0.0, 1.0], "widths": [1.0, 0.5], "max_concurrent_trials": 2,
                          "max_failures": 1},
                   ray={"num_workers": 1, "storage_path": str(tmp / "ray")},
                   tracking={"experiment": "sweeps", "system_metrics": False})
    (tmp / "job.yaml").write_text(job.to_yaml())
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=kill_a_train_worker_mid_run, args=(stop, killed, tmp / "ray"), daemon=True)
    killer.start()
    t0 = time.monotonic()
    try:
        r = oat("sweep", str(tmp / "job.yaml"), "--out", str(tmp / "out"), "--mlflow", mlflow_uri,
                env=ray_cluster.env())
    finally:
        stop.set()
        killer.join()
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"tmp": tmp, "job": tmp / "job.yaml", "first_s": time.monotonic() - t0, "env": ray_cluster.env(),
            "killed": killed, "stdout": r.stdout}


@pytest.mark.integration
def test_sweep_trains_one_tracked_ray_train_run_per_lambda(sweep_run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    summary = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    assert [(t["lambda"], t["width"]) for t in summary["trials"]] == [(0.0, 1.0), (1.0, 1.0), (0.0, 0.5), (1.0, 0.5)]
    assert not summary["errors"]
    for t in summary["trials"]:
        (p,) = t["points"]
        assert p["method"] == "pgdat" and p["lambda"] == t["lambda"] and p["width"] == t["width"]
        assert 0 <= p["robust_acc"] <= p["clean_acc"] + 1
        assert t["train_worker_s"] > 0 and Path(t["checkpoint"]).name == "final"
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    (parent,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep'")
    kids = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["tiny_sw_sweep_lam0", "tiny_sw_sweep_lam0_w0.5",
                                                     "tiny_sw_sweep_lam1", "tiny_sw_sweep_lam1_w0.5"]
    for k in kids:
        assert k.data.params["method.name"] == "pgdat" and k.info.status == "FINISHED"
        # every epoch arrives (the retried trial may report the epoch it was killed in once more)
        assert sorted({m.step for m in c.get_metric_history(k.info.run_id, "loss")}) == [1, 2, 3]
    assert parent.info.status == "FINISHED" and "test/robust_acc/pgd3/w_0.5" in parent.data.metrics
    # the dedicated models' curve over λ (step = 100·λ) on the parent, its table in the description
    assert sorted(m.step for m in c.get_metric_history(parent.info.run_id, "test/clean_acc")) == [0, 100]
    assert parent.data.tags["mlflow.note.content"].startswith("**Dedicated PGDAT models** on digits")
    assert re.search(r"\n *λ +width +clean +PGD-3\n", parent.data.tags["mlflow.note.content"])


@pytest.mark.integration
def test_a_trial_whose_worker_dies_is_retried_and_the_sweep_completes(sweep_run):
    """The fixture killed one trial's Ray Train worker while it trained; Tune retried the trial
    (sweep.max_failures: 1), which resumed its TorchTrainer, and every trial finished (asserted above)."""
    assert len(sweep_run["killed"]) == 1, "no training worker lived long enough to be killed"
    summary = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    assert len(summary["trials"]) == 4 and not summary["errors"]
    assert sum(t["retries"] for t in summary["trials"]) == 1
    assert "retried from its last checkpoint" in sweep_run["stdout"]


@pytest.mark.integration
def test_a_narrow_dedicated_model_has_a_quarter_of_the_weights(sweep_run):
    import torch

    summary = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    sizes = {}
    for t in summary["trials"]:
        state = torch.load(Path(t["checkpoint"]) / "final.pt", map_location="cpu", weights_only=True)
        sizes[t["width"]] = sum(v.numel() for k, v in state["state_dict"].items() if k.endswith("conv2.weight"))
    assert sizes[0.5] * 4 == sizes[1.0]


@pytest.mark.integration
def test_resubmitted_sweep_resumes_instead_of_training_again(sweep_run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    (kid,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep_lam1'")
    before = len(c.get_metric_history(kid.info.run_id, "loss"))
    t0 = time.monotonic()
    r = oat("sweep", str(sweep_run["job"]), "--out", str(sweep_run["tmp"] / "out"), "--mlflow", mlflow_uri,
            env=sweep_run["env"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resuming sweep tiny_sw_sweep" in r.stdout
    assert time.monotonic() - t0 < sweep_run["first_s"]
    assert len(c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep_lam0'")) == 1
    assert len(c.get_metric_history(kid.info.run_id, "loss")) == before  # nothing trained again


@pytest.fixture(scope="module")
def comparison(sweep_run, mlflow_uri):
    tmp_path = sweep_run["tmp"]
    oat_dir = tmp_path / "oat"
    r = oat("train", str(sweep_run["job"]), "--out", str(oat_dir), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    for _ in range(2):  # comparing the same runs again replaces the comparison run (the test finds one)
        r = oat("compare", str(oat_dir), str(sweep_run["tmp"] / "out"), "--out", str(tmp_path / "cmp"),
                "--mlflow", mlflow_uri, "--experiment", "sweeps")
        assert r.returncode == 0, r.stderr[-2000:]
    return oat_dir, r


@pytest.mark.integration
def test_compare_tables_the_oat_model_against_the_sweep(sweep_run, comparison, mlflow_uri):
    from mlflow.tracking import MlflowClient

    oat_dir, r = comparison
    tmp_path = sweep_run["tmp"]
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [row["lambda"] for row in res["rows"]] == [0.0, 1.0]
    oat_pts = {p["lambda"]: p for p in json.loads((oat_dir / "eval.json").read_text())["points"]}
    sweep = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    for row, trial in zip(res["rows"], sweep["trials"][:2]):  # the full-width trials come first
        assert row["delta_robust"] == pytest.approx(oat_pts[row["lambda"]]["robust_acc"]
                                                    - trial["points"][0]["robust_acc"])
    hist = json.loads((oat_dir / "history.json").read_text())
    assert res["cost"]["oat_worker_s"] == pytest.approx(sum(h["seconds"] for h in hist))
    full = [t for t in sweep["trials"] if t["width"] == 1.0]
    assert res["cost"]["sweep_worker_s"] == pytest.approx(sum(t["train_worker_s"] for t in full))
    assert res["cost"]["dedicated_models"] == 2
    assert "training cost" in r.stdout and (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    (run,) = c.search_runs([exp.experiment_id], "tags.kind = 'comparison'")
    delta = {m.step: m.value for m in c.get_metric_history(run.info.run_id, "vs_dedicated/delta_robust_acc/pgd3")}
    assert delta == {0: pytest.approx(res["rows"][0]["delta_robust"]),
                     100: pytest.approx(res["rows"][1]["delta_robust"])}
    note = run.data.tags["mlflow.note.content"]
    assert f"get-artifact?path=compare.png&run_uuid={run.info.run_id}" in note
    assert re.search(r"\n *λ +SA OAT +SA PGDAT +Δ SA +PGD-3 OAT +PGD-3 PGDAT +Δ PGD-3\n", note)
    assert {f.path for f in c.list_artifacts(run.info.run_id)} >= {"compare.png", "compare.json", "compare.txt"}


@pytest.mark.integration
def test_oats_widths_are_compared_with_dedicated_models_of_the_same_width(sweep_run):
    tmp = sweep_run["tmp"]
    r = oat("train", str(sweep_run["job"]), "--out", str(tmp / "oats"), "--quiet", "--set", "method.name=oats",
            "--set", "model.widths=[0.5, 1.0]", "--set", "eval.widths=[0.5, 1.0]", "--set", "train.epochs=1")
    assert r.returncode == 0, r.stderr[-2000:]
    r = oat("compare", str(tmp / "oats"), str(tmp / "out"), "--out", str(tmp / "cmp_oats"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp / "cmp_oats" / "compare.json").read_text())
    sweep = json.loads((tmp / "out" / "sweep.json").read_text())
    by_key = {(t["lambda"], t["width"]): t["points"][0] for t in sweep["trials"]}
    assert {(row["lambda"], row["width"]) for row in res["rows"]} == set(by_key)
    for row in res["rows"]:
        assert row["dedicated_width"] == row["width"]
        assert row["dedicated_robust_acc"] == by_key[(row["lambda"], row["width"])]["robust_acc"]
    assert res["cost"]["dedicated_models"] == 4
    assert res["cost"]["sweep_worker_s"] == pytest.approx(sweep["train_worker_s"])
    assert "width 0.5\n" in r.stdout and "compared with full width" not in r.stdout


@pytest.mark.integration
def test_tradeoff_notebook_reads_the_comparison_from_mlflow(comparison, mlflow_uri, monkeypatch):
    """notebooks/tradeoff.ipynb executed top to bottom (nbclient, a real kernel) against the real server."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("OAT_EXPERIMENT", "sweeps")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(REPO / "notebooks" / "tradeoff.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "vs sweep tiny_sw_sweep" in text
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the trade-off figure was drawn
    html = "".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "delta_robust" in html  # the comparison table
