"""The trade-off evaluation: the fused multi-λ pass computes what one pass per λ computes."""

from __future__ import annotations

import pytest
import torch

from pipeline.science.attacks import PGD
from pipeline.science.curves import evaluate_model

from .conftest import tiny_model


def _batches(seed: int = 0, sizes=(24, 24, 13)):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(b, 1, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)) for b in sizes]


@pytest.mark.parametrize("widths", [[1.0], [0.5, 1.0]])
def test_fused_lambdas_equal_one_pass_per_lambda(widths):
    """Deterministic attack (no random start): every (λ, width) point is identical, the last short batch
    included, and the λ order of the result is the caller's (λ = 0 is not first here)."""
    model = tiny_model(seed=1, method="oats" if len(widths) > 1 else "oat", widths=widths)
    model.train()  # evaluation switches to eval mode and back
    # train BN_a and BN_c differently, so a wrong route would show
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    attack = PGD(eps=0.3, steps=3, step_size=0.1, random_start=False)
    lambdas = [0.4, 0.0, 1.0, 0.1]
    fused = evaluate_model(model, _batches(), lambdas, widths, attack, fuse=True)
    plain = evaluate_model(model, _batches(), lambdas, widths, attack, fuse=False)
    assert model.training
    assert [(p.width, p.lam) for p in fused] == [(w, lam) for w in widths for lam in lambdas]
    assert [(p.clean_acc, p.robust_acc, p.n) for p in fused] == [(p.clean_acc, p.robust_acc, p.n) for p in plain]
    assert len({p.robust_acc for p in fused}) > 1  # the λ points differ: the check compares real numbers
    assert all(p.n == 61 for p in fused)


def test_fused_lambdas_with_random_start_stay_close():
    """With the random start the draws are laid out differently; the numbers agree within noise."""
    model = tiny_model(seed=2)
    attack = PGD(eps=0.3, steps=3, step_size=0.1)
    lambdas = [0.0, 0.2, 1.0]
    torch.manual_seed(0)
    fused = evaluate_model(model, _batches(1, (64, 64)), lambdas, [1.0], attack, fuse=True)
    torch.manual_seed(0)
    plain = evaluate_model(model, _batches(1, (64, 64)), lambdas, [1.0], attack, fuse=False)
    for a, b in zip(fused, plain):
        assert a.clean_acc == b.clean_acc
        assert abs(a.robust_acc - b.robust_acc) <= 0.05
