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


def _pt(lam, sa, ra, attack="pgd", width=1.0):
    from pipeline.science.curves import Point

    return Point(lam=lam, width=width, clean_acc=sa, robust_acc=ra, attack=attack, steps=20, eps=0.3, n=100,
                 method="oat")


def test_collapsed_and_masked_points_are_flagged():
    from pipeline.science.curves import check_points

    pts = [_pt(0.0, 0.95, 0.02), _pt(0.0, 0.95, 0.01, "apgd-ce"),  # fine: not robust, and PGD agrees
           _pt(0.4, 0.90, 0.50), _pt(0.4, 0.90, 0.30, "apgd-ce"),  # masked: 20 points under PGD
           _pt(1.0, 0.15, 0.10), _pt(1.0, 0.15, 0.10, "apgd-ce")]  # collapsed: clean accuracy <= 20%
    shares = {(0.0, 1.0): 0.12, (0.4, 1.0): 0.2, (1.0, 1.0): 0.3}
    flags = {f["lambda"]: f["reasons"] for f in check_points(pts, shares)}
    assert set(flags) == {0.4, 1.0}
    assert flags[0.4][0].startswith("masked") and "20.0 points under" in flags[0.4][0]
    assert flags[1.0][0].startswith("collapsed: clean accuracy 15.0%")
    one_class = check_points([_pt(0.1, 0.55, 0.3)], {(0.1, 1.0): 0.51})  # one class for 51% of the images
    assert one_class and "one class for 51.0%" in one_class[0]["reasons"][0]
    assert check_points([_pt(0.1, 0.55, 0.3)], {(0.1, 1.0): 0.5}) == []  # the bounds themselves pass


def test_a_collapsed_model_is_flagged_in_eval_json_and_the_console(tmp_path, capsys):
    import json

    from pipeline.data import open_data
    from pipeline.training.curve import test_model
    from pipeline.training.progress import Progress
    from pipeline.training.setup import prepare

    from .conftest import tiny_job

    job = tiny_job(method={"name": "pgdat", "Lambda": 1.0}, eval={"lambdas": [1.0]})
    data, model = prepare(job, torch.device("cpu"))
    with torch.no_grad():  # a classifier that answers 3 whatever the image: what a collapsed run leaves
        model.backbone.linear.weight.zero_()
        model.backbone.linear.bias.zero_()
        model.backbone.linear.bias[3] = 10.0
    test_model(model, job, open_data(job.data), torch.device("cpu"), tmp_path, progress=Progress(1, 1))
    flags = json.loads((tmp_path / "eval.json").read_text())["flags"]
    assert [f["lambda"] for f in flags] == [1.0]
    assert any("one class for 100.0%" in r for r in flags[0]["reasons"])
    assert "FLAGGED λ=1: collapsed" in capsys.readouterr().err
