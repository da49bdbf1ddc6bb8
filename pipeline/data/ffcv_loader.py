"""FFCV loaders behind the training loop's loader interface (``set_epoch``, ``len``, iteration).

Train pipeline: raw uint8 image → the data set's reference augmentation with FFCV's own operations
(``RandomTranslate(4)`` is the pad-4 random crop, then ``RandomHorizontalFlip``) → tensor → ``ToDevice``
(non-blocking, from pinned memory) when training on a GPU → NCHW view. The one float conversion (÷ scale,
so images are in [0, 1], no normalisation) happens on the training device and is also the copy out of
FFCV's reused buffers. Eval pipelines have no augmentation and keep the data set's order.

Order: ``OrderOption.RANDOM`` seeded by (seed, epoch); under DDP ``distributed=True`` gives each rank a
disjoint shard (PyTorch's DistributedSampler). :meth:`BetonLoader.set_epoch` sets FFCV's epoch before each
pass, so a resumed run sees the same order as an uninterrupted one. FFCV's augmentation draws come from
numba's per-thread generators and are not reproducible run to run; the order is.

A new FFCV loader JIT-compiles its pipeline on its first pass (about 1 s without augmentation, 10–20 s
with it), so loaders are built once per process and reused (``_LOADERS``).

FFCV is imported through :func:`import_ffcv`, never at module level: importing it costs 0.9 s that way instead
of 6.4 s (see there), in every process that builds a loader or writes a set (each Ray Train worker).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pipeline.data.datasets import DataError

_LOADERS: dict[tuple[Any, ...], Any] = {}


def import_ffcv() -> None:
    """Import FFCV without its 5 s of numba compilation at import time.

    ``ffcv.fields.rgb_image`` fills a module-level ``numba.typed.Dict`` with its two JPEG/raw mode codes
    (``IMAGE_MODES``), and building a typed dict compiles numba's dictionary code: about 5 of the 6 s that
    ``import ffcv`` takes on a 2-core machine, paid again by every process that builds a loader (each Ray Train
    worker). FFCV reads that table only in Python (to pick the mode constants its JPEG decoder closes over, and
    when writing an RGB field), never inside compiled code, so a plain ``dict`` with the same entries behaves the
    same. ``numba.typed.Dict`` is a plain ``dict`` only while FFCV's package imports (``import ffcv`` imports its
    loader, writer and every field); the one other FFCV module that binds the name (``memory_managers.base``)
    never uses it. tests/test_beton.py checks both facts against the installed FFCV."""
    import sys

    if "ffcv" in sys.modules:
        return
    import numba.typed

    typed_dict = numba.typed.Dict
    numba.typed.Dict = dict
    try:
        import ffcv  # noqa: F401
    finally:
        numba.typed.Dict = typed_dict


def _build(path: Path, batch_size: int, shuffle: bool, drop_last: bool, augment: str | None, device: torch.device,
           seed: int, distributed: bool, workers: int, limit: int | None, count: int, shard: tuple[int, int]) -> Any:
    threads = torch.get_num_threads()  # before the import: importing FFCV sets torch's thread count to 1
    import_ffcv()
    import numpy as np
    from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, RandomTranslate, ToDevice, ToTensor, ToTorchImage

    image: list[Any] = [NDArrayDecoder()]
    if augment == "crop_flip":
        image += [RandomTranslate(padding=4), RandomHorizontalFlip()]
    elif augment is not None:
        raise DataError(f"unknown augmentation {augment!r}")
    image.append(ToTensor())
    label: list[Any] = [IntDecoder(), ToTensor()]
    if device.type == "cuda":
        image.append(ToDevice(device, non_blocking=True))
        label.append(ToDevice(device, non_blocking=True))
    image.append(ToTorchImage(channels_last=True))  # a view: NHWC memory seen as NCHW
    rank, world = shard
    n = count if limit is None else min(limit, count)
    indices = None if n == count and world == 1 else np.arange(n)[rank::world]
    try:
        return Loader(str(path), batch_size=batch_size, num_workers=workers,
                      order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, seed=seed,
                      distributed=distributed, drop_last=drop_last, indices=indices, os_cache=True,
                      pipelines={"image": image, "label": label, "index": None})
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - FFCV raises assorted errors on a damaged file
        raise DataError(f"{path} is not a readable .beton file ({type(exc).__name__}: {exc}); rewrite it with "
                        "`oat data prepare --force`") from None
    finally:
        torch.set_num_threads(threads)  # FFCV sets torch's thread count to its own worker count


class BetonLoader:
    def __init__(self, path: str | Path, *, batch_size: int, shuffle: bool, drop_last: bool, count: int,
                 augment: str | None = None, scale: float = 255.0, device: torch.device | str = "cpu",
                 seed: int = 0, distributed: bool = False, workers: int = 1, limit: int | None = None,
                 channels_last: bool = False, key: str = "", shard: tuple[int, int] = (0, 1)):
        """``count``: images in the file; ``key``: what identifies the file's content (its sha256), so a
        rewritten file never reuses a loader built for the old one. ``distributed``: this rank's shard of
        a shuffled order (FFCV's DistributedSampler order); ``shard=(rank, world)``: every world-th image
        from rank on, in order (evaluation: a disjoint cover with no padding)."""
        if distributed and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError("a distributed FFCV loader needs the process group first")
        self.device = torch.device(device)
        self.scale = float(scale)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.shuffle = shuffle
        self.epoch = 0
        args = (Path(path), batch_size, shuffle, drop_last, augment, self.device, seed, distributed, workers, limit,
                count, shard)
        cache_key = (*args, key, torch.distributed.get_rank() if distributed else 0)
        if cache_key not in _LOADERS:
            _LOADERS[cache_key] = _build(*args)
        self._loader = _LOADERS[cache_key]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        ld = self._loader
        ld.next_epoch = self.epoch  # FFCV draws epoch e's order from (seed, e)
        threads = torch.get_num_threads()
        it = iter(ld)
        torch.set_num_threads(threads)
        try:
            for x, y in it:
                # the one copy: out of FFCV's reused buffer, to float in [0, 1] on the training device
                yield (x.to(dtype=torch.float32, memory_format=self.memory_format).div_(self.scale),
                       y.reshape(-1).to(torch.int64, copy=True))
        finally:
            _stop(it)


def _stop(it: Any) -> None:
    """Stop an FFCV epoch's background thread now, even mid-epoch (max_steps_per_epoch, an exception).

    A thread left running inside compiled code when the interpreter exits aborts the process, and FFCV's own
    ``close()`` is noticed only after a 0.5 s timeout. Emptying its batch list (FFCV 1.0.2 internals) and its
    output queue lets it finish the batch in hand and end."""
    import contextlib
    import queue

    it.close()
    it.iter_ixes = iter(())
    while it.is_alive():
        with contextlib.suppress(queue.Empty):
            it.output_queue.get(timeout=0.01)
    it.join()
