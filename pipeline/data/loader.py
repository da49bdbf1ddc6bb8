"""An in-memory batch loader: the whole split lives on the training device as uint8, batches are
gathered and augmented there in one vectorised pass (no worker processes, no per-sample Python).

The interface (``set_epoch``, ``len``, iteration yielding float images in [0, 1] and int64 labels)
is what the training loop needs; the FFCV loader plugs in behind the same interface.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.data.datasets import ImageSet


def crop_flip(x: Tensor, pad: int, gen: torch.Generator | None) -> Tensor:
    """Pad-``pad`` random crop back to the input size plus a random horizontal flip, per sample, in
    one gather. ``x``: float [B, C, H, W]."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dev = x.device
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(dev)
    flip = (torch.rand(b, generator=gen) < 0.5).to(dev)
    rows = oy[:, None] + torch.arange(h, device=dev)[None, :]  # [B, H]
    cols = torch.arange(w, device=dev)[None, :].expand(b, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + ox[:, None]  # [B, W]
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return padded[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


class TensorLoader:
    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool, drop_last: bool,
                 augment: str | None = None, device: torch.device | str = "cpu", seed: int = 0,
                 rank: int = 0, world_size: int = 1, limit: int | None = None,
                 channels_last: bool = False):
        self.device = torch.device(device)
        n = len(data) if limit is None else min(limit, len(data))
        self.x = data.x[:n].to(self.device)
        self.y = data.y[:n].to(self.device)
        self.scale = float(data.scale)
        self.batch_size, self.shuffle, self.drop_last = batch_size, shuffle, drop_last
        self.augment, self.seed = augment, seed
        self.rank, self.world_size = rank, world_size
        self.channels_last = channels_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Each epoch's order and augmentation come from (seed, epoch): a resumed run sees the same data."""
        self.epoch = epoch

    def _indices(self) -> Tensor:
        """This rank's samples in order. Shuffled (training), step-aligned: global step s covers the
        permutation's s-th block of batch_size × world_size and rank r takes the r-th part of it, so
        1 worker with ``train.accumulate=W`` sees the same step batches as W workers. In order
        (evaluation), rank r takes every W-th sample: a disjoint cover with no padding."""
        n = int(self.y.numel())
        w, r, b = self.world_size, self.rank, self.batch_size
        if not self.shuffle:
            return torch.arange(n)[r::w] if w > 1 else torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = torch.randperm(n, generator=g)
        if w == 1:
            return idx
        full = (n // (b * w)) * b * w
        mine = idx[:full].view(-1, w, b)[:, r].reshape(-1)
        if self.drop_last:
            return mine
        return torch.cat([mine, idx[full:][r::w]])

    def __len__(self) -> int:
        n = len(self._indices()) if self.world_size > 1 else int(self.y.numel())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        idx = self._indices()
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch + 7919) if self.augment else None
        stop = (len(idx) // self.batch_size) * self.batch_size if self.drop_last else len(idx)
        for start in range(0, stop, self.batch_size):
            bi = idx[start:start + self.batch_size].to(self.device, non_blocking=True)
            x = self.x.index_select(0, bi).float().div_(self.scale)
            if self.augment == "crop_flip":
                x = crop_flip(x, 4, gen)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.y.index_select(0, bi)
