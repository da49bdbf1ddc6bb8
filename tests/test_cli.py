import json

import pytest

from pipeline.cli import build_parser, legacy_overrides, main
from pipeline.config import load_job


def legacy_job(argv):
    a = build_parser().parse_args(["train", *argv])
    return load_job(a.job, [*legacy_overrides(a), *a.overrides])


def test_official_oat_flags():
    job = legacy_job(["--method", "oat", "--ds", "cifar10", "-b", "128", "-e", "200", "--lr", "0.1", "--use2BN"])
    assert (job.method.name, job.data.dataset, job.model.backbone) == ("oat", "cifar10", "resnet34")
    assert (job.train.batch_size, job.train.epochs) == (128, 200)
    assert (job.optim.lr, job.model.use2BN) == (0.1, True)


def test_official_pgdat_flags():
    job = legacy_job("--method pgdat --ds svhn --Lambda 0.5 --eps 8 --steps 7 --decay cos".split())
    assert (job.method.name, job.model.backbone, job.method.Lambda) == ("pgdat", "wrn16_8", 0.5)
    assert job.train.batch_size == 256  # the official PGDAT default
    assert job.attack.eps == pytest.approx(8 / 255)
    assert job.attack.steps == 7 and job.optim.schedule == "cosine"
    job = legacy_job("--ds stl10 --lambda_choices 0 0.5 1 --encoding dct --dim 16 -e 3 --wd 1e-4".split())
    assert job.model.backbone == "wrn40_2" and job.method.lambda_choices == [0.0, 0.5, 1.0]
    assert (job.model.encoding, job.model.dim, job.train.epochs, job.optim.weight_decay) == ("dct", 16, 3, 1e-4)


def test_bad_config_exits_nonzero_with_key(capsys):
    assert main(["train", "jobs/digits_oat.yaml", "--set", "optim.schedule=linear"]) == 2
    err = capsys.readouterr().err
    assert "optim.schedule: 'linear' is not allowed; allowed values: cosine, multistep, constant" in err


def test_missing_dataset_exits_nonzero(tmp_path, capsys):
    rc = main(["train", "--ds", "cifar10", "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "run")])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CIFAR-10 not found" in err and "data.download=true" in err


def test_train_then_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "jobs/digits_oat.yaml", "--out", str(out), "--quiet", "--no-test",
            "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=3", "--set", "eval.max_images=20",
            "--set", "attack.steps=1", "--set", "model.channels=[4, 8, 8]"]
    assert main(args) == 0
    assert (out / "final.pt").is_file() and not (out / "eval.json").exists()
    js = tmp_path / "pts.json"
    rc = main(["evaluate", str(out / "final.pt"), "--lambdas", "0", "1", "--steps", "2", "--max-images", "30",
               "--json", str(js)])
    assert rc == 0
    pts = json.loads(js.read_text())["points"]
    assert [(p["lambda"], p["width"], p["steps"], p["n"]) for p in pts] == [(0.0, 1.0, 2, 30), (1.0, 1.0, 2, 30)]
    assert pts[0]["method"] == "oat" and pts[0]["attack"] == "pgd"
    assert pts[0]["eps"] == pytest.approx(load_job("jobs/digits_oat.yaml").attack.eps)
    assert js.with_suffix(".png").is_file()
    out_text = capsys.readouterr().out
    assert "SA" in out_text and "RA" in out_text
    assert main(["evaluate", str(out), "--lambdas", "0.25"]) == 2
    assert "λ [0.25] was not trained" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(tmp_path / "bad.pt")]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err


def test_every_timeout_is_read_from_its_variable_and_a_bad_value_is_named(monkeypatch):
    from pipeline.timeouts import TIMEOUTS, timeout_s

    for service, (var, default) in TIMEOUTS.items():
        monkeypatch.delenv(var, raising=False)
        assert 0 < timeout_s(service) == default <= 30
        monkeypatch.setenv(var, "3.5")
        assert timeout_s(service) == 3.5
        for bad in ("-1", "0", "nan", "soon"):
            monkeypatch.setenv(var, bad)
            with pytest.raises(ValueError, match=f"^{var}="):
                timeout_s(service)


def test_a_bad_mlflow_tracking_uri_in_the_environment_is_named(monkeypatch):
    from pipeline.platform.tracking import TrackingError, resolve_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://x/y")
    with pytest.raises(TrackingError, match=r"^MLFLOW_TRACKING_URI: 'ftp://x/y': MLflow cannot track into"):
        resolve_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(None) == "http://127.0.0.1:5000"


@pytest.mark.integration
def test_a_ray_address_that_accepts_but_never_answers_is_refused_after_the_timeout(tmp_path):
    """The connect watchdog: a socket listens at the address (a TCP probe succeeds) but no Ray answers there; Ray
    would retry for minutes. Its time is measured in benchmarks/results/fuzz.md, not asserted here."""
    import socket
    import subprocess
    import sys

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)
    addr = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "jobs/digits_oat.yaml", "--address", addr,
                            "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                           env={**__import__("os").environ, "OAT_RAY_CONNECT_TIMEOUT_S": "2"})
    finally:
        silent.close()
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"oat: error: cannot join the Ray cluster at {addr} within 2 s (no Ray GCS answered)" in r.stderr
    assert "Traceback" not in r.stderr and "rpc_client" not in r.stderr and "gcs_client" not in r.stderr
    assert not (tmp_path / "out").exists()
