"""The README's main job (`oat run jobs/pipeline_digits.yaml`: local Ray, local MLflow store, digits) end to
end on a reduced config: OAT, OATS, the PGDAT sweep and both comparisons, in one command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_job

REPO = Path(__file__).resolve().parents[1]
REDUCED = ["train.epochs=1", "train.max_steps_per_epoch=3", "sweep.lambdas=[0.0, 1.0]", "attack.steps=2",
           "eval.max_images=100", "eval.test_steps=2", "pipeline.oats_widths=[0.5, 1.0]",
           "tracking.system_metrics=false",
           "tracking.register_flagged=true"]  # 3 steps leave a collapsed model: register it all the same


def test_pipeline_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pipeline.stages"):
        load_job(REPO / "jobs" / "pipeline_digits.yaml", ["pipeline.stages=[oat, compare]"])
    with pytest.raises(ConfigError, match="method.name"):
        load_job(REPO / "jobs" / "pipeline_digits.yaml", ["method.name=pgdat"])
    with pytest.raises(ConfigError, match="pipeline.stages.*allowed values"):
        load_job(REPO / "jobs" / "pipeline_digits.yaml", ["pipeline.stages=[oat, train]"])


@pytest.fixture(scope="module")
def main_job(tmp_path_factory):
    """The reduced main job against a real `mlflow server` (SQLite, artifacts proxied to a folder), as a user runs
    it with `--set tracking.uri=http://…`; the server stays up for the UI test."""
    from pipeline.platform.services import MlflowServer, free_ports

    tmp = tmp_path_factory.mktemp("main_job")
    server = MlflowServer(tmp / "mlflow", {}, port=free_ports(1)[0],
                          artifacts_destination=str(tmp / "mlflow" / "artifacts")).start()
    try:
        sets = [*REDUCED, f"tracking.uri={server.uri}", f"ray.storage_path={tmp / 'ray'}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # the embedded default: a local Ray
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(REPO / "jobs" / "pipeline_digits.yaml"),
                            "--out", str(tmp / "out"), *(a for s in sets for a in ("--set", s))],
                           capture_output=True, text=True, env=env, cwd=tmp, timeout=1200)
        yield {"proc": r, "out": tmp / "out", "uri": server.uri}
    finally:
        server.stop()


@pytest.mark.integration
def test_main_job_runs_end_to_end_on_a_reduced_config(main_job):
    from mlflow.tracking import MlflowClient

    r = main_job["proc"]
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    out = main_job["out"]
    summary = (out / "summary.txt").read_text()
    assert "pipeline digits_pipeline finished" in summary and "training cost" in summary
    assert summary in r.stdout.replace("\r", "")  # the table the user reads in the terminal
    # a quiet console: our lines, each once; Ray's and Tune's own output stays in Ray's log files, which it names
    console = (r.stdout + r.stderr).replace("\r", "")
    noise = ["PlacementGroupCleaner", "Failed to query Ray Train Controller", "Token authentication is enabled",
             "core_worker.cc", "PreemptionWatcher", "(RayTrainWorker", "(TrainController", "(_trial",
             "Configuration for experiment", "tensorboard", "setting parameters for standard version"]
    assert [n for n in noise if n in console] == []
    ours = [line for line in console.splitlines() if line.startswith("[")]
    assert len(ours) > 20 and sorted(set(ours)) == sorted(ours)  # nothing printed twice
    assert "[OAT] epoch 1/1" in r.stderr and "[PGDAT λ=1] test split" in r.stderr  # workers' and trials' lines
    assert "[ray] started a local Ray; its own logs: " in r.stdout
    oat_cmp = json.loads((out / "compare_oat" / "compare.json").read_text())
    oats_cmp = json.loads((out / "compare_oats" / "compare.json").read_text())
    assert [(row["lambda"], row["width"]) for row in oat_cmp["rows"]] == [(0.0, 1.0), (1.0, 1.0)]
    assert {(row["lambda"], row["width"]) for row in oats_cmp["rows"]} == {(0.0, 1.0), (1.0, 1.0), (0.0, 0.5),
                                                                           (1.0, 0.5)}
    assert oat_cmp["cost"]["sweep_worker_s"] > 0 and (out / "compare_oats" / "compare.png").is_file()
    c = MlflowClient(main_job["uri"])
    exp = c.get_experiment_by_name("digits-pipeline")
    names = {run.info.run_name for run in c.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'")}
    assert {"digits_pipeline_oat", "digits_pipeline_oats", "digits_pipeline_sweep", "digits_pipeline_sweep_lam0",
            "digits_pipeline_sweep_lam1"} <= names
    assert len(c.search_runs([exp.experiment_id], "tags.kind = 'comparison'")) == 2
    assert c.get_model_version_by_alias("digits_pipeline_oats", "champion").tags["widths"] == "0.5,1"


@pytest.mark.integration
def test_mlflow_ui_opens_on_the_trade_off_curves(main_job):
    """The MLflow UI after the main job, in headless Chromium: the experiment's chart view (as it opens, no chart
    built by hand) has the clean and the strong-attack test curves with the OAT and the PGDAT sweep runs in them;
    the registered model's page shows its model card; the comparison run's overview its table. The screenshots
    are kept (test-artifacts/, or $OAT_TEST_ARTIFACTS)."""
    import asyncio

    from benchmarks.ui_screenshots import CURVES, inspect_ui

    assert main_job["proc"].returncode == 0
    shots = Path(os.environ.get("OAT_TEST_ARTIFACTS", REPO / "test-artifacts"))
    seen = asyncio.run(inspect_ui(main_job["uri"], "digits-pipeline", "digits_pipeline_oat", shots))
    charts, runs = seen["chart_view"]["charts"], seen["chart_view"]["runs"]
    for curve in CURVES:
        chart = charts[curve]
        for run in ("digits_pipeline_oat", "digits_pipeline_oats", "digits_pipeline_sweep"):
            assert run in chart["legend"], f"{run} is not on the {curve} chart"
            assert runs[run] in chart["lines"], f"{run}'s line (colour {runs[run]}) is not on the {curve} chart"
    assert not any("/lam_" in title for title in charts if title.startswith("test/"))  # no wall of per-λ bars
    card = seen["model_card"]
    assert "Serves λ ∈ {0, 0.1, 0.2, 0.3, 0.4, 1}" in card and "APGD-CE + APGD-T" in card and "fingerprint" in card
    assert "SA OAT" in seen["compare_run"] and "Compute" in seen["compare_run"]
    for k in ("chart_view_png", "model_card_png", "compare_run_png"):
        assert Path(seen[k]).stat().st_size > 50_000  # a rendered page
