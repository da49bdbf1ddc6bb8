"""The trade-off curve: clean (SA) and robust (RA) accuracy per (λ, width), tables and plots."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.science.attacks import PGD
from pipeline.science.model import RobustNet


@dataclass
class Point:
    method: str
    # "lambda" is a Python keyword; the JSON key is "lambda" (see to_dict)
    lam: float
    width: float
    clean_acc: float
    robust_acc: float
    attack: str
    steps: int
    eps: float
    n: int
    norm: str = "linf"
    settings: dict[str, Any] | None = None  # the attack's full settings (pipeline.science.robustness)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lambda"] = d.pop("lam")
        keys = ("method", "lambda", "width", "clean_acc", "robust_acc", "attack", "steps", "eps", "n", "norm")
        return {k: d[k] for k in keys} | ({"settings": d["settings"]} if self.settings is not None else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        d = dict(d)
        d["lam"] = d.pop("lambda")
        return cls(**d)


def evaluate_model(model: RobustNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                   lambdas: Sequence[float], widths: Sequence[float], attack: PGD,
                   autocast: Any = None, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   fuse: bool = True) -> list[Point]:
    """SA and RA at every (λ, width) on the same images; one pass over the data. ``reduce`` sums the
    counts over the ranks that each evaluated a shard (an all-reduce).

    ``fuse``: all λ of a width in one batched pass (the batch repeated once per λ, each copy with its own λ
    code and BN route). In eval mode nothing mixes samples (BN uses running statistics; the attack's loss is
    a per-sample sum), so the fused pass computes exactly what one pass per λ computes, in fewer, larger
    kernels (benchmarks/evaluation.py); only the random start's draws are laid out differently."""
    lambdas = [float(v) for v in lambdas]
    keys = [(w, lam) for w in widths for lam in lambdas]
    fuse = fuse and len(lambdas) > 1 and bool(model.spec.film)
    # BN_c (λ = 0) copies first: the routing is then two views, no gather
    order = sorted(range(len(lambdas)), key=lambda i: (lambdas[i] != 0.0, i))
    conds = {k: model.condition(k[1], k[0]) for k in keys} if not fuse else {}
    fused_conds: dict[tuple[float, int], Any] = {}
    totals: dict[float, torch.Tensor] = {}  # width -> [K, 2] (clean, robust) in ``lambdas`` order
    inverse: torch.Tensor | None = None  # fused rows (``order``) back to ``lambdas`` order
    n = 0
    was_training = model.training
    model.eval()
    ctx = autocast if autocast is not None else _null

    def right(x: torch.Tensor, y: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: right on the clean input, right under the attack."""
        with torch.no_grad(), ctx():
            clean = model(x, cond).argmax(1) == y
        with ctx():
            x_adv = attack(model, x, y, cond)
        with torch.no_grad(), ctx():
            robust = model(x_adv, cond).argmax(1) == y
        return clean, robust

    try:
        for x, y in batches:
            b = int(y.numel())
            n += b
            for w in widths:
                if fuse:
                    if (w, b) not in fused_conds:
                        fused_conds[(w, b)] = model.condition([lambdas[i] for i in order for _ in range(b)], w)
                    k = len(lambdas)
                    clean, robust = right(x.repeat(k, *([1] * (x.dim() - 1))), y.repeat(k), fused_conds[(w, b)])
                    if inverse is None:
                        inverse = torch.tensor(order).argsort().to(clean.device)
                    t = torch.stack([clean.view(k, b).sum(1), robust.view(k, b).sum(1)], 1)[inverse]
                else:
                    t = torch.stack([torch.stack([c.sum(), r.sum()])
                                     for c, r in (right(x, y, conds[(w, lam)]) for lam in lambdas)])
                totals[w] = t if w not in totals else totals[w] + t
    finally:
        model.train(was_training)
    dev = next(model.parameters()).device
    zero = torch.zeros(len(lambdas), 2, dtype=torch.long, device=dev)
    counts = torch.cat([totals.get(w, zero) for w in widths] + [torch.tensor([[n, 0]], device=dev)]).to(torch.long)
    if reduce is not None:
        counts = reduce(counts)
    table = counts.tolist()  # one host sync, after the whole pass
    n = int(table[-1][0])
    correct = {k: table[i] for i, k in enumerate(keys)}
    method = model.spec.method
    return [Point(method, float(lam), float(w), correct[(w, lam)][0] / max(n, 1), correct[(w, lam)][1] / max(n, 1),
                  "pgd", attack.steps, attack.eps, n, attack.norm) for (w, lam) in keys]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


ATTACK_NAMES = {"autoattack": "AutoAttack", "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "fab-t": "FAB-T",
                "square": "Square", "worst-case": "worst case"}
# The number a table, the comparison and the registry quote, strongest first: standard AutoAttack, then the
# per-image worst case over the components that ran (APGD-CE + APGD-T, labelled so), one component, PGD.
PREFERENCE = ("autoattack", "worst-case", "apgd-t", "apgd-ce", "fab-t", "square", "pgd")


def attack_label(p: Point) -> str:
    if p.attack == "pgd":
        restarts = int((p.settings or {}).get("restarts", 1))
        return f"PGD-{p.steps}" + (f"×{restarts}" if restarts > 1 else "")
    over = (p.settings or {}).get("over") if p.attack == "worst-case" else None
    if over:  # the per-image worst case over the attacks that ran, named by them (never "AutoAttack")
        return " + ".join(over)
    return ATTACK_NAMES.get(p.attack, p.attack)


def headline_attack(*point_lists: Sequence[Point]) -> str:
    """The strongest attack every list has points for (in the order of :data:`PREFERENCE`)."""
    common = set.intersection(*({p.attack for p in pts} for pts in point_lists)) if point_lists else set()
    for a in PREFERENCE:
        if a in common:
            return a
    return sorted(common)[0] if common else "pgd"


def by_attack(points: Sequence[Point], attack: str) -> list[Point]:
    return [p for p in points if p.attack == attack]


def points_table(points: Sequence[Point], title: str | None = None) -> str:
    lines = [title] if title else []
    lines.append(f"{'method':<8} {'λ':>5} {'width':>6} {'SA':>7} {'RA':>7}  attack")
    for p in points:
        lines.append(f"{p.method:<8} {p.lam:>5.2f} {p.width:>6.2f} {p.clean_acc:>7.3f} {p.robust_acc:>7.3f}  "
                     f"{attack_label(p)} {p.norm} ε={p.eps:.4g} (n={p.n})")
    return "\n".join(lines)


def write_points(points: Sequence[Point], path: str | Path, extra: dict[str, Any] | None = None) -> None:
    from pipeline.files import atomic_write_text

    doc = {"points": [p.to_dict() for p in points], **(extra or {})}
    atomic_write_text(json.dumps(doc, indent=2) + "\n", path)


def read_points(path: str | Path) -> list[Point]:
    return [Point.from_dict(d) for d in json.loads(Path(path).read_text())["points"]]


# A trained point that fails one of these is a failed run, not a result (it is flagged and never a champion).
COLLAPSED_SA = 0.20  # clean accuracy at or below this
COLLAPSED_SHARE = 0.50  # or one class predicted for more than this share of the test images
MASKED_GAP = 0.15  # a strong attack (AutoAttack or a component) this far under PGD: gradients are masked


def check_points(points: Sequence[Point], top_share: dict[tuple[float, float], float]) -> list[dict[str, Any]]:
    """The trained points that collapsed or mask gradients: ``[{"lambda", "width", "reasons": [...]}]``.

    ``top_share``: per (λ, width), the largest share of the test images predicted as one class."""
    by_key: dict[tuple[float, float], list[Point]] = {}
    for p in points:
        by_key.setdefault((p.lam, p.width), []).append(p)
    flags = []
    for key, pts in sorted(by_key.items()):
        reasons = []
        sa = pts[0].clean_acc
        if sa <= COLLAPSED_SA:
            reasons.append(f"collapsed: clean accuracy {100 * sa:.1f}% <= {100 * COLLAPSED_SA:.0f}%")
        share = top_share.get(key)
        if share is not None and share > COLLAPSED_SHARE:
            reasons.append(f"collapsed: one class for {100 * share:.1f}% of the test images")
        pgd = [p for p in pts if p.attack == "pgd"]
        for q in (p for p in pts if p.attack != "pgd"):
            if pgd and pgd[0].robust_acc - q.robust_acc > MASKED_GAP:
                reasons.append(f"masked: {attack_label(q)} {100 * q.robust_acc:.1f}% is "
                               f"{100 * (pgd[0].robust_acc - q.robust_acc):.1f} points under "
                               f"{attack_label(pgd[0])} {100 * pgd[0].robust_acc:.1f}%")
        if reasons:
            flags.append({"lambda": key[0], "width": key[1], "reasons": reasons})
    return flags


def read_flags(path: str | Path) -> list[dict[str, Any]]:
    """The flagged points of an ``eval.json`` (empty when none, or for a file written before flags existed)."""
    return list(json.loads(Path(path).read_text()).get("flags", []))


def flag_lines(flags: Sequence[dict[str, Any]]) -> list[str]:
    return [f"FLAGGED λ={f['lambda']:g}" + ("" if f["width"] == 1.0 else f" width {f['width']:g}") + ": "
            + "; ".join(f["reasons"]) for f in flags]


def plot_tradeoff(series: dict[str, Sequence[Point]], path: str | Path, title: str = "") -> Path:
    """Two panels against λ (SA and RA), plus RA against SA: one line per series (and per width)."""
    # matplotlib's object API, not pyplot: pyplot's first import installs an IPython display hook; a Figure needs no
    # backend switch and no global state. Its canvas still reads IPython.version_info when IPython is in sys.modules:
    # in a Ray worker where another thread was importing IPython at that moment (MLflow's notebook check, Ray's own)
    # it saw a half-imported module and failed a sweep trial ("partially initialized module 'IPython'", CI
    # 2026-12-03 and -07). Waiting only for an import already under way left a window (one more failure on
    # 2026-12-07): where IPython is installed it is imported here, whole, first (once per process, 0.15 s); another
    # thread's import then finds it complete, and matplotlib's check (cached per process) reads a whole module.
    import importlib.util

    if importlib.util.find_spec("IPython") is not None:
        import IPython  # noqa: F401
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    axes = fig.subplots(1, 3)
    markers = "osD^v<>p"
    for i, (label, pts) in enumerate(series.items()):
        for w in sorted({p.width for p in pts}):
            sel = sorted((p for p in pts if p.width == w), key=lambda p: p.lam)
            name = label if len({p.width for p in pts}) == 1 else f"{label} w={w:g}"
            lam = [p.lam for p in sel]
            sa = [100 * p.clean_acc for p in sel]
            ra = [100 * p.robust_acc for p in sel]
            mk = markers[i % len(markers)]
            axes[0].plot(lam, sa, marker=mk, label=name)
            axes[1].plot(lam, ra, marker=mk, label=name)
            axes[2].plot(sa, ra, marker=mk, label=name)
            for p, s, r in zip(sel, sa, ra):
                axes[2].annotate(f"λ={p.lam:g}", (s, r), fontsize=7, alpha=0.7, xytext=(3, 3),
                                 textcoords="offset points")
    any_pts = next((p for pts in series.values() for p in pts), None)
    attacks = {attack_label(p) for pts in series.values() for p in pts}
    atk = (f"{attack_label(any_pts) + ' ' if len(attacks) == 1 else ''}{any_pts.norm} ε={any_pts.eps:.3g}"
           if any_pts else "")
    axes[0].set(xlabel="λ", ylabel="clean accuracy SA (%)", title="Clean accuracy")
    axes[1].set(xlabel="λ", ylabel="robust accuracy RA (%)", title=f"Robust accuracy ({atk})")
    axes[2].set(xlabel="SA (%)", ylabel="RA (%)", title="Trade-off")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def comparison_table(oat: Sequence[Point], dedicated: dict[float, Point], name: str = "OAT") -> str:
    """One model's points against the dedicated model at each λ: SA, RA and their differences, in %."""
    head = (f"{'λ':>5} │ {'SA ' + name:>7} {'SA PGDAT':>9} {'Δ':>6} │ {'RA ' + name:>7} {'RA PGDAT':>9} {'Δ':>6}")
    rows = [head, "─" * len(head)]
    for p in sorted(oat, key=lambda p: p.lam):
        d = dedicated.get(p.lam)
        if d is None:
            continue
        rows.append(f"{p.lam:>5.2f} │ {100 * p.clean_acc:>7.1f} {100 * d.clean_acc:>9.1f} "
                    f"{100 * (p.clean_acc - d.clean_acc):>+6.1f} │ {100 * p.robust_acc:>7.1f} "
                    f"{100 * d.robust_acc:>9.1f} {100 * (p.robust_acc - d.robust_acc):>+6.1f}")
    return "\n".join(rows)
