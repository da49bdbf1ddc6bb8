import pytest
import torch
from torch import nn

from pipeline.config import AttackConfig
from pipeline.science.attacks import PGD, frozen_eval

from .conftest import tiny_model


def _bounded(x, adv, eps, norm):
    assert adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).flatten(1)
    n = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    assert (n <= eps + 1e-6).all(), n.max()


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("linf", 0.3), ("l2", 0.5), ("l2", 2.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pgd_stays_in_eps_ball_and_unit_box(norm, eps, seed):
    torch.manual_seed(seed)
    m = tiny_model(seed)
    x = torch.rand(16, 1, 8, 8)
    x[:4] = 0.0  # on the box's faces: projection must keep them in [0, 1]
    x[4:8] = 1.0
    y = torch.randint(0, 10, (16,))
    lam = torch.tensor([0.1, 0.2, 0.3, 0.4, 1.0, 0.3, 0.2, 0.1] * 2, dtype=torch.float64)
    attack = PGD(eps, 5, eps / 2, norm)
    adv = attack(m, x, y, m.condition(lam))
    _bounded(x, adv, eps, norm)
    assert not torch.equal(adv, x)


def test_pgd_raises_the_loss_and_beats_random_noise():
    torch.manual_seed(0)
    m = tiny_model().eval()
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    cond = m.condition(1.0)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        clean = ce(m(x, cond), y)
        noise = ce(m((x + 0.2 * torch.randn_like(x).sign()).clamp(0, 1), cond), y)
        adv = ce(m(PGD(0.2, 10, 0.05)(m, x, y, cond), cond), y)
    assert adv > clean and adv > noise


def test_state_restored_and_no_parameter_gradients():
    m = tiny_model()
    m.train()
    m.backbone.bn2.eval()  # a mixed state: must come back exactly
    m.backbone.conv1.weight.requires_grad_(False)
    modes = {n: mod.training for n, mod in m.named_modules()}
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    seen = {}

    class Spy(nn.Module):  # the attack sees the wrapper; the wrapped model must be frozen too
        def __init__(self):
            super().__init__()
            self.net = m

        def forward(self, x, cond):
            seen["training"] = any(mod.training for mod in m.modules())
            seen["grad"] = any(p.requires_grad for p in m.parameters())
            return m(x, cond)

    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    PGD(0.1, 3, 0.05)(Spy(), x, y, m.condition(0.3))
    assert seen == {"training": False, "grad": False}  # eval mode, frozen during the attack
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert all(p.grad is None for p in m.parameters())


def test_state_restored_when_the_model_raises():
    m = tiny_model().train()

    def boom(*_):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError), frozen_eval(m):
        boom()
    assert m.training and all(p.requires_grad for p in m.parameters())


def test_random_start_is_seeded_and_reference_projection():
    m = tiny_model().eval()
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    atk = PGD(0.1, 2, 0.04)
    a1 = atk(m, x, y, m.condition(0.3), generator=torch.Generator().manual_seed(5))
    a2 = atk(m, x, y, m.condition(0.3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a1, a2)
    no_rs = PGD(0.1, 1, 0.04, random_start=False)(m, x, y, m.condition(0.3))
    xg = x.clone().requires_grad_(True)  # one sign step of the summed CE from x, clamped into [0, 1]
    nn.functional.cross_entropy(m(xg, m.condition(0.3)), y, reduction="sum").backward()
    torch.testing.assert_close(no_rs, (x + 0.04 * xg.grad.sign()).clamp(0, 1))


def test_attack_accepts_plain_modules():
    m = tiny_model().eval()
    f = m.at(lam=1.0)
    x, y = torch.rand(4, 1, 8, 8), torch.randint(0, 10, (4,))
    adv = PGD.from_config(AttackConfig(eps=0.1))(f, x, y)
    _bounded(x, adv, 0.1, "linf")


def test_step_rules_and_rederivation():
    from pipeline.config import job_from_dict
    from pipeline.science.attacks import default_step_size

    assert default_step_size("linf", 0.3, 10) == pytest.approx(min(1.25 * 0.3, 0.3 + 4 / 255) / 10)
    assert default_step_size("linf", 0.3, 10, "madry") == pytest.approx(0.075)
    assert default_step_size("l2", 0.5, 10) == default_step_size("l2", 0.5, 10, "madry") == pytest.approx(0.125)
    with pytest.raises(ValueError, match="step rule"):
        default_step_size("linf", 0.3, 10, "fast")
    job = job_from_dict({"attack": {"eps": 0.3, "steps": 10, "step_rule": "madry"}})
    assert PGD.from_config(job.attack).step_size == pytest.approx(0.075)
    assert PGD.from_config(job.attack, 20).step_size == pytest.approx(2.5 * 0.3 / 20)  # test-time PGD-20, same rule
    warm = PGD.from_config(job.attack, eps=0.1)  # an ε warm-up re-derives the step for the smaller ε
    assert (warm.eps, warm.step_size) == (pytest.approx(0.1), pytest.approx(0.025))
    official = job_from_dict({"attack": {"eps": 0.3, "steps": 10}})
    assert PGD.from_config(official.attack, 20).step_size == pytest.approx(min(1.25 * 0.3, 0.3 + 4 / 255) / 20)
