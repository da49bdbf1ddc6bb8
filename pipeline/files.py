"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain values only (no pickled objects of ours):
``{"format", "model_spec", "state_dict", "job", "epoch", ...}``; a training checkpoint adds the
optimiser, scheduler and history. The λ encoding matrix is a buffer of the model, so it is in
``state_dict``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import torch

FORMAT = "oat-checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, truncated, corrupt or not one of ours."""


@contextlib.contextmanager
def _atomic_file(path: str | Path, mode: str) -> Iterator[IO[Any]]:
    """Yield a temporary file in ``path``'s folder; on success fsync it and rename it over ``path``, so
    a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the usual permissions
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: str | Path) -> None:
    with _atomic_file(path, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(text: str, path: str | Path) -> None:
    with _atomic_file(path, "w") as f:
        f.write(text)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's final.pt (else its latest.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("final.pt", "latest.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder with no final.pt or latest.pt in it")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, foreign object: all "corrupt"
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an OAT pipeline checkpoint (no '{FORMAT}' marker)")
    for key in ("model_spec", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks '{key}'")
    return ckpt
