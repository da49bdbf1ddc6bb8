"""Prepared sets in S3 (a real SeaweedFS server on loopback) and the node-local cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import DataConfig
from pipeline.data import DataError, prepare
from pipeline.data import s3 as storage
from pipeline.data.beton import fetch
from pipeline.platform.services import free_port
from pipeline.training.loop import fit

from .conftest import tiny_job

pytestmark = pytest.mark.integration  # every test here talks to the real S3 server

ROOT = Path(__file__).resolve().parent.parent


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def s3_digits(s3_server) -> str:
    """digits prepared once into S3 for this module."""
    url = "s3://data/sets/digits"
    old = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())
    try:
        _, status = prepare(DataConfig(dataset="digits"), url, log=quiet)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert status == "written"
    return url


def test_multipart_upload_round_trip(s3_env, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(storage.CHUNK + 1024 * 1024))  # above the multipart threshold
    storage.upload(src, "s3://oat/t/big.bin")
    head = storage.client().head_object(Bucket="oat", Key="t/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # S3's mark of a two-part upload
    storage.download("s3://oat/t/big.bin", tmp_path / "back.bin")
    assert storage.sha256_file(tmp_path / "back.bin") == storage.sha256_file(src)
    assert storage.sha256_of("s3://oat/t/big.bin") == (storage.sha256_file(src), src.stat().st_size)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert storage.exists("s3://oat/t/big.bin") and not storage.exists("s3://oat/t/none.bin")


def test_storage_errors_are_clear_and_keep_secrets(s3_env, monkeypatch, tmp_path, capsys):
    with pytest.raises(storage.StorageError, match="bucket 'nope' does not exist"):
        storage.exists("s3://nope/x")
    wrong = "definitely-not-the-secret-" + "x" * 8
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong)
    with pytest.raises(storage.StorageError, match="refused the credentials") as exc:
        storage.read_bytes("s3://oat/t/x")
    assert wrong not in str(exc.value) and s3_env.secret_key not in str(exc.value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env.secret_key)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(storage.StorageError, match="cannot reach the S3 endpoint http://127.0.0.1:"):
        storage.exists("s3://oat/x")
    rc = main(["data", "prepare", "--dataset", "digits", "--out", "s3://oat/sets/d"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot reach the S3 endpoint" in err


def test_prepare_to_s3_is_idempotent_and_checked(s3_env, s3_digits, tmp_path):
    keys = {o["Key"] for o in storage.client().list_objects_v2(Bucket="data", Prefix="sets/digits/")["Contents"]}
    assert keys == {f"sets/digits/{n}" for n in ("manifest.json", "train.beton", "val.beton", "test.beton")}
    _, status = prepare(DataConfig(dataset="digits"), s3_digits, log=quiet)
    assert status == "verified"


def test_node_cache_downloads_once_and_heals(s3_env, s3_digits, tmp_path):
    logs: list[str] = []
    first = fetch(s3_digits, tmp_path, log=logs.append)
    assert sum("downloading" in m for m in logs) == 3
    assert first.folder == tmp_path / "s3" / "data" / "sets" / "digits"
    for split in ("train", "val", "test"):
        assert storage.sha256_file(first.path(split)) == first.manifest.files[split]["sha256"]
    logs.clear()
    again = fetch(s3_digits, tmp_path, log=logs.append)
    assert logs == [] and again.path("train") == first.path("train")  # reused across runs
    with open(first.path("val"), "r+b") as f:  # a damaged cached copy is fetched again, not used
        f.truncate(100)
    fetch(s3_digits, tmp_path, log=logs.append)
    assert [m.split()[1] for m in logs] == [f"{s3_digits}/val.beton"]


def test_two_workers_on_one_node_download_each_file_once(s3_env, s3_digits, tmp_path):
    code = ("import sys; from pathlib import Path; from pipeline.data.beton import fetch; "
            "fetch(sys.argv[1], Path(sys.argv[2]), log=lambda m: print(m, flush=True))")
    procs = [subprocess.Popen([sys.executable, "-c", code, s3_digits, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum(o.count("downloading") for o in outs) == 3  # one download per file on this node


def test_a_corrupt_object_is_refused(s3_env, s3_digits, tmp_path):
    url = "s3://data/sets/broken"
    prepare(DataConfig(dataset="digits"), url, log=quiet)
    data = bytearray(storage.read_bytes(f"{url}/test.beton"))
    data[4096] ^= 0xFF
    storage.write_bytes(f"{url}/test.beton", bytes(data))
    with pytest.raises(DataError, match="test.beton does not match its manifest checksum"):
        fetch(url, tmp_path / "cache", log=quiet)
    leftovers = [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file() and "test.beton" in p.name]
    assert leftovers and all(n.endswith(".lock") for n in leftovers)  # nothing half-downloaded or unverified
    with pytest.raises(DataError, match="does not match its manifest checksum"):
        prepare(DataConfig(dataset="digits"), url, log=quiet)  # a second prepare verifies, and says so


def test_training_reads_a_set_from_s3(s3_env, s3_digits, tmp_path):
    job = tiny_job(train={"epochs": 1}, data={"beton": s3_digits, "cache_dir": str(tmp_path / "cache")})
    res = fit(job, tmp_path / "run", progress=False, final_test=False)
    assert res.history[0]["steps"] == 4 and (tmp_path / "cache" / "s3" / "data" / "sets" / "digits").is_dir()
