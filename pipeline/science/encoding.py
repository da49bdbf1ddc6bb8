"""λ encodings: how a trade-off weight becomes the code vector that drives FiLM.

``rand`` (default): a d×d Gaussian matrix orthonormalised by QR, seeded (the official code drew an
unseeded one and a new one on resume); ``onehot``: rows of I; ``dct``: rows of an unnormalised DCT-II
of I (scipy's ``dct(eye(d), axis=0)``); ``none``: the scalar λ itself (d = 1).
λ's code is the row at λ's *position* in the choice list. The matrix is a buffer of the model, so it
is saved in, and reloaded from, every checkpoint.
"""

from __future__ import annotations

import math

import torch


def encoding_matrix(kind: str, dim: int, seed: int = 0) -> torch.Tensor:
    if kind == "none":
        return torch.zeros(0, 1)
    if kind == "onehot":
        return torch.eye(dim)
    if kind == "dct":
        # DCT-II along axis 0 of the identity, unnormalised: M[k, n] = 2 cos(pi k (2n + 1) / (2d)).
        k = torch.arange(dim, dtype=torch.float64)[:, None]
        n = torch.arange(dim, dtype=torch.float64)[None, :]
        return (2.0 * torch.cos(math.pi * k * (2 * n + 1) / (2 * dim))).float()
    if kind == "rand":
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        return q.float()
    raise ValueError(f"unknown λ encoding {kind!r}; allowed: rand, onehot, dct, none")
