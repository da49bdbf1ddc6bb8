"""Prepared data sets: the reference splits written once as FFCV ``.beton`` files, plus a manifest.

A prepared set is a folder or an ``s3://bucket/prefix`` holding::

    train.beton  val.beton  test.beton   fields: image (uint8 H×W×C, raw), label (int), index (int)
    manifest.json                        counts, classes, image shape, split definition, sha256 per file,
                                         the writer's versions; written last, so its presence means "complete"

Images are stored raw (no JPEG), so what training reads is bit for bit what the data set holds.

Reading (:func:`open_prepared`): a local set is verified against its manifest; a set in S3 is downloaded
once per node into the node-local cache (``data.cache_dir``, ``$OAT_CACHE_DIR`` or ``~/.cache/oat``) under a
file lock, so two workers on one node never download the same file twice, and every file is checked against
the manifest's sha256. Without ``data.beton`` the set is prepared into the cache on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data import s3 as storage
from pipeline.data.datasets import DataError, ImageSet, get_dataset, load_splits
from pipeline.data.settings import DataConfig
from pipeline.files import atomic_write_text

FORMAT = "oat-beton/1"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")

Log = Callable[[str], None]


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Manifest:
    dataset: str
    num_classes: int
    classes: list[str]
    image_shape: list[int]  # [C, H, W]
    scale: float  # stored value / scale = the image in [0, 1]
    augment: str | None  # the reference train augmentation ("crop_flip") or None
    val_size: int
    split_definition: str
    files: dict[str, dict[str, Any]]  # split -> {"file", "count", "bytes", "sha256"}
    writer: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: str = FORMAT

    def count(self, split: str) -> int:
        return int(self.files[split]["count"])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> Manifest:
        try:
            d = json.loads(text)
        except ValueError as exc:
            raise DataError(f"{where} is not valid JSON ({exc}): rewrite the set with `oat data prepare --force`") \
                from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{where} is not a prepared-data manifest (no '{FORMAT}' marker)")
        try:
            m = cls(**d)
        except TypeError as exc:
            raise DataError(f"{where} is malformed ({exc})") from None
        missing = [s for s in SPLITS if s not in m.files]
        if missing:
            raise DataError(f"{where} lists no {', '.join(missing)} split")
        return m


def manifest_fingerprint(m: Manifest) -> str:
    """A hash of a prepared set's manifest (its files' sha256, the split, the preparation time): it changes when
    the set is prepared again (``oat data prepare --force``) or replaced in S3."""
    doc = {"dataset": m.dataset, "split": m.split_definition, "created": m.created,
           "files": {k: v.get("sha256") for k, v in sorted(m.files.items())}}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Prepared:
    """A verified prepared set on this node's disk."""

    source: str  # where it came from (a folder or s3://…)
    folder: Path  # where the .beton files are on this node
    manifest: Manifest

    def path(self, split: str) -> Path:
        entry = self.manifest.files[split]
        return self.folder / entry.get("local", entry["file"])


def cache_root(cfg: DataConfig | None = None) -> Path:
    base = (cfg.cache_dir if cfg is not None else None) or os.environ.get("OAT_CACHE_DIR")
    return Path(base).expanduser() if base else Path.home() / ".cache" / "oat"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock shared by every process on this node (``flock`` on ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def writer_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("oat-pipeline", "ffcv", "numpy", "torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


class _Samples:
    """The indexed data set FFCV's writer reads: (image H×W×C uint8, label, index)."""

    def __init__(self, images: ImageSet):
        self.x = images.x.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = images.y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int, int]:
        return self.x[i], int(self.y[i]), int(i)


def write_split(images: ImageSet, path: Path, workers: int = 2) -> dict[str, Any]:
    """Write one split to ``path`` through a temporary name; returns its manifest entry."""
    from pipeline.data.ffcv_loader import import_ffcv

    import_ffcv()
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    c, h, w = images.x.shape[1:]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # 2 MiB pages (FFCV's minimum; each writer process leaves one partly filled); one process for a
        # small set, where more would only add empty page space
        total = len(images) * c * h * w
        writer = DatasetWriter(str(tmp), {"image": NDArrayField(np.dtype("uint8"), (h, w, c)),
                                          "label": IntField(), "index": IntField()},
                               page_size=1 << 21, num_workers=max(1, min(workers, 8, total // (32 << 20) + 1)))
        writer.from_indexed_dataset(_Samples(images), chunksize=1000)
        digest = storage.sha256_file(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": path.name, "count": len(images), "bytes": size, "sha256": digest}


# ------------------------------------------------------------------------------------------ prepare
def read_manifest(dest: str) -> Manifest | None:
    """The manifest at ``dest`` (folder or s3://), or None when there is none."""
    if storage.is_s3(dest):
        url = storage.join(dest, MANIFEST)
        if not storage.exists(url):
            return None
        return Manifest.from_json(storage.read_bytes(url), url)
    p = Path(dest) / MANIFEST
    if not p.is_file():
        return None
    return Manifest.from_json(p.read_text(), str(p))


def verify(dest: str, manifest: Manifest) -> None:
    """Every file of ``manifest`` is at ``dest`` with the recorded size and sha256."""
    for split in SPLITS:
        entry = manifest.files[split]
        where = storage.join(dest, entry["file"]) if storage.is_s3(dest) else str(Path(dest) / entry["file"])
        if storage.is_s3(dest):
            if not storage.exists(where):
                raise DataError(f"{where} is missing (the manifest lists it): rewrite the set with "
                                "`oat data prepare --force`")
            digest, size = storage.sha256_of(where)
        else:
            p = Path(where)
            if not p.is_file():
                raise DataError(f"{p} is missing (the manifest lists it): rewrite the set with "
                                "`oat data prepare --force`")
            size = p.stat().st_size
            digest = storage.sha256_file(p) if size == entry["bytes"] else ""
        if size != entry["bytes"]:
            raise DataError(f"{where} is truncated or altered: {size} bytes, the manifest says {entry['bytes']}")
        if digest != entry["sha256"]:
            raise DataError(f"{where} does not match its manifest checksum (sha256 {digest[:12]}…, expected "
                            f"{entry['sha256'][:12]}…): the file is corrupt; rewrite it with "
                            "`oat data prepare --force`")


def _check_kind(manifest: Manifest, dataset: str, val_size: int, where: str, hint: str) -> None:
    if manifest.dataset != dataset:
        raise DataError(f"{where} holds {manifest.dataset}, not {dataset}{hint}")
    if manifest.val_size != val_size:
        raise DataError(f"{where} was prepared with val_size={manifest.val_size}, not {val_size}{hint}")


def prepare(cfg: DataConfig, dest: str, *, force: bool = False, workers: int | None = None,
            log: Log = log_stderr) -> tuple[Manifest, str]:
    """Write ``cfg.dataset``'s reference splits to ``dest`` (a folder or s3://bucket/prefix).

    Returns (manifest, "written" | "verified"). Run again without ``force`` it only verifies checksums."""
    spec = get_dataset(cfg.dataset)
    val_size = int(cfg.val_size or spec.val_size)
    cfg = cfg.model_copy(update={"val_size": val_size})
    dest = dest if storage.is_s3(dest) else str(Path(dest).expanduser())
    if not force:
        existing = read_manifest(dest)
        if existing is not None:
            _check_kind(existing, cfg.dataset, val_size, dest, "; use --force to rewrite it, or another --out")
            log(f"{dest} already holds {cfg.dataset} (val_size={val_size}); verifying checksums")
            verify(dest, existing)
            return existing, "verified"

    t0 = time.perf_counter()
    # a missing or damaged raw set fails here, before any write
    splits = load_splits(cfg.model_copy(update={"augment": True}))
    log(f"preparing {cfg.dataset} (val_size={val_size}) as .beton files in {dest}")
    n_workers = workers or len(os.sched_getaffinity(0))
    files: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        if storage.is_s3(dest):
            staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oat-prepare-",
                                                                           dir=_staging_dir(cfg))))
            if storage.exists(storage.join(dest, MANIFEST)):  # nothing half-old, half-new is ever "complete"
                _s3_delete(storage.join(dest, MANIFEST))
        else:
            staging = Path(dest)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / MANIFEST).unlink(missing_ok=True)
        for split in SPLITS:
            part: ImageSet = getattr(splits, split)
            log(f"writing {split}: {len(part)} images → {storage.join(dest, split + '.beton')}")
            files[split] = write_split(part, staging / f"{split}.beton", n_workers)
            if storage.is_s3(dest):
                storage.upload(staging / f"{split}.beton", storage.join(dest, f"{split}.beton"))
        c, h, w = splits.image_shape
        manifest = Manifest(dataset=cfg.dataset, num_classes=splits.num_classes, classes=list(spec.classes),
                            image_shape=[c, h, w], scale=float(splits.train.scale), augment=splits.augment,
                            val_size=val_size, split_definition=spec.describe_split(val_size),
                            files=files, writer=writer_versions(),
                            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        if storage.is_s3(dest):
            storage.write_bytes(storage.join(dest, MANIFEST), manifest.to_json().encode())
        else:
            atomic_write_text(manifest.to_json(), staging / MANIFEST)
    log(f"prepared {cfg.dataset} in {time.perf_counter() - t0:.1f} s: "
        + ", ".join(f"{s} {files[s]['count']}" for s in SPLITS) + f" → {dest}")
    return manifest, "written"


def _staging_dir(cfg: DataConfig) -> Path:
    d = cache_root(cfg) / "staging"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _s3_delete(url: str) -> None:
    bucket, key = storage.split_s3(url)
    storage.call(url, lambda: storage.client().delete_object(Bucket=bucket, Key=key))


# ------------------------------------------------------------------------------------------ read
def fetch(source: str, cache: Path, log: Log = log_stderr) -> Prepared:
    """A verified prepared set on this node: a local folder as is, an S3 set through the node cache."""
    hint = f": prepare it with `oat data prepare --dataset NAME --out {source}`"
    manifest = read_manifest(source)
    if manifest is None:
        raise DataError(f"{source} holds no prepared data set ({MANIFEST} is missing){hint}")
    if not storage.is_s3(source):
        verify(source, manifest)
        return Prepared(source, Path(source).expanduser(), manifest)

    bucket, key = storage.split_s3(source)
    folder = cache / "s3" / bucket / key
    for split in SPLITS:
        entry = manifest.files[split]
        local = f"{entry['sha256'][:16]}-{entry['file']}"  # a rewritten set gets new names, never a stale file
        target = folder / local
        with file_lock(folder / f".{local}.lock"):
            if not (target.is_file() and target.stat().st_size == entry["bytes"]
                    and storage.sha256_file(target) == entry["sha256"]):
                url = storage.join(source, entry["file"])
                log(f"downloading {url} ({entry['bytes'] / 2**20:.1f} MiB) into the node cache {folder}")
                tmp = folder / f".{local}.{os.getpid()}.download"
                try:
                    storage.download(url, tmp)
                    digest = storage.sha256_file(tmp)
                    if digest != entry["sha256"]:
                        raise DataError(f"{url} does not match its manifest checksum (sha256 {digest[:12]}…, "
                                        f"expected {entry['sha256'][:12]}…): rewrite the set with "
                                        "`oat data prepare --force`")
                    os.replace(tmp, target)
                finally:
                    tmp.unlink(missing_ok=True)
        entry["local"] = local
    return Prepared(source, folder, manifest)


def open_prepared(cfg: DataConfig, log: Log = log_stderr) -> Prepared:
    """The job's prepared set: ``data.beton`` when given, else one prepared on first use into the cache."""
    spec = get_dataset(cfg.dataset)
    val_size = int(cfg.val_size or spec.val_size)
    cache = cache_root(cfg)
    if cfg.beton:
        prepared = fetch(cfg.beton, cache, log)
        _check_kind(prepared.manifest, cfg.dataset, val_size, cfg.beton,
                    "; point data.beton at the right set or change data.dataset / data.val_size")
        return prepared
    key = f"{cfg.dataset}-val{val_size}"
    if not spec.bundled:  # two raw copies in different folders are not assumed to be the same data
        import hashlib

        key += "-" + hashlib.sha256(str(Path(cfg.root).expanduser().resolve()).encode()).hexdigest()[:8]
    dest = cache / "prepared" / key
    with file_lock(cache / "prepared" / f".{key}.lock"):
        if read_manifest(str(dest)) is None:
            if dest.exists():
                shutil.rmtree(dest)  # a preparation that crashed before its manifest: start again
            prepare(cfg, str(dest), log=log)  # once per node; later runs reuse it
        return fetch(str(dest), cache, log)
