"""The cost of OAT's conditioning: dual BN routing + FiLM against a plain BN + FiLM.

    .venv/bin/python -m benchmarks.routing [--batch 128] [--channels 128] [--size 16] [--repeats 30]

One BN site of a WRN-16-8 group (``--channels`` channels, ``--size``² maps, batch ``--batch``), forward and
backward, in train mode. The baseline is what a FiLM layer costs anywhere: ``nn.BatchNorm2d`` followed by a
per-sample (here per-λ-group) scale and shift. Compared with it:

* ``CondNorm, one λ group``: OAT's layer on a batch that shares one λ (one route, one code): its BN affine
  and FiLM fold into one multiply-add, so it should cost no more than the baseline (issue 9's target);
* ``CondNorm, mixed``: the OAT training batch (a λ = 0 share routed to BN_c first, the rest to BN_a with
  per-sample codes): two BN calls on views and one concatenation, no gather;
* ``CondNorm, mixed, unsorted``: the same with the λ = 0 samples scattered (one gather and one scatter).

Medians over ``--repeats``; writes ``benchmarks/results/routing.json``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import median, timed, write_result
from pipeline.science.dual_bn import CondNorm
from pipeline.science.model import ModelSpec, RobustNet

LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]


class PlainBNFiLM(nn.Module):
    """The baseline: BatchNorm2d, then FiLM's MLP and ``x * lrelu(a) + lrelu(b)``."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.fc1 = nn.Linear(dim, 2 * channels)
        self.fc2 = nn.Linear(2 * channels, 2 * channels)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc2(F.leaky_relu(self.fc1(code), 0.01)), 0.01)
        a, b = h.chunk(2, dim=1)
        return self.bn(x) * a[:, :, None, None] + b[:, :, None, None]


def run(batch: int, channels: int, size: int, repeats: int, dim: int = 128) -> dict:
    torch.manual_seed(0)
    spec = ModelSpec("small_cnn", 3, 10, [32, 32], "oat", LAMBDAS, film=True, dual_bn=True, encoding="rand", dim=dim,
                     channels=[8, 8, 8])
    net = RobustNet(spec).train()  # only for its condition(): the λ codes and routes
    layer = CondNorm(channels, [1.0], dual=True, film_dim=dim).train()
    plain = PlainBNFiLM(channels, dim).train()
    x = torch.randn(batch, channels, size, size, requires_grad=True)
    g = torch.randn_like(x)
    n0 = -(-batch // len(LAMBDAS))
    gen = torch.Generator().manual_seed(0)
    mixed = torch.cat([torch.zeros(n0), torch.tensor(LAMBDAS[1:])[torch.randint(5, (batch - n0,), generator=gen)]])
    shuffled = mixed[torch.randperm(batch, generator=gen)]
    conds = {"CondNorm, one λ group": net.condition(1.0), "CondNorm, mixed": net.condition(mixed),
             "CondNorm, mixed, unsorted": net.condition(shuffled)}
    code = net.condition(1.0).codes

    def fb(fn):
        def step():
            x.grad = None
            fn().backward(g)
        return step

    rows = {"plain BN + FiLM (baseline)": median(timed(fb(lambda: plain(x, code)), repeats, warmup=3))}
    for name, cond in conds.items():
        rows[name] = median(timed(fb(lambda c=cond: layer(x, c)), repeats, warmup=3))
    base = rows["plain BN + FiLM (baseline)"]
    return {"config": {"batch": batch, "channels": channels, "size": size, "film_dim": dim, "repeats": repeats,
                       "lambda_zero_share": n0 / batch, "pass": "forward + backward, train mode"},
            "results": [{"variant": k, "ms": 1e3 * v, "vs_baseline": v / base} for k, v in rows.items()]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out")
    a = ap.parse_args()
    body = run(a.batch, a.channels, a.size, a.repeats)
    path = write_result("routing", body, a.out)
    print(f"{'variant':<28} {'ms':>8} {'vs baseline':>12}")
    for r in body["results"]:
        print(f"{r['variant']:<28} {r['ms']:>8.2f} {r['vs_baseline']:>11.2f}×")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
