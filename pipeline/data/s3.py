"""Files on S3-compatible storage, with one clear message per failure.

A location is ``s3://bucket/key``. The endpoint and credentials come from the environment, never from a
job file, and are never logged:

* ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``: the endpoint (SeaweedFS, MinIO, …); unset: AWS itself;
* ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE`` and a credentials file that is not
  committed);
* ``AWS_DEFAULT_REGION``: default ``us-east-1``.

Uploads above 16 MiB go as multipart uploads. Downloads land under a temporary name and are renamed
into place, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.timeouts import timeout_s

CHUNK = 16 * 1024 * 1024


class StorageError(RuntimeError):
    """S3 unreachable, credentials refused, a missing bucket or object."""


def is_s3(url: str | os.PathLike[str]) -> bool:
    return str(url).startswith("s3://")


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    if not is_s3(url):
        raise StorageError(f"{url!r} is not an s3:// location")
    bucket, _, key = url[5:].partition("/")
    if not bucket:
        raise StorageError(f"{url!r} names no bucket: expected s3://BUCKET/PREFIX")
    return bucket, key.strip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _where() -> str:
    ep = endpoint()
    return f"the S3 endpoint {ep}" if ep else "AWS S3 (no AWS_ENDPOINT_URL set)"


@lru_cache(maxsize=8)
def _client(ep: str | None, identity: str, region: str, connect_s: float) -> Any:
    import boto3
    from botocore.config import Config

    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"},
                 connect_timeout=connect_s, read_timeout=60)
    return boto3.session.Session().client("s3", endpoint_url=ep, region_name=region, config=cfg)


def client() -> Any:
    """A boto3 S3 client for the environment's endpoint (cached per endpoint and access key)."""
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
    identity = hashlib.sha256("\0".join(os.environ.get(k, "") for k in (
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")).encode()).hexdigest()
    return _client(endpoint(), identity, region, timeout_s("s3"))


def explain(exc: BaseException, url: str) -> StorageError:
    """Turn a botocore failure into one sentence that says what to do (no secrets in it)."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError)):
        return StorageError(f"cannot reach {_where()} for {url}: is the server running? "
                            "(the endpoint comes from AWS_ENDPOINT_URL)")
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError)):
        return StorageError(f"no S3 credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE) in the environment")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"):
            kid = os.environ.get("AWS_ACCESS_KEY_ID", "")
            shown = f" (access key …{kid[-4:]})" if len(kid) >= 8 else ""
            return StorageError(f"{_where()} refused the credentials{shown} for {url} ({code}): check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
        if code == "NoSuchBucket":
            return StorageError(f"bucket {split_s3(url)[0]!r} does not exist on {_where()} ({url})")
        if code in ("404", "NoSuchKey", "NotFound"):
            return StorageError(f"{url} does not exist on {_where()}")
        return StorageError(f"S3 request for {url} failed: {code} {err.get('Message', '')}".strip())
    if isinstance(exc, bx.BotoCoreError):
        return StorageError(f"S3 request for {url} failed: {exc}")
    return StorageError(f"S3 request for {url} failed: {type(exc).__name__}: {exc}")


def call(url: str, fn: Callable[[], Any]) -> Any:
    from botocore import exceptions as bx

    try:
        return fn()
    except (bx.BotoCoreError, bx.ClientError) as exc:
        raise explain(exc, url) from None


def exists(url: str) -> bool:
    from botocore import exceptions as bx

    bucket, key = split_s3(url)
    try:
        client().head_object(Bucket=bucket, Key=key)
        return True
    except bx.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            _check_bucket(bucket, url)  # a missing bucket is an error, not "absent"
            return False
        raise explain(exc, url) from None
    except bx.BotoCoreError as exc:
        raise explain(exc, url) from None


def _check_bucket(bucket: str, url: str) -> None:
    from botocore import exceptions as bx

    try:
        client().head_bucket(Bucket=bucket)
    except bx.ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"bucket {bucket!r} does not exist on {_where()} ({url})") from None
        raise explain(exc, url) from None
    except bx.BotoCoreError as exc:
        raise explain(exc, url) from None


def read_bytes(url: str) -> bytes:
    bucket, key = split_s3(url)
    return call(url, lambda: client().get_object(Bucket=bucket, Key=key)["Body"].read())


def write_bytes(url: str, data: bytes) -> None:
    bucket, key = split_s3(url)
    call(url, lambda: client().put_object(Bucket=bucket, Key=key, Body=data))


def _transfer_config() -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=CHUNK, multipart_chunksize=CHUNK, max_concurrency=4)


def upload(local: Path, url: str) -> None:
    """Upload a file (multipart above 16 MiB). S3 makes the object visible only when it is complete."""
    bucket, key = split_s3(url)
    call(url, lambda: client().upload_file(str(local), bucket, key, Config=_transfer_config()))


def download(url: str, dest: Path) -> None:
    """Download to ``dest`` through a temporary name in the same folder (atomic rename)."""
    bucket, key = split_s3(url)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        call(url, lambda: client().download_file(bucket, key, str(tmp), Config=_transfer_config()))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_of(url: str) -> tuple[str, int]:
    """Stream an object and return (sha256, size) without keeping it."""
    bucket, key = split_s3(url)
    body = call(url, lambda: client().get_object(Bucket=bucket, Key=key)["Body"])
    h, n = hashlib.sha256(), 0
    for chunk in iter(lambda: body.read(CHUNK), b""):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()
