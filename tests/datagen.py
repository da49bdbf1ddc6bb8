"""Small generated data sets in the real on-disk formats (CIFAR-10 pickles, SVHN .mat, STL-10 binary)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io


def write_cifar(root: Path, n_per_batch: int = 6, n_test: int = 5, seed: int = 0) -> list:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = n_test if name == "test_batch" else n_per_batch
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(base / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f)
        batches.append((data, labels))
    return batches


def write_svhn(root: Path, n_train: int = 12, n_test: int = 4, seed: int = 1) -> np.ndarray:
    """Returns the train images as [N, 3, 32, 32]."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    first = None
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = np.array([[10], [1], [2], [3]] * (n // 4), dtype=np.uint8)
        scipy.io.savemat(root / name, {"X": X, "y": y})
        if name.startswith("train"):
            first = X.transpose(3, 2, 0, 1).copy()
    return first


def write_stl(root: Path, n_train: int = 6, n_test: int = 2, seed: int = 2) -> np.ndarray:
    """Returns the images as [N, 3, 96, 96] (train first)."""
    base = root / "stl10_binary"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, (max(n_train, n_test), 3, 96, 96), dtype=np.uint8)
    for split, n in (("train", n_train), ("test", n_test)):
        # the binary stores each channel column-major
        np.ascontiguousarray(imgs[:n].transpose(0, 1, 3, 2)).tofile(base / f"{split}_X.bin")
        (np.arange(n, dtype=np.uint8) % 10 + 1).tofile(base / f"{split}_y.bin")
    return imgs
