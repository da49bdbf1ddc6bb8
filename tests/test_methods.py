import copy

import pytest
import torch
import torch.nn.functional as F

from pipeline.science.methods import oat_step, oats_step, pgdat_step
from pipeline.science.sampling import LambdaSampler

from .conftest import tiny_model


def shift_attack(delta=0.05):
    """A deterministic stand-in for PGD, so the loss formula can be checked by hand."""
    calls = []

    def attack(model, x, y, cond=None):
        calls.append((x.shape[0], cond))
        return (x + delta).clamp(0, 1)

    attack.calls = calls
    return attack


def test_sampler_reference_layout():
    s = LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], generator=torch.Generator().manual_seed(0))
    lam = s(128)
    assert s.n_zero(128) == 22  # ceil(128/6)
    assert (lam[:22] == 0).all() and (lam[22:] > 0).all()
    assert set(lam[22:].tolist()) <= {0.1, 0.2, 0.3, 0.4, 1.0}
    assert len(set(lam[22:].tolist())) == 5  # all non-zero values drawn
    again = LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], generator=torch.Generator().manual_seed(0))(128)
    assert torch.equal(lam, again)
    assert LambdaSampler([0.0, 1.0], zero_fraction=0.25).n_zero(64) == 16
    assert LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0]).n_zero(120) == 20  # no float-noise ceil


def test_oat_loss_formula():
    torch.manual_seed(0)
    m = tiny_model().train()
    ref = copy.deepcopy(m)
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 10, (10,))
    lam = torch.tensor([0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 1.0, 0.3, 0.1, 1.0], dtype=torch.float64)
    atk = shift_attack()
    res = oat_step(m, x, y, lam, atk)
    assert atk.calls[0][0] == 8  # PGD runs on the λ > 0 samples only
    ce_c = F.cross_entropy(ref(x, ref.condition(lam)), y, reduction="none")
    ce_a = F.cross_entropy(ref((x[2:] + 0.05).clamp(0, 1), ref.condition(lam[2:])), y[2:], reduction="none")
    lam_f = lam.float()
    want = ((1 - lam_f) * ce_c + lam_f * torch.cat([torch.zeros(2), ce_a])).mean()
    torch.testing.assert_close(res.loss, want, rtol=1e-5, atol=1e-6)
    assert int(res.metrics["n"]) == 10 and int(res.metrics["n_adv"]) == 8


def test_oat_loss_with_unsorted_lambdas():
    torch.manual_seed(1)
    m = tiny_model().train()
    ref = copy.deepcopy(m)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    lam = torch.tensor([0.3, 0.0, 1.0, 0.0, 0.1, 0.2], dtype=torch.float64)
    res = oat_step(m, x, y, lam, shift_attack())
    adv = lam > 0
    ce_c = F.cross_entropy(ref(x, ref.condition(lam)), y, reduction="none")
    ce_a = F.cross_entropy(ref((x[adv] + 0.05).clamp(0, 1), ref.condition(lam[adv])), y[adv], reduction="none")
    la = torch.zeros(6)
    la[adv] = ce_a
    want = ((1 - lam.float()) * ce_c + lam.float() * la).mean()
    torch.testing.assert_close(res.loss, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("Lambda", [0.0, 0.5, 1.0])
def test_pgdat_loss_formula(Lambda):
    torch.manual_seed(0)
    m = tiny_model(method="pgdat", lambdas=[Lambda], film=False, dual_bn=False, encoding="none", dim=1).train()
    ref = copy.deepcopy(m)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    atk = shift_attack()
    res = pgdat_step(m, x, y, Lambda, atk)
    lc = F.cross_entropy(ref(x), y)
    if Lambda == 0:
        assert not atk.calls  # standard training: no attack at all
        want = lc
    else:
        want = (1 - Lambda) * lc + Lambda * F.cross_entropy(ref((x + 0.05).clamp(0, 1)), y)
    torch.testing.assert_close(res.loss, want, rtol=1e-5, atol=1e-6)


def test_oats_averages_the_oat_loss_over_widths_with_own_subnetworks():
    torch.manual_seed(0)
    m = tiny_model(widths=[0.5, 1.0]).train()
    ref = copy.deepcopy(m)
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 10, (6,))
    lam = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], dtype=torch.float64)
    atk = shift_attack()
    res = oats_step(m, x, y, lam, atk)
    assert [c[1].width_idx for c in atk.calls] == [0, 1]  # each width attacks with its own subnetwork
    per_width = [oat_step(ref, x, y, lam, shift_attack(), width=w).loss for w in (0.5, 1.0)]
    torch.testing.assert_close(res.loss, sum(per_width) / 2, rtol=1e-5, atol=1e-6)


def test_oat_step_golden_value():
    """Pins the whole step (model, sampler, PGD) on a tiny seeded config: torch is pinned, so a change
    here means the computation changed."""
    from pipeline.science.attacks import PGD

    torch.manual_seed(0)
    m = tiny_model(seed=0).train()
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    lam = LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], generator=torch.Generator().manual_seed(0))(12)
    torch.manual_seed(1)
    res = oat_step(m, x, y, lam, PGD(0.2, 3, 0.1))
    assert res.loss.item() == pytest.approx(GOLDEN_OAT_LOSS, abs=1e-5)


GOLDEN_OAT_LOSS = 2.2821249961853027  # recorded with torch 2.14.1 on CPU


@pytest.mark.integration
def test_compiled_backbone_computes_the_eager_step():
    """`train.compile`: dynamo traces the conditioned backbone (routes, λ codes, the frozen-eval attack) and
    the OAT step's loss and gradients equal the eager model's. The ``aot_eager`` backend runs the traced
    graphs without generating kernels (the same tracing and autograd as inductor, seconds instead of a minute
    of C++ compiling on this CPU); benchmarks/gpu.py times the inductor build on CUDA."""
    from torch._dynamo.utils import counters

    from pipeline.science.attacks import PGD
    from pipeline.training.setup import compile_model

    counters.clear()
    eager = tiny_model(seed=3).train()
    compiled = copy.deepcopy(eager)
    compile_model(compiled, backend="aot_eager")
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    lam = LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], generator=torch.Generator().manual_seed(0))(12)
    results = []
    for m in (eager, compiled):
        res = oat_step(m, x, y, lam, PGD(0.2, 2, 0.1, random_start=False))
        res.loss.backward()
        results.append((res.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert results[1][1].keys() == results[0][1].keys()
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-4, atol=1e-6, msg=n)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints stay the eager model's
    assert counters["stats"]["unique_graphs"] >= 2  # it was traced (train route, attack route), not skipped


@pytest.mark.parametrize("backbone", ["small_cnn", "lenet"])
def test_channels_last_computes_the_contiguous_step(backbone):
    """`train.channels_last` (on by default) changes the memory layout, not the computation: the OAT step's loss
    and gradients in channels-last equal the contiguous model's to float rounding, and the weights really are
    channels-last."""
    from pipeline.science.attacks import PGD

    contiguous = tiny_model(seed=4, backbone=backbone).train()
    cl = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    convs = [mod for mod in cl.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
    lam = LambdaSampler([0.0, 0.1, 0.2, 0.3, 0.4, 1.0], generator=torch.Generator().manual_seed(0))(12)
    results = []
    for m, xs in ((contiguous, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        res = oat_step(m, xs, y, lam, PGD(0.2, 2, 0.1, random_start=False))
        res.loss.backward()
        results.append((res.loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert results[1][1].keys() == results[0][1].keys() and results[0][1]
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-4, atol=1e-5, msg=n)
