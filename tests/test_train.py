"""The training loop end to end on digits (CPU, seconds)."""

import json

import pytest
import torch
import yaml

from pipeline import load_model
from pipeline.config import load_job
from pipeline.files import CheckpointError, load_checkpoint
from pipeline.training.callbacks import Callback
from pipeline.training.loop import fit

from .conftest import tiny_job


class Crash(Exception):
    pass


class crash_after(Callback):  # noqa: N801  (reads as a function at the call site)
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, run, record, last):
        if record["epoch"] == self.epoch:
            raise Crash


SMALL_DATA = {"optim": {"name": "adam", "lr": 0.01, "schedule": "onecycle"}, "attack": {"warmup_epochs": 3}}


@pytest.mark.parametrize("method,loader,recipe", [("oat", "ffcv", {}), ("pgdat", "ffcv", {}), ("oats", "ffcv", {}),
                                                  ("oat", "memory", {}), ("oat", "memory", SMALL_DATA)])
def test_resume_continues_exactly(tmp_path, method, loader, recipe):
    """Also with the small-data recipe: Adam, a one-cycle schedule stepped per batch, an ε warm-up."""
    extra = {"method": {"name": method, "Lambda": 0.5}, "data": {"loader": loader}, **recipe}
    if method == "oats":
        extra["model"] = {"widths": [0.5, 1.0]}
    job = tiny_job(**extra, train={"epochs": 4})
    full = fit(job, tmp_path / "full", progress=False, final_test=False)
    with pytest.raises(Crash):
        fit(job, tmp_path / "cut", progress=False, final_test=False, callbacks=[crash_after(1)])
    assert load_checkpoint(tmp_path / "cut" / "latest.pt")["epoch"] == 1
    resumed = fit(job, tmp_path / "cut", progress=False, final_test=False)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]  # bit for bit on CPU
    a = torch.load(tmp_path / "full" / "final.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "cut" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list((tmp_path / "cut").glob(".*.tmp"))  # no half-written files left behind


def test_outputs_and_best_checkpoints(tmp_path):
    job = tiny_job()
    res = fit(job, tmp_path, progress=False)
    assert load_job(tmp_path / "config.yaml").to_dict() == job.to_dict()  # the resolved job, reloadable
    hist = json.loads((tmp_path / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [0, 1, 2] and all("val" in h for h in hist)
    assert all(0 <= h["data_wait_share"] < 1 and h["data_wait_s"] >= 0 for h in hist)
    index = json.loads((tmp_path / "best" / "index.json").read_text())
    assert set(index) == {f"lambda={lam:g},width=1" for lam in job.method.lambda_choices}
    files = {v["file"] for v in index.values()}
    assert {p.name for p in (tmp_path / "best").glob("epoch*.pt")} == files  # unreferenced files removed
    for key, v in index.items():
        lam = float(key.split(",")[0].split("=")[1])
        assert v["score"] == pytest.approx((1 - lam) * v["clean_acc"] + lam * v["robust_acc"])
    doc = json.loads((tmp_path / "eval.json").read_text())
    assert {tuple(sorted(p)) for p in doc["points"]} == {tuple(sorted(
        ["method", "lambda", "width", "clean_acc", "robust_acc", "attack", "steps", "eps", "n", "norm"]))}
    assert [p["lambda"] for p in doc["points"]] == job.method.lambda_choices
    assert all(p["steps"] == 3 and p["n"] == 50 for p in doc["points"])
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    assert res.test_points and res.seconds > 0
    m = load_model(tmp_path / "best" / files.pop())
    assert m.lambdas == job.method.lambda_choices


def test_encoding_matrix_travels_with_checkpoint(tmp_path):
    fit(tiny_job(train={"epochs": 1}), tmp_path, progress=False, final_test=False)
    ckpt = torch.load(tmp_path / "final.pt", weights_only=True)
    tampered = torch.linalg.qr(torch.randn(8, 8))[0]
    ckpt["state_dict"]["encoding_matrix"] = tampered
    torch.save(ckpt, tmp_path / "tampered.pt")
    m = load_model(tmp_path / "tampered.pt")
    assert torch.equal(m.encoding_matrix, tampered)  # reloaded, not redrawn


def test_corrupt_and_foreign_checkpoints(tmp_path):
    fit(tiny_job(train={"epochs": 1}), tmp_path, progress=False, final_test=False)
    data = (tmp_path / "latest.pt").read_bytes()
    (tmp_path / "latest.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        fit(tiny_job(train={"epochs": 2}), tmp_path, progress=False, final_test=False)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an OAT pipeline checkpoint"):
        load_model(tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.pt")


def test_resume_refuses_a_different_job(tmp_path):
    fit(tiny_job(train={"epochs": 1}), tmp_path, progress=False, final_test=False)
    with pytest.raises(CheckpointError, match="different 'attack' section"):
        fit(tiny_job(train={"epochs": 1}, attack={"eps": 0.1}), tmp_path, progress=False, final_test=False)
    with pytest.raises(CheckpointError, match="belongs to a different model"):
        fit(tiny_job(train={"epochs": 1}, method={"name": "pgdat"}), tmp_path, progress=False, final_test=False)


def test_progress_shows_epochs_and_eta(tmp_path, capsys):
    fit(tiny_job(train={"epochs": 2}), tmp_path, final_test=False)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "ETA" in err and "img/s" in err and "val SA/RA" in err


def test_reference_job_yaml_is_what_train_runs(tmp_path):
    job = tiny_job()
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job.to_dict()))
    assert load_job(tmp_path / "job.yaml").to_dict() == job.to_dict()


def test_eps_warmup_and_one_cycle_schedule(tmp_path):
    job = tiny_job(train={"epochs": 3}, attack={"eps": 0.3, "warmup_epochs": 2, "step_rule": "madry"},
                   optim={"name": "adam", "lr": 0.01, "schedule": "onecycle"})
    hist = fit(job, tmp_path, progress=False, final_test=False).history
    assert [h["train_eps"] for h in hist] == pytest.approx([0.15, 0.3, 0.3])  # linear, then the full ε
    lrs = [h["lr"] for h in hist]
    assert max(lrs) <= 0.01 and lrs[-1] < 0.05 * 0.01 < 0.5 * 0.01 < lrs[0]  # one cycle over the run, per batch
    assert job.attack.step_size == pytest.approx(2.5 * 0.3 / job.attack.steps)
    ckpt = load_checkpoint(tmp_path / "latest.pt")
    assert "exp_avg" in str(ckpt["optimizer"]["state"][0].keys())  # Adam's state, resumable
