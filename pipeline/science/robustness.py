"""Evaluation a reviewer trusts: AutoAttack and its components, PGD with restarts, the per-sample worst case,
and sanity checks that flag gradient masking.

AutoAttack comes from ``pyautoattack``: the original code of Croce & Hein (github.com/fra31/auto-attack),
packaged for PyPI with its attacks and settings unchanged. It declares no dependencies, so it installs beside
our pinned torch, Ray and MLflow. (``torchattacks`` re-implements the attacks and pins ``requests~=2.25``,
which MLflow and Ray cannot use.) The standard version runs APGD-CE, APGD-T (9 target classes), FAB-T
(9 target classes) and Square (5000 queries), each on the points the previous ones left robust, so its robust
accuracy is the per-sample worst case over the ensemble; each component can also run alone.

Every attack runs through the fixed-(λ, width) wrapper ``RobustNet.at`` in eval mode with frozen parameters.
A robust flag is per test image: clean-correct and still correct under the attack. ``worst-case`` is the
per-sample AND over every attack that ran. Evaluations are restartable: each (attack, λ, width) writes its
flags to a state folder when done, and AutoAttack's own state (which component has run, the flags so far)
lets a killed run continue inside a point.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.files import atomic_write_text
from pipeline.science.attacks import PGD, default_step_size, frozen_eval
from pipeline.science.curves import ATTACK_NAMES, Point

ATTACKS = ("pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack")
AA_COMPONENTS = ("apgd-ce", "apgd-t", "fab-t", "square")
WORST = "worst-case"


def aa_version() -> str:
    try:
        import pyautoattack

        return f"pyautoattack {pyautoattack.__version__}"
    except ImportError:  # pragma: no cover - a dependency of the project
        return "pyautoattack (not installed)"


@dataclass(frozen=True)
class AttackSpec:
    """One attack with every setting that changes its number."""

    name: str
    norm: str = "linf"  # linf | l2
    eps: float = 8 / 255
    steps: int = 20  # PGD only (AutoAttack's settings are fixed by its standard version)
    restarts: int = 1  # PGD only: independent random starts; a sample is robust only if it survives all
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise ValueError(f"attack {self.name!r} is not known; allowed: {', '.join(ATTACKS)}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm {self.norm!r}: allowed linf, l2")

    @property
    def label(self) -> str:
        if self.name == "pgd":
            return f"PGD-{self.steps}" + (f"×{self.restarts}" if self.restarts > 1 else "")
        return ATTACK_NAMES.get(self.name, self.name)

    def pgd(self) -> PGD:
        return PGD(self.eps, self.steps, default_step_size(self.norm, self.eps, self.steps), self.norm, True)

    def describe(self, num_classes: int = 10) -> dict[str, Any]:
        """The attack's full settings, as recorded beside every number it produced."""
        d: dict[str, Any] = {"attack": self.name, "norm": self.norm, "eps": self.eps, "seed": self.seed}
        if self.name == "pgd":
            pgd = self.pgd()
            return {**d, "steps": self.steps, "restarts": self.restarts, "step_size": pgd.step_size,
                    "random_start": True, "loss": "cross-entropy", "implementation": "pipeline.science.attacks.PGD"}
        targets = min(9, num_classes - 1)
        comp = {"apgd-ce": {"n_iter": 100, "n_restarts": 1, "loss": "ce", "rho": 0.75, "eot_iter": 1},
                "apgd-t": {"n_iter": 100, "n_restarts": 1, "n_target_classes": targets, "loss": "dlr-targeted",
                           "rho": 0.75},
                "fab-t": {"n_iter": 100, "n_restarts": 1, "n_target_classes": targets},
                "square": {"n_queries": 5000, "p_init": 0.8, "n_restarts": 1}}
        parts = AA_COMPONENTS if self.name == "autoattack" else (self.name,)
        return {**d, "version": "standard", "components": {p: comp[p] for p in parts},
                "implementation": aa_version()}


def load_test_tensors(loader: Any) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in loader:
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("the test split is empty")
    return torch.cat(xs), torch.cat(ys)


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def _pgd_flags(model: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor, clean: Tensor, batch_size: int
               ) -> Tensor:
    flags = clean.clone()
    pgd = spec.pgd()
    for r in range(spec.restarts):
        gen = torch.Generator(device=x.device)
        gen.manual_seed(spec.seed * 1_000_003 + r)
        for i in range(0, len(x), batch_size):
            sl = slice(i, i + batch_size)
            if not bool(flags[sl].any()):
                continue
            adv = pgd(model, x[sl], y[sl], None, generator=gen)
            with torch.no_grad():
                flags[sl] &= model(adv).argmax(1) == y[sl]
    return flags


class _AALog(logging.Handler):
    """Routes AutoAttack's own warnings (its checks for randomised or probability outputs) to our output."""

    def __init__(self, sink: list[str]):
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def _aa_flags(model: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor, batch_size: int, state: Path,
              num_classes: int, warnings: list[str]) -> tuple[Tensor, float]:
    from pyautoattack import AutoAttack

    logger = logging.getLogger("auto-attack")
    handler = _AALog(warnings)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.WARNING)  # its INFO lines ("setting parameters for standard version"): our progress says it
    try:
        aa = AutoAttack(model, norm={"linf": "Linf", "l2": "L2"}[spec.norm], eps=spec.eps, version="standard",
                        seed=spec.seed, device=x.device)
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, num_classes - 1)
        if spec.name != "autoattack":
            aa.attacks_to_run = [spec.name]
        try:
            aa.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if not state.exists():
                raise
            # a state cut short by a crash (AutoAttack writes it in place): start this point again
            warnings.append(f"AutoAttack state {state} was unreadable ({exc}); evaluating the point again")
            state.unlink()
            aa.run_standard_evaluation(x, y, batch_size=batch_size, state_path=state)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    saved = json.loads(state.read_text())
    return torch.tensor(saved["_robust_flags"], dtype=torch.bool, device=x.device), float(saved["_clean_accuracy"])


@dataclass
class Flags:
    clean: Tensor  # per image: correct on the clean input
    robust: Tensor  # per image: correct on the clean input and under the attack
    attack_clean: float | None = None  # the clean accuracy the attack itself measured (AutoAttack)


def attack_flags(model: nn.Module, spec: AttackSpec, x: Tensor, y: Tensor, *, batch_size: int = 250,
                 state: Path | None = None, num_classes: int = 10, warnings: list[str] | None = None) -> Flags:
    """Per-image clean and robust flags for ``model(x) -> logits`` under ``spec``."""
    warnings = warnings if warnings is not None else []
    with frozen_eval(model):
        clean = predict(model, x, batch_size) == y
        if spec.name == "pgd":
            return Flags(clean, _pgd_flags(model, spec, x, y, clean, batch_size))
        if state is None:
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                robust, sa = _aa_flags(model, spec, x, y, batch_size, Path(tmp) / "aa.json", num_classes, warnings)
        else:
            robust, sa = _aa_flags(model, spec, x, y, batch_size, state, num_classes, warnings)
    if abs(sa - float(clean.float().mean())) > 0.5 / len(y):  # more than one image apart
        warnings.append(f"{spec.label}: clean accuracy inside the attack {100 * sa:.2f}% differs from the "
                        f"batched {100 * float(clean.float().mean()):.2f}%")
    return Flags(clean, robust & clean, sa)


@dataclass
class Evaluation:
    """Per (attack, λ, width): the flags (one bool per test image) and the points built from them."""

    points: list[Point] = field(default_factory=list)
    flags: dict[tuple[str, float, float], list[bool]] = field(default_factory=dict)
    clean: dict[tuple[float, float], list[bool]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)



def _key(attack: str, lam: float, width: float) -> str:
    return f"{attack}_lam{lam:g}_w{width:g}"


def evaluate_attacks(model: Any, x: Tensor, y: Tensor, lambdas: Sequence[float], widths: Sequence[float],
                     attacks: Sequence[AttackSpec], *, batch_size: int = 250, state_dir: Path | None = None,
                     state_tag: str = "", log: Callable[[str], None] = print) -> Evaluation:
    """Every attack at every (λ, width) on the same images; the worst case when more than one attack ran.

    With ``state_dir`` a rerun skips the (attack, λ, width) already done and AutoAttack continues a point it
    was killed in; ``state_tag`` (the checkpoint's hash) keeps another model's results from being reused."""
    ev = Evaluation()
    num_classes = int(model.spec.num_classes)
    n = len(y)
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    total = len(attacks) * len(lambdas) * len(widths)
    done = 0
    t_all = time.perf_counter()
    for spec in attacks:
        t0 = time.perf_counter()
        for w in widths:
            for lam in lambdas:
                key = _key(spec.name if spec.name != "pgd" else f"pgd{spec.steps}x{spec.restarts}", lam, w)
                record = state_dir / f"{key}.done.json" if state_dir is not None else None
                flags = clean = None
                if record is not None and record.is_file():
                    try:
                        saved = json.loads(record.read_text())
                        if (saved["settings"] == spec.describe(num_classes) and len(saved["robust"]) == n
                                and saved.get("tag", "") == state_tag):
                            clean = torch.tensor(saved["clean"], dtype=torch.bool)
                            flags = torch.tensor(saved["robust"], dtype=torch.bool)
                    except (json.JSONDecodeError, KeyError):
                        pass
                if flags is None or clean is None:
                    net = model.at(lam, w)
                    aa_state = state_dir / f"{key}.aa.json" if state_dir is not None and spec.name != "pgd" else None
                    if state_dir is not None and aa_state is not None:  # only for this model and settings
                        tag_file, tag = state_dir / f"{key}.tag", json.dumps([state_tag, spec.describe(num_classes)])
                        if aa_state.exists() and (not tag_file.is_file() or tag_file.read_text() != tag):
                            aa_state.unlink()
                        atomic_write_text(tag, tag_file)
                    res = attack_flags(net, spec, x, y, batch_size=batch_size, state=aa_state,
                                       num_classes=num_classes, warnings=ev.warnings)
                    clean, flags = res.clean.cpu(), res.robust.cpu()
                    if record is not None:
                        atomic_write_text(json.dumps({"settings": spec.describe(num_classes), "tag": state_tag,
                                                      "clean": clean.tolist(), "robust": flags.tolist()}), record)
                done += 1
                ev.flags[(spec.label, float(lam), float(w))] = flags.tolist()
                ev.clean.setdefault((float(lam), float(w)), clean.tolist())
                ev.points.append(_point(model, lam, w, clean, flags, spec, num_classes))
                elapsed = time.perf_counter() - t_all
                eta = elapsed / done * (total - done)
                log(f"[{done}/{total}] {spec.label} λ={lam:g} w={w:g}: SA {100 * clean.float().mean():.1f}  "
                    f"RA {100 * flags.float().mean():.1f}  ({elapsed:.0f} s, ETA {eta:.0f} s)")
        ev.seconds[spec.label] = time.perf_counter() - t0
    if len(attacks) > 1:
        for w in widths:
            for lam in lambdas:
                worst = torch.ones(n, dtype=torch.bool)
                for spec in attacks:
                    worst &= torch.tensor(ev.flags[(spec.label, float(lam), float(w))])
                clean = torch.tensor(ev.clean[(float(lam), float(w))])
                ev.flags[(WORST, float(lam), float(w))] = worst.tolist()
                settings = {"attack": WORST, "over": [s.label for s in attacks], "norm": attacks[0].norm,
                            "eps": attacks[0].eps}
                ev.points.append(Point(model.spec.method, float(lam), float(w), int(clean.sum()) / n,
                                       int(worst.sum()) / n, WORST, 0, attacks[0].eps, n, attacks[0].norm,
                                       settings))
    return ev


def _point(model: Any, lam: float, w: float, clean: Tensor, flags: Tensor, spec: AttackSpec, num_classes: int
           ) -> Point:
    return Point(model.spec.method, float(lam), float(w), int(clean.sum()) / len(clean), int(flags.sum()) / len(flags),
                 spec.name, spec.steps if spec.name == "pgd" else 0, spec.eps, len(flags), spec.norm,
                 spec.describe(num_classes))


# --------------------------------------------------------------------------------------------- sanity checks
@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    values: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)




def sanity_checks(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, norm: str = "linf", steps: int = 20,
                  batch_size: int = 250, num_classes: int = 10, known: dict[str, float] | None = None,
                  log: Callable[[str], None] = print) -> list[Check]:
    """The four checks for gradient masking, on ``model(x) -> logits`` (one fixed λ and width).

    * ε → large: robust accuracy falls (never rises by more than the tolerance) and ends near 0;
    * more PGD steps (×5) and restarts (3 independent starts) never raise robust accuracy;
    * the black-box Square attack is no stronger than the white-box ones (PGD, APGD-CE, APGD-T);
    * clean accuracy is the same batched, one image at a time, and inside the attacks.

    ``known``: robust accuracies already measured on the same images (keys as :attr:`AttackSpec.label`:
    ``PGD-20``) so they are not computed twice. The tolerance is 1 point or 2 images."""
    known = dict(known or {})
    n = len(y)
    tol = max(0.01, 2.0 / n)
    checks: list[Check] = []
    base = AttackSpec("pgd", norm, eps, steps)
    inside: list[float] = []

    def run(spec: AttackSpec) -> float:
        res = attack_flags(model, spec, x, y, batch_size=batch_size, num_classes=num_classes)
        if res.attack_clean is not None:
            inside.append(res.attack_clean)
        return float(res.robust.float().mean())

    def ra(spec: AttackSpec) -> float:
        if spec.label not in known:
            known[spec.label] = run(spec)
        return known[spec.label]

    # 1. growing ε: the largest covers the whole input range, where only a masked model stays "robust"
    big = 1.0 if norm == "linf" else math.sqrt(x[0].numel())
    scales = [e for e in (eps, 2 * eps, 4 * eps, big) if e <= big]
    curve = {f"{e:.4g}": (ra(base) if e == eps else run(AttackSpec("pgd", norm, e, steps))) for e in scales}
    vals = list(curve.values())
    monotone = all(b <= a + tol for a, b in zip(vals, vals[1:]))
    floor = vals[-1] <= 0.02
    checks.append(Check("eps_to_zero", monotone and floor,
                        f"RA by ε {', '.join(f'{k}: {100 * v:.1f}%' for k, v in curve.items())}; "
                        + ("falls to ~0" if floor else f"stays at {100 * vals[-1]:.1f}% at ε={scales[-1]:.3g}")
                        + ("" if monotone else "; rises with ε"), {"ra_by_eps": curve}))
    log(f"sanity eps_to_zero: {checks[-1].detail}")
    # 2. stronger PGD never helps the model
    strong = AttackSpec("pgd", norm, eps, steps * 5, seed=1)
    restarts = AttackSpec("pgd", norm, eps, steps * 5, restarts=3, seed=2)
    r0, r1, r2 = ra(base), ra(strong), ra(restarts)
    ok = r1 <= r0 + tol and r2 <= r0 + tol and r2 <= r1 + tol
    checks.append(Check("steps_restarts", ok, f"RA {base.label} {100 * r0:.1f}%, {strong.label} {100 * r1:.1f}%, "
                                              f"{restarts.label} {100 * r2:.1f}%",
                        {base.label: r0, strong.label: r1, restarts.label: r2}))
    log(f"sanity steps_restarts: {checks[-1].detail}")
    # 3. black box no stronger than white box
    # the white-box best: PGD, APGD-CE and APGD-T (run, not looked up: their clean accuracy is check 4's)
    white = min(r0, r1, r2, run(AttackSpec("apgd-ce", norm, eps)), run(AttackSpec("apgd-t", norm, eps)))
    sq = run(AttackSpec("square", norm, eps))
    checks.append(Check("blackbox_weaker", sq >= white - tol,
                        f"RA Square {100 * sq:.1f}% vs best white-box {100 * white:.1f}%",
                        {"square": sq, "white_box": white}))
    log(f"sanity blackbox_weaker: {checks[-1].detail}")
    # 4. clean accuracy agrees everywhere it is measured
    m = min(n, 200)
    with frozen_eval(model):
        batched = float((predict(model, x, batch_size) == y).float().mean())
        single = float((predict(model, x[:m], 1) == y[:m]).float().mean())
        batched_m = float((predict(model, x[:m], batch_size) == y[:m]).float().mean())
    agree = all(abs(batched - v) <= 0.5 / n for v in inside) and abs(single - batched_m) <= 1.0 / m + 1e-9
    inside_txt = ", ".join(f"{100 * v:.1f}%" for v in inside) or "n/a"
    checks.append(Check("clean_consistent", agree,
                        f"SA batched {100 * batched:.1f}%, inside the attacks {inside_txt}; first {m} images "
                        f"one at a time {100 * single:.1f}% vs batched {100 * batched_m:.1f}%",
                        {"batched": batched, "inside_attacks": inside, "single": single, "batched_first": batched_m}))
    log(f"sanity clean_consistent: {checks[-1].detail}")
    return checks


def failed(checks: Sequence[Check]) -> list[str]:
    return [c.name for c in checks if not c.passed]
