"""One handle on a job's data, whichever loader reads it.

``data.loader: ffcv`` (the default) reads the prepared ``.beton`` files (:mod:`.beton`, :mod:`.ffcv_loader`);
``data.loader: memory`` reads the raw files into tensors in this process (:class:`.loader.TensorLoader`), a
debugging path that needs no preparation step. Both give the same splits, the same augmentation and
images as float in [0, 1].
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any, Protocol

import torch

from pipeline.data.beton import Log, Prepared, log_stderr, manifest_fingerprint, open_prepared
from pipeline.data.datasets import Splits, get_dataset, load_splits
from pipeline.data.ffcv_loader import BetonLoader
from pipeline.data.loader import TensorLoader
from pipeline.data.settings import DataConfig

SPLIT_NAMES = ("train", "val", "test")


class Loader(Protocol):
    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def default_workers(cfg: DataConfig, threads: int | None = None) -> int:
    return int(cfg.workers or threads or len(os.sched_getaffinity(0)))


class DataSource:
    """Name, shape and sizes of a job's data set, and loaders over its splits."""

    kind = ""

    def __init__(self, name: str, image_shape: tuple[int, int, int], num_classes: int, augment: str | None,
                 counts: dict[str, int], workers: int, fingerprint: str = "", where: str = ""):
        self.name, self.image_shape, self.num_classes = name, image_shape, num_classes
        self.augment, self.counts, self.workers = augment, counts, workers
        self.fingerprint, self.where = fingerprint, where  # a hash of the images as prepared; where they are read

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "loader": self.kind, **self.counts, "image_shape": list(self.image_shape),
                "num_classes": self.num_classes}

    def as_input(self) -> dict[str, Any]:
        """The data set as a tracking input: name, fingerprint, origin (the package or files), split sizes."""
        spec = get_dataset(self.name)
        return {"name": self.name, "digest": self.fingerprint, "origin": spec.origin, "where": self.where,
                "counts": dict(self.counts), "image_shape": list(self.image_shape), "num_classes": self.num_classes,
                "split": spec.describe_split(self.counts.get("val", spec.val_size))}

    def loader(self, split: str, batch_size: int, *, device: torch.device | str = "cpu", train: bool = False,
               seed: int = 0, rank: int = 0, world_size: int = 1, limit: int | None = None,
               channels_last: bool = False) -> Loader:
        """``train``: shuffled, augmented, last partial batch dropped; otherwise the split in order, whole.
        ``world_size > 1``: this rank's shard (the FFCV train loader takes rank and size from the process
        group; evaluation shards are every world_size-th image, so the counts add up exactly)."""
        raise NotImplementedError


class MemorySource(DataSource):
    kind = "memory"

    def __init__(self, splits: Splits, workers: int):
        digest = hashlib.sha256()
        for s in SPLIT_NAMES:  # the images as loaded (no manifest in memory): a few ms for the small sets
            part = getattr(splits, s)
            digest.update(part.x.contiguous().numpy().tobytes())
            digest.update(part.y.contiguous().numpy().tobytes())
        super().__init__(splits.name, splits.image_shape, splits.num_classes, splits.augment,
                         {s: len(getattr(splits, s)) for s in SPLIT_NAMES}, workers, digest.hexdigest()[:16], "memory")
        self.splits = splits

    def loader(self, split: str, batch_size: int, *, device: torch.device | str = "cpu", train: bool = False,
               seed: int = 0, rank: int = 0, world_size: int = 1, limit: int | None = None,
               channels_last: bool = False) -> Loader:
        return TensorLoader(getattr(self.splits, split), batch_size, shuffle=train, drop_last=train,
                            augment=self.augment if train else None, device=device, seed=seed, rank=rank,
                            world_size=world_size, limit=limit, channels_last=channels_last)


class BetonSource(DataSource):
    kind = "ffcv"

    def __init__(self, prepared: Prepared, augment: bool, workers: int):
        m = prepared.manifest
        c, h, w = m.image_shape
        super().__init__(m.dataset, (c, h, w), m.num_classes, m.augment if augment else None,
                         {s: m.count(s) for s in SPLIT_NAMES}, workers, manifest_fingerprint(m), prepared.source)
        self.prepared = prepared

    def loader(self, split: str, batch_size: int, *, device: torch.device | str = "cpu", train: bool = False,
               seed: int = 0, rank: int = 0, world_size: int = 1, limit: int | None = None,
               channels_last: bool = False) -> Loader:
        entry = self.prepared.manifest.files[split]
        return BetonLoader(self.prepared.path(split), batch_size=batch_size, shuffle=train, drop_last=train,
                           count=int(entry["count"]), augment=self.augment if train else None,
                           scale=self.prepared.manifest.scale, device=device, seed=seed,
                           distributed=train and world_size > 1, workers=self.workers, limit=limit,
                           channels_last=channels_last, key=str(entry["sha256"]),
                           shard=(0, 1) if train else (rank, world_size))


def open_data(cfg: DataConfig, *, threads: int | None = None, log: Log = log_stderr) -> DataSource:
    workers = default_workers(cfg, threads)
    if cfg.loader == "memory":
        splits = load_splits(cfg)
        return MemorySource(splits, workers)
    return BetonSource(open_prepared(cfg, log), cfg.augment, workers)
