"""`oat sweep` (Ray Tune over Ray Train runs, one dedicated PGDAT model per λ) on the real two-node cluster with
trials tracked in the real MLflow server, and `oat compare` on real runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.sweep import baseline_job, sweep_lambdas
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
    assert (base.attack, base.optim, base.train, base.data) == (job.attack, job.optim, job.train, job.data)
    assert sweep_lambdas(job) == [0.1, 1.0]
    assert sweep_lambdas(tiny_job()) == [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]


def test_compare_without_a_sweep_is_one_clear_error(tmp_path):
    r = oat("compare", str(tmp_path / "nothing"), str(tmp_path / "nosweep"))
    assert r.returncode == 2 and r.stderr.startswith("oat: error: ") and "Traceback" not in r.stderr


@pytest.fixture(scope="module")
def sweep_run(ray_cluster, mlflow_uri, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    job = tiny_job(name="tiny_sw", train={"epochs": 2}, sweep={"lambdas": [0.0, 1.0], "max_concurrent_trials": 2},
                   ray={"num_workers": 1, "storage_path": str(tmp / "ray")},
                   tracking={"experiment": "sweeps", "system_metrics": False})
    (tmp / "job.yaml").write_text(job.to_yaml())
    t0 = time.monotonic()
    r = oat("sweep", str(tmp / "job.yaml"), "--out", str(tmp / "out"), "--mlflow", mlflow_uri, env=ray_cluster.env())
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return {"tmp": tmp, "job": tmp / "job.yaml", "first_s": time.monotonic() - t0, "env": ray_cluster.env()}


def test_sweep_trains_one_tracked_ray_train_run_per_lambda(sweep_run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    summary = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    assert [t["lambda"] for t in summary["trials"]] == [0.0, 1.0] and not summary["errors"]
    for t in summary["trials"]:
        (p,) = t["points"]
        assert p["method"] == "pgdat" and p["lambda"] == t["lambda"] and 0 <= p["robust_acc"] <= p["clean_acc"] + 1
        assert t["train_worker_s"] > 0 and Path(t["checkpoint"]).name == "final"
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    (parent,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep'")
    kids = c.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(k.info.run_name for k in kids) == ["tiny_sw_sweep_lam0", "tiny_sw_sweep_lam1"]
    for k in kids:
        assert k.data.params["method.name"] == "pgdat" and k.info.status == "FINISHED"
        assert [m.step for m in c.get_metric_history(k.info.run_id, "loss")] == [1, 2]
    assert parent.info.status == "FINISHED" and "test/robust_acc/lam_1" in parent.data.metrics


def test_resubmitted_sweep_resumes_instead_of_training_again(sweep_run, mlflow_uri):
    from mlflow.tracking import MlflowClient

    t0 = time.monotonic()
    r = oat("sweep", str(sweep_run["job"]), "--out", str(sweep_run["tmp"] / "out"), "--mlflow", mlflow_uri,
            env=sweep_run["env"])
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "resuming sweep tiny_sw_sweep" in r.stdout
    assert time.monotonic() - t0 < sweep_run["first_s"]
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    assert len(c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep_lam0'")) == 1
    (kid,) = c.search_runs([exp.experiment_id], "attributes.run_name = 'tiny_sw_sweep_lam1'")
    assert len(c.get_metric_history(kid.info.run_id, "loss")) == 2


@pytest.fixture(scope="module")
def comparison(sweep_run, mlflow_uri):
    tmp_path = sweep_run["tmp"]
    oat_dir = tmp_path / "oat"
    r = oat("train", str(sweep_run["job"]), "--out", str(oat_dir), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    r = oat("compare", str(oat_dir), str(sweep_run["tmp"] / "out"), "--out", str(tmp_path / "cmp"),
            "--mlflow", mlflow_uri, "--experiment", "sweeps")
    assert r.returncode == 0, r.stderr[-2000:]
    return oat_dir, r


def test_compare_tables_the_oat_model_against_the_sweep(sweep_run, comparison, mlflow_uri):
    from mlflow.tracking import MlflowClient

    oat_dir, r = comparison
    tmp_path = sweep_run["tmp"]
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [row["lambda"] for row in res["rows"]] == [0.0, 1.0]
    oat_pts = {p["lambda"]: p for p in json.loads((oat_dir / "eval.json").read_text())["points"]}
    sweep = json.loads((sweep_run["tmp"] / "out" / "sweep.json").read_text())
    for row, trial in zip(res["rows"], sweep["trials"]):
        assert row["delta_robust"] == pytest.approx(oat_pts[row["lambda"]]["robust_acc"]
                                                    - trial["points"][0]["robust_acc"])
    hist = json.loads((oat_dir / "history.json").read_text())
    assert res["cost"]["oat_worker_s"] == pytest.approx(sum(h["seconds"] for h in hist))
    assert res["cost"]["sweep_worker_s"] == pytest.approx(sweep["train_worker_s"])
    assert "training cost" in r.stdout and (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000
    c = MlflowClient(mlflow_uri)
    exp = c.get_experiment_by_name("sweeps")
    (run,) = c.search_runs([exp.experiment_id], "tags.kind = 'comparison'")
    assert run.data.metrics["delta_robust/lam_1"] == pytest.approx(res["rows"][1]["delta_robust"])
    assert {f.path for f in c.list_artifacts(run.info.run_id)} >= {"compare.png", "compare.json", "compare.txt"}


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
