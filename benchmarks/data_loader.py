"""Images per second: the FFCV loader against torchvision's DataLoader, and data wait in an OAT run.

    .venv/bin/python -m benchmarks.data_loader [--images 12000] [--workers 2] [--epochs 3]

1. A CIFAR-10-shaped data set (32×32×3, random pixels, in CIFAR-10's own on-disk format) with
   ``--images`` training images is prepared as .beton files. Both loaders read it with the CIFAR-10 train
   augmentation (pad-4 random crop + horizontal flip), batch 256, ``--workers`` workers (FFCV: decoding
   threads; torchvision: DataLoader processes over ``torchvision.datasets.CIFAR10`` with
   ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, ``ToTensor()``), and give float images in
   [0, 1]. Throughput is the median over ``--epochs`` epochs after a warm-up epoch (FFCV's warm-up is its
   JIT compilation, reported separately).
2. An OAT run (small CNN, PGD-7, batch 128) on the same set through ``oat``'s training loop: the share of
   each epoch spent waiting for the next batch (``data_wait_share`` in history.json).

Writes ``benchmarks/results/data_loader.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import RESULTS, write_result


def write_cifar_like(root: Path, n_train: int, n_test: int = 1000) -> None:
    """CIFAR-10's python format: five training batches, a test batch and batches.meta."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    per = n_train // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist()}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)


def time_epochs(loader, epochs: int, set_epoch=None) -> tuple[float, list[float], int]:
    """(warm-up seconds, per-epoch img/s, images per epoch)."""
    rates, warm, n = [], 0.0, 0
    for e in range(epochs + 1):
        if set_epoch:
            set_epoch(e)
        t0 = time.perf_counter()
        n = 0
        for x, y in loader:
            n += int(y.numel())
            x.sum()  # touch the batch as a training step would
        dt = time.perf_counter() - t0
        if e == 0:
            warm = dt
        else:
            rates.append(n / dt)
    return warm, rates, n


def bench_ffcv(cfg_root: Path, workers: int, epochs: int, val: int) -> dict:
    from pipeline.config import DataConfig
    from pipeline.data import open_data

    src = open_data(DataConfig(dataset="cifar10", root=str(cfg_root), val_size=val, workers=workers,
                               cache_dir=str(cfg_root / "cache")), log=lambda m: None)
    ld = src.loader("train", 256, train=True, seed=0)
    warm, rates, n = time_epochs(ld, epochs, ld.set_epoch)
    return {"images_per_epoch": n, "warmup_epoch_s": warm, "img_per_s": statistics.median(rates),
            "img_per_s_epochs": rates}


def bench_torchvision(cfg_root: Path, workers: int, epochs: int, val: int) -> dict:
    import torchvision
    import torchvision.transforms as T

    class CIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:  # our generated files are not the official ones (md5)
            return True

        def _load_meta(self) -> None:
            self.classes = [str(i) for i in range(10)]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    ds = CIFAR10(str(cfg_root), train=True, transform=tf, download=False)
    ds = torch.utils.data.Subset(ds, range(len(ds) - val))  # the same training images as the .beton train split
    ld = torch.utils.data.DataLoader(ds, batch_size=256, shuffle=True, drop_last=True, num_workers=workers,
                                     persistent_workers=workers > 0)
    warm, rates, n = time_epochs(ld, epochs)
    return {"images_per_epoch": n, "warmup_epoch_s": warm, "img_per_s": statistics.median(rates),
            "img_per_s_epochs": rates}


def bench_oat_wait(cfg_root: Path, workers: int, val: int, steps: int, epochs: int) -> dict:
    from pipeline.config import job_from_dict
    from pipeline.training.loop import fit

    job = job_from_dict({
        "name": "bench-data-wait",
        "data": {"dataset": "cifar10", "root": str(cfg_root), "val_size": val, "workers": workers,
                 "cache_dir": str(cfg_root / "cache")},
        "model": {"backbone": "small_cnn", "channels": [32, 64, 128]},
        "method": {"name": "oat"},
        "train": {"epochs": epochs, "batch_size": 128, "device": "cpu", "max_steps_per_epoch": steps},
        "eval": {"every": 1000, "last_quarter": False, "max_images": 100, "val_steps": 1},
    })
    res = fit(job, cfg_root / "oat-run", progress=False, final_test=False)
    h = res.history
    return {"model": "small_cnn [32, 64, 128], OAT, PGD-7, batch 128", "steps_per_epoch": steps,
            "epochs": [{k: r[k] for k in ("epoch", "seconds", "data_wait_s", "data_wait_share", "images_per_s")}
                       for r in h],
            "data_wait_share_after_warmup": sum(r["data_wait_s"] for r in h[1:]) / sum(r["seconds"] for r in h[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=12000, help="training images before the validation split")
    ap.add_argument("--val", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--oat-steps", type=int, default=12)
    ap.add_argument("--oat-epochs", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "data_loader.json"))
    a = ap.parse_args()
    torch.set_num_threads(a.workers)
    with tempfile.TemporaryDirectory(prefix="oat-bench-") as tmp:
        root = Path(tmp)
        write_cifar_like(root, a.images)
        t0 = time.perf_counter()
        ffcv = bench_ffcv(root, a.workers, a.epochs, a.val)
        prep_and_ffcv = time.perf_counter() - t0
        tv = bench_torchvision(root, a.workers, a.epochs, a.val)
        wait = bench_oat_wait(root, a.workers, a.val, a.oat_steps, a.oat_epochs)
    result = {
        "dataset": {"shape": [3, 32, 32], "train_images": a.images - a.val, "augmentation": "pad-4 crop + flip",
                    "batch": 256, "workers": a.workers},
        "ffcv": ffcv, "torchvision": tv, "speedup": ffcv["img_per_s"] / tv["img_per_s"],
        "prepare_plus_ffcv_bench_s": prep_and_ffcv, "oat_data_wait": wait,
    }
    write_result("data_loader", result, a.out)
    print(f"\n{'loader':<12} {'img/s':>10} {'warm-up epoch':>14}")
    for name in ("ffcv", "torchvision"):
        r = result[name]
        print(f"{name:<12} {r['img_per_s']:>10,.0f} {r['warmup_epoch_s']:>13.1f}s")
    print(f"FFCV / torchvision: {result['speedup']:.1f}×  ({a.workers} workers, {a.images - a.val} images, batch 256)")
    print(f"OAT run data wait: {100 * wait['data_wait_share_after_warmup']:.2f}% of step time after the first epoch "
          f"(first epoch, with FFCV's JIT compile: {100 * wait['epochs'][0]['data_wait_share']:.1f}%)")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
