"""Evaluation a reviewer trusts (pipeline/science/robustness.py, pipeline/launch/assess.py): AutoAttack through
the fixed-(λ, width) wrapper, the per-image worst case, restartable evaluations, the gradient-masking sanity
checks on a real model and on a deliberately masked one, and the HTML report. The model is a small OAT model
trained on digits in this module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.data import open_data
from pipeline.science import robustness
from pipeline.science.curves import headline_attack
from pipeline.science.model import load_model
from pipeline.science.robustness import AttackSpec, evaluate_attacks, load_test_tensors, sanity_checks
from tests.conftest import tiny_job

REPO = Path(__file__).resolve().parents[1]
EPS = 0.2
N = 40


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from pipeline.training.loop import fit

    out = tmp_path_factory.mktemp("robust") / "run"
    job = tiny_job(name="tiny_robust", method={"lambda_choices": [0.0, 1.0]},
                   attack={"eps": EPS, "steps": 3},
                   train={"epochs": 4, "max_steps_per_epoch": 20, "batch_size": 64},
                   eval={"every": 10, "max_images": N, "test_steps": 20, "test_attacks": ["pgd", "autoattack"]})
    fit(job, out, progress=False)
    model = load_model(out / "final.pt")
    data = open_data(job.data)
    x, y = load_test_tensors(data.loader("test", 100, device=torch.device("cpu"), limit=N))
    return {"out": out, "job": job, "model": model, "x": x, "y": y}


@pytest.mark.integration
def test_autoattack_is_at_most_pgd20_at_every_lambda(trained):
    """The training run's final test evaluation (eval.test_attacks: [pgd, autoattack], PGD-20): AutoAttack, run
    through the fixed-(λ, width) wrapper on the same images, never reports more robustness than PGD-20."""
    from pipeline.science.curves import read_points

    pts = read_points(trained["out"] / "eval.json")
    pgd = {p.lam: p for p in pts if p.attack == "pgd"}
    aa = {p.lam: p for p in pts if p.attack == "autoattack"}
    assert sorted(aa) == sorted(pgd) == [0.0, 1.0] and {p.attack for p in pts} == {"pgd", "autoattack"}
    for lam in aa:
        assert aa[lam].robust_acc <= pgd[lam].robust_acc, (lam, aa[lam], pgd[lam])
        assert aa[lam].clean_acc == pgd[lam].clean_acc  # the same images, the same clean accuracy
        assert aa[lam].n == pgd[lam].n == N and aa[lam].eps == EPS and pgd[lam].steps == 20
    s = aa[1.0].settings
    assert s["version"] == "standard" and list(s["components"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert s["components"]["square"]["n_queries"] == 5000 and s["implementation"].startswith("pyautoattack")
    assert headline_attack(pts) == "autoattack"  # what the comparison, the registry and the plot quote


def test_worst_case_is_per_image_over_every_attack(trained):
    m, x, y = trained["model"], trained["x"][:30], trained["y"][:30]
    specs = [AttackSpec("pgd", "linf", EPS, 10), AttackSpec("apgd-ce", "linf", EPS)]
    ev = evaluate_attacks(m, x, y, [1.0], [1.0], specs, batch_size=100, log=lambda _s: None)
    pgd, sq = ev.flags[("PGD-10", 1.0, 1.0)], ev.flags[("APGD-CE", 1.0, 1.0)]
    worst = ev.flags[("worst-case", 1.0, 1.0)]
    assert worst == [a and b for a, b in zip(pgd, sq)]
    (wp,) = [p for p in ev.points if p.attack == "worst-case"]
    assert wp.robust_acc == sum(worst) / 30 <= min(sum(pgd), sum(sq)) / 30
    assert wp.settings["over"] == ["PGD-10", "APGD-CE"]
    # quoted as what ran, never as AutoAttack, and before any single attack
    from pipeline.science.curves import attack_label

    assert attack_label(wp) == "PGD-10 + APGD-CE" and headline_attack(ev.points) == "worst-case"


class Quantise(nn.Module):
    """A classic gradient-masking defence: round the input to 3 grey levels. Its gradient is zero almost
    everywhere, so white-box attacks stall while the model is no more robust."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.round(x * 2) / 2)


@pytest.mark.integration
def test_sanity_checks_flag_a_masked_model(trained):
    """(The same checks pass on the real model: test_oat_report_… below runs them through `oat report`.)"""
    m, x, y = trained["model"], trained["x"], trained["y"]
    masked = sanity_checks(Quantise(m.at(1.0)), x, y, eps=EPS, batch_size=100, log=lambda _s: None)
    bad = robustness.failed(masked)
    assert "eps_to_zero" in bad  # white-box PGD cannot move a quantised input: RA stays up at ε = 1
    assert "blackbox_weaker" in bad  # and Square, which needs no gradient, does better than PGD
    assert "clean_consistent" not in bad


def test_a_killed_evaluation_resumes_from_its_state(trained, tmp_path, monkeypatch):
    m, x, y = trained["model"], trained["x"][:30], trained["y"][:30]
    specs = [AttackSpec("pgd", "linf", EPS, 5), AttackSpec("apgd-ce", "linf", EPS)]
    first = evaluate_attacks(m, x, y, [1.0], [1.0], specs, state_dir=tmp_path, state_tag="a", log=lambda _s: None)
    calls: list[str] = []
    real = robustness.attack_flags

    def counting(*args, **kw):
        calls.append(args[1].name)
        return real(*args, **kw)

    monkeypatch.setattr(robustness, "attack_flags", counting)
    again = evaluate_attacks(m, x, y, [1.0], [1.0], specs, state_dir=tmp_path, state_tag="a", log=lambda _s: None)
    assert calls == [] and [p.robust_acc for p in again.points] == [p.robust_acc for p in first.points]
    # a half-written AutoAttack state (a crash inside a point) is thrown away, not trusted
    (tmp_path / "apgd-ce_lam1_w1.done.json").unlink()
    (tmp_path / "apgd-ce_lam1_w1.aa.json").write_text('{"_robust_flags": [tru')
    third = evaluate_attacks(m, x, y, [1.0], [1.0], specs, state_dir=tmp_path, state_tag="a", log=lambda _s: None)
    assert calls == ["apgd-ce"] and third.points[1].robust_acc == first.points[1].robust_acc
    # another checkpoint never reuses these results
    evaluate_attacks(m, x, y, [1.0], [1.0], specs, state_dir=tmp_path, state_tag="b", log=lambda _s: None)
    assert calls == ["apgd-ce", "pgd", "apgd-ce"]


@pytest.mark.integration
def test_oat_report_renders_every_lambda_with_checks_and_settings(trained, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "report", str(trained["out"]), "--max-images", "40",
                        "--sanity-images", "24", "--out", str(tmp_path / "rep")],
                       capture_output=True, text=True, cwd=REPO, timeout=900, env={**os.environ})
    assert r.returncode == 0, r.stderr[-3000:]
    page = (tmp_path / "rep" / "report.html").read_text()
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    for lam in ("0", "1"):
        assert f"<tr><td>{lam}</td><td>1</td>" in page
    assert "AutoAttack (%)" in page and "PGD-20 (%)" in page and "Sanity checks" in page
    assert "data:image/png;base64," in page and "n_queries&quot;: 5000" in page  # the exact settings
    assert doc["n"] == 40 and doc["threat_model"] == "linf" and doc["eps"] == EPS
    checks = {c["name"]: c for c in doc["sanity_checks"]}
    assert list(checks) == ["eps_to_zero", "steps_restarts", "blackbox_weaker", "clean_consistent"]
    assert all(c["passed"] for c in checks.values()), checks  # a real model passes every check
    assert doc["sanity_at"] == {"lambda": 1.0, "width": 1.0, "images": 24} and "All four sanity checks" in page
    assert "AutoAttack" in r.stdout and "report:" in r.stdout


def test_bad_attack_name_is_one_clear_error(trained):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", str(trained["out"]), "--attack", "aa"],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "invalid choice: 'aa'" in r.stderr and "autoattack" in r.stderr
