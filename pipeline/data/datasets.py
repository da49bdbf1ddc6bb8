"""Data sets with the reference splits, held in memory as uint8 NCHW tensors.

* ``digits``: scikit-learn's bundled real data set (1,797 8×8 grey images, 17 levels), a fixed
  shuffled split: 1,400 train (the last 200 of them held out for validation) / 397 test.
* ``cifar10``: the python version (``cifar-10-batches-py``); train = first 45,000, val = last 5,000.
* ``svhn``: ``train_32x32.mat`` / ``test_32x32.mat``; train = first 68,257, val = last 5,000.
* ``stl10``: ``stl10_binary``; train = first 4,500, val = last 500 (the official code validated on
  the test set; we keep a held-out split).

Files are read in torchvision's on-disk formats, so a folder torchvision downloaded works as is; with
``data.download: true`` torchvision downloads what is missing (needs internet).
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
DIGIT_CLASSES = [str(i) for i in range(10)]
CLASSES = {"digits": DIGIT_CLASSES, "cifar10": CIFAR10_CLASSES, "svhn": DIGIT_CLASSES, "stl10": STL10_CLASSES}
DATASETS = ("digits", "cifar10", "svhn", "stl10")


def split_definition(name: str, val_size: int) -> str:
    """The reference split in words (written into every prepared set's manifest)."""
    return {
        "digits": f"scikit-learn digits permuted with torch seed 0; train = the first {1400 - val_size}, "
                  f"val = the next {val_size}, test = the last 397",
        "cifar10": f"train = data_batch_1..5 without their last {val_size} images; val = those last {val_size}; "
                   "test = test_batch",
        "svhn": f"train = train_32x32.mat without its last {val_size} images; val = those last {val_size}; "
                "test = test_32x32.mat (extra_32x32.mat unused); label 10 is the digit 0",
        "stl10": f"train = train_X.bin without its last {val_size} images; val = those last {val_size}; "
                 "test = test_X.bin (unlabeled.bin unused)",
    }[name]


class DataError(RuntimeError):
    """A data set that is missing, truncated or not in the expected format."""


@dataclass
class ImageSet:
    x: Tensor  # uint8 [N, C, H, W]
    y: Tensor  # int64 [N]
    scale: float  # x / scale is the image in [0, 1] (255, or 16 for digits)

    def __len__(self) -> int:
        return int(self.y.numel())

    def subset(self, start: int, stop: int | None) -> ImageSet:
        return ImageSet(self.x[start:stop], self.y[start:stop], self.scale)


@dataclass
class Splits:
    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    num_classes: int
    augment: str | None  # the reference train augmentation: "crop_flip" or None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.name, "train": len(self.train), "val": len(self.val), "test": len(self.test),
                "image_shape": list(self.image_shape), "num_classes": self.num_classes}


def _split(name: str, train: ImageSet, test: ImageSet, val_size: int, augment: str | None) -> Splits:
    if not 0 < val_size < len(train):
        raise DataError(f"data.val_size={val_size} must lie between 1 and {len(train) - 1} for {name}")
    n = len(train) - val_size
    return Splits(name, train.subset(0, n), train.subset(n, None), test, 10, augment)


def load_digits(val_size: int = 200) -> Splits:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.uint8))[:, None]  # [1797, 1, 8, 8], values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return _split("digits", ImageSet(x[:1400], y[:1400], 16.0), ImageSet(x[1400:], y[1400:], 16.0),
                  val_size, None)


def _need(path: Path, what: str, cfg: DataConfig) -> None:
    if not path.exists():
        raise DataError(
            f"{what} not found: {path} is missing. Put the data set under data.root={cfg.root!r} "
            f"(torchvision's layout), or set data.download=true to download it (needs internet)."
        )


def _download(name: str, root: str) -> None:
    import torchvision.datasets as tvd

    if name == "cifar10":
        tvd.CIFAR10(root, train=True, download=True)
        tvd.CIFAR10(root, train=False, download=True)
    elif name == "svhn":
        tvd.SVHN(root, split="train", download=True)
        tvd.SVHN(root, split="test", download=True)
    elif name == "stl10":
        tvd.STL10(root, split="train", download=True)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the data set's own format (numpy arrays)
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any failure here means a damaged file
        raise DataError(f"{path} is not a readable CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10(cfg: DataConfig) -> Splits:
    base = Path(cfg.root) / "cifar-10-batches-py"
    if cfg.download and not base.exists():
        _download("cifar10", cfg.root)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        _need(base / name, "CIFAR-10", cfg)
    parts = [_read_cifar_batch(base / name) for name in names[:-1]]
    tx, ty = _read_cifar_batch(base / "test_batch")
    train = ImageSet(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                     torch.from_numpy(np.concatenate([p[1] for p in parts])), 255.0)
    return _split("cifar10", train, ImageSet(torch.from_numpy(tx), torch.from_numpy(ty), 255.0),
                  int(cfg.val_size or 5000), "crop_flip")


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1))).astype(np.uint8)  # HWCN -> NCHW
        y = mat["y"].astype(np.int64).reshape(-1)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path} is not a readable SVHN .mat file ({type(exc).__name__}: {exc})") from None
    y[y == 10] = 0  # SVHN stores the digit 0 as label 10
    return x, y


def load_svhn(cfg: DataConfig) -> Splits:
    root = Path(cfg.root)
    if cfg.download and not (root / "train_32x32.mat").exists():
        _download("svhn", cfg.root)
    for f in ("train_32x32.mat", "test_32x32.mat"):
        _need(root / f, "SVHN", cfg)
    x, y = _read_svhn(root / "train_32x32.mat")
    tx, ty = _read_svhn(root / "test_32x32.mat")
    return _split("svhn", ImageSet(torch.from_numpy(x), torch.from_numpy(y), 255.0),
                  ImageSet(torch.from_numpy(tx), torch.from_numpy(ty), 255.0), int(cfg.val_size or 5000), None)


def _read_stl(xpath: Path, ypath: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(xpath, dtype=np.uint8)
    if raw.size % (3 * 96 * 96) != 0:
        raise DataError(f"{xpath} is truncated: {raw.size} bytes is not a whole number of 3×96×96 images")
    x = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))  # stored column-major
    y = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1  # labels 1..10 on disk
    if len(y) != len(x):
        raise DataError(f"{xpath}: {len(x)} images but {ypath} has {len(y)} labels")
    return x, y


def load_stl10(cfg: DataConfig) -> Splits:
    base = Path(cfg.root) / "stl10_binary"
    if cfg.download and not base.exists():
        _download("stl10", cfg.root)
    for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        _need(base / f, "STL-10", cfg)
    x, y = _read_stl(base / "train_X.bin", base / "train_y.bin")
    tx, ty = _read_stl(base / "test_X.bin", base / "test_y.bin")
    return _split("stl10", ImageSet(torch.from_numpy(x), torch.from_numpy(y), 255.0),
                  ImageSet(torch.from_numpy(tx), torch.from_numpy(ty), 255.0), int(cfg.val_size or 500), "crop_flip")


def load_splits(cfg: DataConfig) -> Splits:
    if cfg.dataset == "digits":
        splits = load_digits(int(cfg.val_size or 200))
    elif cfg.dataset == "cifar10":
        splits = load_cifar10(cfg)
    elif cfg.dataset == "svhn":
        splits = load_svhn(cfg)
    elif cfg.dataset == "stl10":
        splits = load_stl10(cfg)
    else:  # the config schema already rejects this; kept for direct callers
        raise DataError(f"unknown data set {cfg.dataset!r}; allowed: {', '.join(DATASETS)}")
    if not cfg.augment:
        splits.augment = None
    return splits
