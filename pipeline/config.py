"""One typed job schema, loaded from ``jobs/*.yaml``.

Every section is a dataclass; :func:`load_job` turns YAML (plus dotted ``--set`` overrides) into a
:class:`JobConfig`, failing at load time with the key's dotted path and what is allowed. Defaults are
the official OAT constants (CIFAR-10, ResNet-34); ``None`` fields are filled by :meth:`JobConfig.resolve`
so that the resolved copy written next to every result holds no implicit value.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

REFERENCE_LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
REFERENCE_WIDTHS = [0.5, 0.75, 1.0]

Dataset = Literal["digits", "cifar10", "svhn", "stl10"]
Backbone = Literal["small_cnn", "resnet18", "resnet34", "wrn16_8", "wrn40_2", "resnet", "wrn"]
Method = Literal["pgdat", "oat", "oats"]
Encoding = Literal["rand", "onehot", "dct", "none"]

# The reference pairs each data set with one backbone (CIFAR-10: ResNet-34, SVHN: WRN-16-8, STL-10: WRN-40-2).
REFERENCE_BACKBONE: dict[str, str] = {
    "cifar10": "resnet34",
    "svhn": "wrn16_8",
    "stl10": "wrn40_2",
    "digits": "small_cnn",
}

# The reference validation split: the last N training images of each data set.
REFERENCE_VAL_SIZE: dict[str, int] = {"cifar10": 5000, "svhn": 5000, "stl10": 500, "digits": 200}


class ConfigError(ValueError):
    """A job configuration that cannot run; the message names the dotted key and what is allowed."""


@dataclass
class DataConfig:
    dataset: Dataset = "cifar10"
    root: str = "data"  # where CIFAR-10 / SVHN / STL-10 files live (torchvision's on-disk formats)
    download: bool = False  # let torchvision download into root when missing (needs internet)
    val_size: int | None = None  # held-out images at the end of train; None: the reference split
    augment: bool = True  # the reference train augmentation of the data set
    loader: Literal["ffcv", "memory"] = "ffcv"  # ffcv: .beton files; memory: in-process tensors (debugging)
    beton: str | None = None  # a prepared set (folder or s3://bucket/prefix); None: prepared into the cache
    cache_dir: str | None = None  # node-local cache; None: $OAT_CACHE_DIR or ~/.cache/oat
    workers: int | None = None  # FFCV decoding threads; None: train.threads, else the CPUs this process may use


@dataclass
class ModelConfig:
    backbone: Backbone | None = None  # None: the reference backbone of the data set
    channels: list[int] | None = None  # small_cnn / resnet: channels per stage
    blocks: list[int] | None = None  # resnet: BasicBlocks per stage
    depth: int | None = None  # wrn: depth (6n + 4)
    widen: int | None = None  # wrn: widen factor
    dropout: float | None = None  # None: 0.3 for WRNs (reference), 0 otherwise
    widths: list[float] | None = None  # OATS: its slimmable widths (None: [0.5, 0.75, 1.0]); PGDAT / OAT: one
    # width multiplier (None: [1.0]); [0.5] is a plain model with half the channels in every layer
    encoding: Encoding = "rand"
    dim: int = 128  # λ code dimension (1 for encoding none)
    use2BN: bool = True  # dual batch norm (BN_c for λ = 0, BN_a for λ > 0); OAT / OATS only
    encoding_seed: int = 0  # seeds the `rand` encoding matrix (the official code set none)


@dataclass
class MethodConfig:
    name: Method = "oat"
    Lambda: float = 0.5  # PGDAT: the fixed trade-off weight
    lambda_choices: list[float] = field(default_factory=lambda: list(REFERENCE_LAMBDAS))
    zero_fraction: float | None = None  # share of a batch at λ = 0; None: 1/|Λ| as in the reference


@dataclass
class AttackConfig:
    norm: Literal["linf", "l2"] = "linf"
    eps: float = 8 / 255
    steps: int = 7
    step_size: float | None = None  # None: min(1.25ε, ε + 4/255)/steps (L∞), 2.5ε/steps (L2)
    random_start: bool = True


@dataclass
class OptimConfig:
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    milestones: list[int] = field(default_factory=lambda: [50, 150])


@dataclass
class TrainConfig:
    epochs: int = 200
    batch_size: int = 128
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = False  # bf16 autocast on CUDA (ignored on CPU)
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbone (state-dict keys unchanged); pays a compile at start-up
    threads: int | None = None  # torch intra-op threads on CPU; None: torch's default
    max_steps_per_epoch: int | None = None  # cut epochs short (smoke tests, benchmarks)
    accumulate: int = 1  # micro-batches per step, each with its own BN statistics and λ = 0 share (as DDP ranks)
    init_from: str | None = None  # start from these weights (a checkpoint of the same model: a file, runs:/…, s3://…);
    # a resumed run ignores it


@dataclass
class EvalConfig:
    batch_size: int = 100
    every: int = 10  # validate every N epochs ...
    last_quarter: bool = True  # ... and every epoch in the last quarter (reference cadence)
    lambdas: list[float] | None = None  # None: method.lambda_choices
    widths: list[float] | None = None  # None: model.widths
    val_steps: int | None = None  # PGD steps on validation; None: attack.steps (PGD-7, the reference)
    test_steps: int = 20  # PGD steps for the final test-split evaluation
    # attacks of the final test evaluation: PGD-<test_steps> always; add autoattack (or one of its components)
    # and eval.json, the comparison and the registry quote AutoAttack numbers (pipeline/robustness.py)
    test_attacks: list[Literal["pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"]] = field(
        default_factory=lambda: ["pgd"])
    max_images: int | None = None  # cap the images per evaluation (None: all)
    fuse_lambdas: bool = True  # evaluate all λ of a width in one batched pass (same numbers, fewer kernels)


@dataclass
class TrackingConfig:
    """MLflow tracking (rank 0 of every run; see pipeline/tracking.py)."""

    enabled: bool = False
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a local store (sqlite:///mlflow.db)
    experiment: str = "oat"
    system_metrics: bool = True  # CPU, memory, disk, network (and GPU) as system/… metrics
    system_metrics_interval: float = 10.0  # seconds between samples
    register: bool | None = None  # register the final model (pyfunc serving λ); None: OAT/OATS yes, PGDAT no
    model_name: str | None = None  # registered model name; None: the job's name
    alias: str = "champion"  # alias set on the newly registered version (models:/NAME@ALIAS)
    flush_timeout_s: float = 120.0  # at the end, wait this long for undelivered metrics and artifacts


@dataclass
class RayConfig:
    """How ``oat run`` runs the job on a Ray cluster (``oat train`` ignores this section)."""

    num_workers: int = 1  # DDP workers; train.batch_size is split over them
    use_gpu: bool = False  # one GPU per worker, NCCL; otherwise gloo on CPU
    cpus_per_worker: float = 1.0  # also the worker's torch threads and FFCV decoding threads
    gpus_per_worker: float = 1.0
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    max_failures: int = 0  # restarts of the worker group (from the last checkpoint); -1: unlimited
    storage_path: str | None = None  # a folder every node sees, or s3://bucket/prefix; None: ~/ray_results
    name: str | None = None  # the run's name under storage_path (None: the job's name); same name = resume
    checkpoints_to_keep: int = 2


@dataclass
class SweepConfig:
    """``oat sweep``: the dedicated PGDAT baselines, one Ray Tune trial per fixed λ (other sections as the job)."""

    lambdas: list[float] | None = None  # None: method.lambda_choices (the OAT job's list)
    max_concurrent_trials: int = 2
    max_failures: int = 1  # retries of a failed trial (-1: without limit)
    num_workers: int | None = None  # DDP workers per trial; None: ray.num_workers
    widths: list[float] = field(default_factory=lambda: [1.0])  # one dedicated model per (λ, width multiplier):
    # [0.5, 0.75, 1.0] gives the OATS comparison a plain model at every width
    name: str | None = None  # the sweep's name under ray.storage_path (None: <job name>_sweep); same name = resume


@dataclass
class PipelineConfig:
    """``oat run`` of a pipeline job: each stage a resumable Ray run; empty: the job is one training run."""

    stages: list[Literal["oat", "oats", "sweep", "compare"]] = field(default_factory=list)
    oats_widths: list[float] = field(default_factory=lambda: list(REFERENCE_WIDTHS))  # the OATS stage's widths


@dataclass
class RetrainConfig:
    """``oat retrain`` / ``oat schedule``: when to train the registered model again, and when to promote it."""

    model_name: str | None = None  # the registered model (None: tracking.model_name)
    max_age_days: float | None = 30.0  # retrain when the champion is older than this (None: only on new data)
    init: Literal["scratch", "champion"] = "scratch"  # champion: warm-start from the champion's weights
    runner: Literal["local", "ray"] = "local"  # ray: train as `oat run` does (Ray Train, the job's ray section)
    max_sa_drop: float = 1.0  # the gate: points of clean accuracy any λ (and width) may lose against the champion
    max_ra_drop: float = 1.0  # ... and of robust accuracy (AutoAttack where both have it, else PGD)
    folder: str = "runs/retrain"  # the retraining runs and the scheduler's state


@dataclass
class JobConfig:
    name: str = "oat"
    description: str = ""
    schedule: str | None = None  # cron ("0 3 * * 0": Sundays 03:00 UTC) for `oat schedule` and infra/k8s
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)

    # ------------------------------------------------------------------ derived views
    @property
    def lambdas(self) -> list[float]:
        """The λ values this job's model accepts (PGDAT: its one fixed Λ)."""
        if self.method.name == "pgdat":
            return [float(self.method.Lambda)]
        return [float(v) for v in self.method.lambda_choices]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def resolve(self) -> JobConfig:
        """Fill every ``None`` default from the rest of the config and check cross-field rules."""
        m = self.model
        if m.backbone is None:
            m.backbone = REFERENCE_BACKBONE[self.data.dataset]  # type: ignore[assignment]
        if m.dropout is None:
            m.dropout = 0.3 if m.backbone in ("wrn16_8", "wrn40_2", "wrn") else 0.0
        if m.widths is None:
            m.widths = list(REFERENCE_WIDTHS) if self.method.name == "oats" else [1.0]
        m.widths = sorted(float(w) for w in m.widths)
        if m.encoding == "none":
            m.dim = 1
        if self.method.name == "pgdat":
            m.use2BN = False
        if self.data.val_size is None:
            self.data.val_size = REFERENCE_VAL_SIZE[self.data.dataset]
        if self.method.zero_fraction is None:
            self.method.zero_fraction = 1.0 / len(self.method.lambda_choices)
        if self.attack.step_size is None:
            self.attack.step_size = default_step_size(self.attack.norm, self.attack.eps, self.attack.steps)
        if self.eval.lambdas is None:
            self.eval.lambdas = list(self.lambdas)
        if self.eval.widths is None:
            self.eval.widths = list(m.widths)
        if self.eval.val_steps is None:
            self.eval.val_steps = self.attack.steps
        if self.tracking.register is None:
            self.tracking.register = self.method.name != "pgdat"
        if self.tracking.model_name is None:
            self.tracking.model_name = self.name
        self._check()
        return self

    def _check(self) -> None:
        def fail(key: str, msg: str) -> typing.NoReturn:
            raise ConfigError(f"{key}: {msg}")

        meth, m = self.method, self.model
        assert m.widths is not None and self.eval.lambdas is not None and self.eval.widths is not None
        for i, lam in enumerate(meth.lambda_choices):
            if not 0.0 <= lam <= 1.0:
                fail(f"method.lambda_choices[{i}]", f"{lam} is outside [0, 1]")
        if len(set(meth.lambda_choices)) != len(meth.lambda_choices):
            fail("method.lambda_choices", f"{meth.lambda_choices} repeats a value")
        if not 0.0 <= meth.Lambda <= 1.0:
            fail("method.Lambda", f"{meth.Lambda} is outside [0, 1]")
        if meth.name in ("oat", "oats"):
            if 0.0 not in meth.lambda_choices:
                fail("method.lambda_choices", "OAT/OATS need 0.0 in the list (the λ = 0 share trains BN_c)")
            if len(meth.lambda_choices) < 2:
                fail("method.lambda_choices", "OAT/OATS need at least one λ > 0")
            zf = meth.zero_fraction
            if zf is None or not 0.0 < zf < 1.0:
                fail("method.zero_fraction", f"{zf} must lie strictly between 0 and 1")
        if meth.name != "oats" and len(m.widths) != 1:
            fail("model.widths", f"{m.widths}: only OATS trains several widths; PGDAT and OAT take one width "
                                 "multiplier, e.g. [1.0] or [0.5]")
        for i, w in enumerate(m.widths):
            if not 0.0 < w <= 1.0:
                fail(f"model.widths[{i}]", f"{w} must lie in (0, 1]")
        if meth.name == "oats" and max(m.widths) != 1.0:
            fail("model.widths", f"{m.widths} must include 1.0 (the full network)")
        if m.encoding in ("rand", "onehot", "dct") and m.dim < len(meth.lambda_choices):
            fail("model.dim", f"{m.dim} is smaller than the number of λ choices ({len(meth.lambda_choices)})")
        if self.attack.eps < 0:
            fail("attack.eps", f"{self.attack.eps} must be >= 0")
        for key, val in (("attack.steps", self.attack.steps), ("train.epochs", self.train.epochs),
                         ("train.batch_size", self.train.batch_size), ("eval.batch_size", self.eval.batch_size),
                         ("eval.every", self.eval.every), ("eval.test_steps", self.eval.test_steps),
                         ("ray.num_workers", self.ray.num_workers), ("data.workers", self.data.workers or 1),
                         ("train.accumulate", self.train.accumulate),
                         ("ray.checkpoints_to_keep", self.ray.checkpoints_to_keep)):
            if val < 1:
                fail(key, f"{val} must be >= 1")
        if self.train.batch_size % self.train.accumulate:
            fail("train.accumulate",
                 f"{self.train.accumulate} does not divide train.batch_size={self.train.batch_size}")
        if self.ray.max_failures < -1:
            fail("ray.max_failures", f"{self.ray.max_failures} must be >= -1 (-1: retry without limit)")
        if self.ray.cpus_per_worker <= 0:
            fail("ray.cpus_per_worker", f"{self.ray.cpus_per_worker} must be > 0")
        if self.optim.lr <= 0:
            fail("optim.lr", f"{self.optim.lr} must be > 0")
        if m.dropout is not None and not 0.0 <= m.dropout < 1.0:
            fail("model.dropout", f"{m.dropout} must lie in [0, 1)")
        if self.method.name != "pgdat":
            for i, lam in enumerate(self.eval.lambdas):
                if m.encoding != "none" and lam not in meth.lambda_choices:
                    fail(f"eval.lambdas[{i}]", f"{lam} is not a trained λ; allowed: {meth.lambda_choices}")
        for i, w in enumerate(self.eval.widths):
            if w not in m.widths:
                fail(f"eval.widths[{i}]", f"{w} is not a trained width; allowed: {m.widths}")
        pl = self.pipeline
        if pl.stages and self.method.name != "oat":
            fail("method.name", f"{self.method.name!r}: a pipeline job describes the OAT run (method.name: oat); "
                                "its OATS and PGDAT stages are derived from it")
        if len(set(pl.stages)) != len(pl.stages):
            fail("pipeline.stages", f"{pl.stages} repeats a stage")
        if "compare" in pl.stages and ("sweep" not in pl.stages or not {"oat", "oats"} & set(pl.stages)):
            fail("pipeline.stages", "compare needs the sweep stage and an oat or oats stage")
        if max(pl.oats_widths) != 1.0 or min(pl.oats_widths) <= 0:
            fail("pipeline.oats_widths", f"{pl.oats_widths} must lie in (0, 1] and include 1.0")
        sw = self.sweep
        for i, lam in enumerate(sw.lambdas or []):
            if not 0.0 <= lam <= 1.0:
                fail(f"sweep.lambdas[{i}]", f"{lam} is outside [0, 1]")
        if not sw.widths or len(set(sw.widths)) != len(sw.widths):
            fail("sweep.widths", f"{sw.widths} must be a non-empty list without repeats")
        for i, w in enumerate(sw.widths):
            if not 0.0 < w <= 1.0:
                fail(f"sweep.widths[{i}]", f"{w} must lie in (0, 1]")
        if sw.num_workers is not None and sw.num_workers < 1:
            fail("sweep.num_workers", f"{sw.num_workers} must be >= 1")
        if sw.max_concurrent_trials < 1:
            fail("sweep.max_concurrent_trials", f"{sw.max_concurrent_trials} must be >= 1")
        if sw.max_failures < -1:
            fail("sweep.max_failures", f"{sw.max_failures} must be >= -1 (-1: retry without limit)")
        if self.schedule is not None:
            from .cron import Cron, CronError

            try:
                Cron.parse(self.schedule)
            except CronError as exc:
                fail("schedule", str(exc))
        rt = self.retrain
        if rt.max_age_days is not None and rt.max_age_days <= 0:
            fail("retrain.max_age_days", f"{rt.max_age_days} must be > 0 (null: retrain only on new data)")
        if rt.max_sa_drop < 0 or rt.max_ra_drop < 0:
            fail("retrain.max_sa_drop" if rt.max_sa_drop < 0 else "retrain.max_ra_drop", "must be >= 0 (points)")
        t = self.tracking
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", t.alias) or re.fullmatch(r"latest|v\d+", t.alias):
            fail("tracking.alias", f"{t.alias!r}: letters, digits, _ and - (not 'latest' or v<number>)")
        if t.system_metrics_interval <= 0 or t.flush_timeout_s < 0:
            fail("tracking.system_metrics_interval" if t.system_metrics_interval <= 0 else "tracking.flush_timeout_s",
                 "must be > 0 (flush_timeout_s: >= 0)")
        if not t.experiment.strip():
            fail("tracking.experiment", "must not be empty")
        if m.backbone == "resnet" and not m.blocks:
            fail("model.blocks", "backbone 'resnet' needs blocks, e.g. [2, 2, 2, 2]")
        if m.backbone == "wrn" and (m.depth is None or (m.depth - 4) % 6 != 0):
            fail("model.depth", f"{m.depth}: backbone 'wrn' needs a depth of the form 6n + 4 (16, 28, 40)")


def default_step_size(norm: str, eps: float, steps: int) -> float:
    """The reference step rule: min(1.25ε, ε + 4/255)/steps for L∞; 2.5ε/steps (Madry) for L2."""
    if norm == "linf":
        return min(1.25 * eps, eps + 4 / 255) / steps
    return 2.5 * eps / steps


# ---------------------------------------------------------------------------------------- parsing
def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _parse_number(value: Any, path: str) -> float:
    """Accept numbers and fraction strings such as "8/255" (how ε is usually written)."""
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/", 1)
                return float(num) / float(den)
            return float(text)
        except (ValueError, ZeroDivisionError):
            pass
    raise ConfigError(f"{path}: expected a number (e.g. 0.03 or 8/255), got {value!r}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{path}: must not be null; expected {_type_name(tp)}")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: {value!r} is not allowed; allowed values: {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a section (mapping), got {value!r}")
        return _build(tp, value, path)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        out = _parse_number(value, path)
        if not math.isfinite(out):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} at {path}")  # a bug in the schema, not in the job


def _build(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in hints:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key; allowed keys: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``train.epochs=3`` -> ("train.epochs", 3); the value is read as YAML (lists, null, numbers)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def job_from_dict(data: Mapping[str, Any] | None, overrides: Iterable[str] = (), resolve: bool = True) -> JobConfig:
    tree: dict[str, Any] = _deep_copy(dict(data or {}))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    job = _build(JobConfig, tree, "")
    return job.resolve() if resolve else job


def load_job(path: str | Path | None, overrides: Iterable[str] = ()) -> JobConfig:
    """Load a job YAML (or the built-in defaults when ``path`` is None), apply ``--set`` overrides."""
    data: Any = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"job file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a job file is a mapping of sections (data, model, method, ...)")
    return job_from_dict(data, overrides)


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj
