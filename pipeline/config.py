"""One typed job schema, loaded from ``jobs/*.yaml``.

Every section is a pydantic model (:class:`pipeline.data.settings.Section`); :func:`load_job` turns YAML (plus
dotted ``--set`` overrides) into a :class:`JobConfig`, failing at load time with the key's dotted path and what
is allowed. Defaults are the official OAT constants (CIFAR-10, ResNet-34); ``null`` fields are filled by
:meth:`JobConfig.resolve`, so that the resolved copy written next to every result holds no implicit value.

Every field has a description: ``oat train --help-config`` lists them, and :func:`job_schema` is the JSON Schema
of a job file (``python -m pipeline.config --schema``, checked in as ``jobs/schema.json`` for editors).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, ValidationError

from pipeline.data.datasets import ReferenceTable
from pipeline.data.settings import (
    REFERENCE_VAL_SIZE,
    ConfigError,
    DataConfig,
    Flag,
    Integer,
    Number,
    OneOf,
    Section,
    Text,
    config_error,
)
from pipeline.science.attacks import default_step_size
from pipeline.science.methods import METHODS, get_method

__all__ = ["REFERENCE_BACKBONE", "REFERENCE_LAMBDAS", "REFERENCE_VAL_SIZE", "REFERENCE_WIDTHS", "AttackConfig",
           "ConfigError", "DataConfig", "EvalConfig", "JobConfig", "MethodConfig", "ModelConfig", "OptimConfig",
           "PipelineConfig", "RayConfig", "RetrainConfig", "SweepConfig", "TrackingConfig", "TrainConfig",
           "config_help", "default_step_size", "derive_job", "job_from_dict", "job_schema", "load_job", "main",
           "parse_override", "schema_text"]

REFERENCE_LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
REFERENCE_WIDTHS = [0.5, 0.75, 1.0]

# The reference pairs each data set with one backbone (CIFAR-10: ResNet-34, SVHN: WRN-16-8, STL-10: WRN-40-2);
# each data set's registry entry names it.
REFERENCE_BACKBONE: Mapping[str, str] = ReferenceTable("backbone")

Backbone = Literal["small_cnn", "lenet", "resnet18", "resnet34", "wrn16_8", "wrn40_2", "resnet", "wrn"]
Encoding = Literal["rand", "onehot", "dct", "none"]
MethodName = Annotated[str, OneOf(lambda: METHODS)]
AttackName = Literal["pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"]


def _help(text: str) -> Any:
    """A field that defaults to null (``resolve()`` fills it, or it means "not set"), with its description."""
    return Field(default=None, description=text)


def _section(cls: type[Section], text: str) -> Any:
    """A section of the job: all its defaults unless the file sets some."""
    return Field(default_factory=cls, description=text)


class ModelConfig(Section):
    """The network: backbone, λ conditioning (encoding, FiLM, dual BN) and widths."""

    section: ClassVar[str] = "model"

    backbone: Backbone | None = _help("null: the reference backbone of the data set")
    channels: list[Integer] | None = _help("small_cnn / resnet: channels per stage")
    blocks: list[Integer] | None = _help("resnet: BasicBlocks per stage")
    depth: Integer | None = _help("wrn: depth (6n + 4)")
    widen: Integer | None = _help("wrn: widen factor")
    dropout: Number | None = _help("null: 0.3 for WRNs (reference), 0 otherwise")
    widths: list[Number] | None = _help(
        "OATS: its slimmable widths (null: [0.5, 0.75, 1.0]); PGDAT / OAT: one width multiplier (null: [1.0]); "
        "[0.5] is a plain model with half the channels in every layer")
    encoding: Encoding = Field(default="rand", description="how λ is encoded into the model's conditioning input")
    dim: Integer = Field(default=128, description="λ code dimension (1 for encoding none)")
    use2BN: Flag = Field(default=True, description="dual batch norm (BN_c for λ = 0, BN_a for λ > 0); OAT / OATS only")
    batch_norm: Flag = Field(
        default=True, description="batch norm in the backbone (false: none, and no dual BN; FiLM alone conditions "
                                  "on λ): the small-data LeNet, whose BN masks gradients (docs/evaluation.md)")
    clean_bn: Flag = Field(
        default=False, description="OAT / OATS with batch_norm false and use2BN: a BN on the λ = 0 route only (dual "
                                   "BN without the adversarial BN)")
    encoding_seed: Integer = Field(
        default=0, description="seeds the `rand` encoding matrix (the official code set none)")


class MethodConfig(Section):
    """The training method (pipeline/science/methods.py) and its λ settings."""

    section: ClassVar[str] = "method"

    name: MethodName = Field(default="oat", description="the training method")
    Lambda: Number = Field(default=0.5, description="PGDAT: the fixed trade-off weight")
    lambda_choices: list[Number] = Field(
        default=REFERENCE_LAMBDAS, description="OAT / OATS: the λ values the model is trained for (0.0 included)")
    zero_fraction: Number | None = _help("share of a batch at λ = 0; null: 1/|Λ| as in the reference")


class AttackConfig(Section):
    """The PGD attack of training and validation."""

    section: ClassVar[str] = "attack"

    norm: Literal["linf", "l2"] = Field(default="linf", description="the threat model")
    eps: Number = Field(default=8 / 255, description="the attack radius ε (a number or a fraction such as 8/255)")
    steps: Integer = Field(default=7, description="PGD steps")
    step_size: Number | None = _help("null: by step_rule")
    step_rule: Literal["official", "madry"] = Field(
        default="official", description="the step size when step_size is null, and for PGD at other step counts "
        "(validation, test): official = min(1.25ε, ε + 4/255)/steps (L∞), 2.5ε/steps (L2); madry = 2.5ε/steps")
    random_start: Flag = Field(default=True, description="start from a uniform random point in the ε-ball")
    warmup_epochs: Integer = Field(
        default=0, description="training only: ε grows linearly over the first epochs (epoch e attacks with "
        "ε·min(1, (e+1)/warmup_epochs)); 0: the full ε from the start, as the reference. Large ε (0.3 on MNIST) "
        "without a warm-up collapses training to one class")


class OptimConfig(Section):
    """The optimiser (SGD as the reference, or Adam for small data) and its learning-rate schedule."""

    section: ClassVar[str] = "optim"

    name: Literal["sgd", "adam"] = Field(default="sgd", description="the optimiser")
    lr: Number = Field(default=0.1, description="the initial learning rate (onecycle: the peak)")
    momentum: Number = Field(default=0.9, description="SGD momentum (Adam: unused)")
    weight_decay: Number = Field(default=5e-4, description="L2 weight decay")
    nesterov: Flag = Field(default=False, description="Nesterov momentum")
    schedule: Literal["cosine", "multistep", "constant", "onecycle"] = Field(
        default="cosine", description="the learning-rate schedule: cosine to 0 (per epoch, the reference), "
        "multistep, constant, or onecycle (per step: up to lr in the first 30%, then down)")
    milestones: list[Integer] = Field(
        default=[50, 150], description="multistep: the epochs where the rate drops by 10×")


class TrainConfig(Section):
    """The training run on one process (or per Ray worker)."""

    section: ClassVar[str] = "train"

    epochs: Integer = Field(default=200, description="training epochs")
    batch_size: Integer = Field(default=128, description="the global batch (split over DDP workers)")
    seed: Integer = Field(default=0, description="seeds the weights, the data order and the λ sampling")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when available")
    amp: Flag = Field(default=False, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: Flag = Field(default=False, description="channels-last memory format for images and the model")
    compile: Flag = Field(
        default=False, description="torch.compile the backbone (state-dict keys unchanged); pays a compile at start-up")
    threads: Integer | None = _help("torch intra-op threads on CPU; null: torch's default")
    max_steps_per_epoch: Integer | None = _help("cut epochs short (smoke tests, benchmarks)")
    accumulate: Integer = Field(
        default=1, description="micro-batches per step, each with its own BN statistics and λ = 0 share (as DDP ranks)")
    init_from: Text | None = _help("start from these weights (a checkpoint of the same model: a file, runs:/…, "
                                   "s3://…); a resumed run ignores it")


class EvalConfig(Section):
    """Validation during training and the final test-split evaluation."""

    section: ClassVar[str] = "eval"

    batch_size: Integer = Field(default=100, description="evaluation batch size")
    every: Integer = Field(default=10, description="validate every N epochs ...")
    last_quarter: Flag = Field(default=True, description="... and every epoch in the last quarter (reference cadence)")
    lambdas: list[Number] | None = _help("λ values to evaluate; null: method.lambda_choices")
    widths: list[Number] | None = _help("widths to evaluate; null: model.widths")
    val_steps: Integer | None = _help("PGD steps on validation; null: attack.steps (PGD-7, the reference)")
    test_steps: Integer = Field(default=20, description="PGD steps for the final test-split evaluation")
    test_attacks: list[AttackName] = Field(
        default=["pgd"], description="attacks of the final test evaluation: PGD-<test_steps> always; add "
                                     "autoattack (or one of its components) and eval.json, the comparison and the "
                                     "registry quote AutoAttack numbers (pipeline/science/robustness.py)")
    strong_widths: list[Number] | None = _help(
        "OATS: the widths the test_attacks other than PGD run at (null: every evaluated width); PGD runs at all")
    max_images: Integer | None = _help("cap the images per evaluation (null: all)")
    fuse_lambdas: Flag = Field(
        default=True, description="evaluate all λ of a width in one batched pass (same numbers, fewer kernels)")


# ``register`` is a YAML key of this section; pydantic warns that it shadows the metaclass's ABC `register`
# (a class attribute only: on an instance it is the field).
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class TrackingConfig(Section):
        """MLflow tracking (rank 0 of every run; see pipeline/platform/tracking.py)."""

        section: ClassVar[str] = "tracking"

        enabled: Flag = Field(default=False, description="track the run in MLflow")
        uri: Text | None = _help("null: $MLFLOW_TRACKING_URI, else a local store (sqlite:///mlflow.db)")
        experiment: Text = Field(default="oat", description="the MLflow experiment")
        system_metrics: Flag = Field(
            default=True, description="CPU, memory, disk, network (and GPU) as system/… metrics")
        system_metrics_interval: Number = Field(default=10.0, description="seconds between system-metric samples")
        register: Flag | None = _help("register the final model (pyfunc serving λ); null: OAT/OATS yes, PGDAT no")
        register_flagged: Flag = Field(
            default=False, description="also register (and let oat retrain promote) a run with a flagged point "
            "(collapsed, or gradients masked): for tests of the registry's plumbing on tiny models, never for a result")
        model_name: Text | None = _help("registered model name; null: the job's name")
        alias: Text = Field(
            default="champion", description="alias set on the newly registered version (models:/NAME@ALIAS)")
        flush_timeout_s: Number = Field(
            default=120.0, description="at the end, wait this long (seconds) for undelivered metrics and artifacts")


class RayConfig(Section):
    """How ``oat run`` runs the job on a Ray cluster (``oat train`` ignores this section)."""

    section: ClassVar[str] = "ray"

    num_workers: Integer = Field(default=1, description="DDP workers; train.batch_size is split over them")
    use_gpu: Flag = Field(default=False, description="one GPU per worker, NCCL; otherwise gloo on CPU")
    cpus_per_worker: Number = Field(
        default=1.0, description="CPUs per worker; also the worker's torch threads and FFCV decoding threads")
    gpus_per_worker: Number = Field(default=1.0, description="GPUs per worker (with use_gpu)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="Ray placement strategy of the worker group")
    max_failures: Integer = Field(
        default=0, description="restarts of the worker group (from the last checkpoint); -1: unlimited")
    storage_path: Text | None = _help("a folder every node sees, or s3://bucket/prefix; null: ~/ray_results")
    name: Text | None = _help("the run's name under storage_path (null: the job's name); same name = resume")
    checkpoints_to_keep: Integer = Field(default=2, description="checkpoints kept under storage_path")


class SweepConfig(Section):
    """``oat sweep``: the dedicated PGDAT baselines, one Ray Tune trial per fixed λ (other sections as the job)."""

    section: ClassVar[str] = "sweep"

    lambdas: list[Number] | None = _help("null: method.lambda_choices (the OAT job's list)")
    max_concurrent_trials: Integer = Field(default=2, description="trials running at once")
    max_failures: Integer = Field(default=1, description="retries of a failed trial (-1: without limit)")
    num_workers: Integer | None = _help("DDP workers per trial; null: ray.num_workers")
    widths: list[Number] = Field(
        default=[1.0], description="one dedicated model per (λ, width multiplier): [0.5, 0.75, 1.0] gives the OATS "
                           "comparison a plain model at every width")
    name: Text | None = _help("the sweep's name under ray.storage_path (null: <job name>_sweep); same name = resume")


class PipelineConfig(Section):
    """``oat run`` of a pipeline job: each stage a resumable Ray run; empty: the job is one training run."""

    section: ClassVar[str] = "pipeline"

    stages: list[Literal["oat", "oats", "sweep", "compare"]] = Field(default=[], description="the stages, in order")
    oats_widths: list[Number] = Field(default=REFERENCE_WIDTHS, description="the OATS stage's widths")


class RetrainConfig(Section):
    """``oat retrain`` / ``oat schedule``: when to train the registered model again, and when to promote it."""

    section: ClassVar[str] = "retrain"

    model_name: Text | None = _help("the registered model (null: tracking.model_name)")
    max_age_days: Number | None = Field(
        default=30.0, description="retrain when the champion is older than this (null: only on new data)")
    init: Literal["scratch", "champion"] = Field(
        default="scratch", description="champion: warm-start from the champion's weights")
    runner: Literal["local", "ray"] = Field(
        default="local", description="ray: train as `oat run` does (Ray Train, the job's ray section)")
    max_sa_drop: Number = Field(
        default=1.0, description="the gate: points of clean accuracy any λ (and width) may lose against the champion")
    max_ra_drop: Number = Field(
        default=1.0, description="... and of robust accuracy (AutoAttack where both have it, else PGD)")
    folder: Text = Field(default="runs/retrain", description="the retraining runs and the scheduler's state")


class JobConfig(Section):
    """An OAT job (jobs/*.yaml): what to train, how, and where its results go."""

    name: Text = Field(default="oat", description="the job's name (run folders, Ray runs, the registered model)")
    description: Text = Field(default="", description="free text")
    schedule: Text | None = _help("cron (\"0 3 * * 0\": Sundays 03:00 UTC) for `oat schedule` and infra/k8s")
    data: DataConfig = _section(DataConfig, "the data set")
    model: ModelConfig = _section(ModelConfig, "the network")
    method: MethodConfig = _section(MethodConfig, "the training method")
    attack: AttackConfig = _section(AttackConfig, "the training attack")
    optim: OptimConfig = _section(OptimConfig, "the optimiser")
    train: TrainConfig = _section(TrainConfig, "the training run")
    eval: EvalConfig = _section(EvalConfig, "validation and test evaluation")
    tracking: TrackingConfig = _section(TrackingConfig, "MLflow tracking")
    ray: RayConfig = _section(RayConfig, "Ray Train (oat run)")
    sweep: SweepConfig = _section(SweepConfig, "the PGDAT baselines (oat sweep)")
    pipeline: PipelineConfig = _section(PipelineConfig, "the stages of a pipeline job")
    retrain: RetrainConfig = _section(RetrainConfig, "retraining and promotion")

    # ------------------------------------------------------------------ derived views
    @property
    def lambdas(self) -> list[float]:
        """The λ values this job's model accepts (PGDAT: its one fixed Λ)."""
        return get_method(self.method.name).trained_lambdas(self.method.lambda_choices, self.method.Lambda)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def resolve(self) -> JobConfig:
        """A new job with every ``null`` default filled from the rest of the config, checked against the
        cross-field rules. ``self`` is not changed."""
        job = self.model_copy(deep=True)
        _fill_defaults(job)
        _check(job)
        return job


def _fill_defaults(job: JobConfig) -> None:
    method, m = get_method(job.method.name), job.model
    if m.backbone is None:
        m.backbone = REFERENCE_BACKBONE[job.data.dataset]  # type: ignore[assignment]  # validated on assignment
    if m.dropout is None:
        m.dropout = 0.3 if m.backbone in ("wrn16_8", "wrn40_2", "wrn") else 0.0
    if m.widths is None:
        m.widths = list(REFERENCE_WIDTHS) if method.slimmable else [1.0]
    m.widths = sorted(float(w) for w in m.widths)
    if m.encoding == "none":
        m.dim = 1
    if not method.conditioned or not (m.batch_norm or m.clean_bn):
        m.use2BN = False
    if job.data.val_size is None:
        job.data.val_size = REFERENCE_VAL_SIZE[job.data.dataset]
    if job.method.zero_fraction is None:
        job.method.zero_fraction = 1.0 / len(job.method.lambda_choices)
    if job.attack.step_size is None:
        job.attack.step_size = default_step_size(job.attack.norm, job.attack.eps, job.attack.steps,
                                                 job.attack.step_rule)
    if job.eval.lambdas is None:
        job.eval.lambdas = list(job.lambdas)
    if job.eval.widths is None:
        job.eval.widths = list(m.widths)
    if job.eval.val_steps is None:
        job.eval.val_steps = job.attack.steps
    if job.tracking.register is None:
        job.tracking.register = method.conditioned
    if job.tracking.model_name is None:
        job.tracking.model_name = job.name


# ------------------------------------------------------------------------------- cross-field rules
def _fail(key: str, msg: str) -> typing.NoReturn:
    raise ConfigError(f"{key}: {msg}")


def _check(job: JobConfig) -> None:
    _check_method(job)
    _check_widths(job)
    _check_counts(job)
    _check_evaluation(job)
    _check_pipeline(job)
    _check_sweep(job)
    _check_operations(job)


def _check_method(job: JobConfig) -> None:
    meth, m = job.method, job.model
    for i, lam in enumerate(meth.lambda_choices):
        if not 0.0 <= lam <= 1.0:
            _fail(f"method.lambda_choices[{i}]", f"{lam} is outside [0, 1]")
    if len(set(meth.lambda_choices)) != len(meth.lambda_choices):
        _fail("method.lambda_choices", f"{meth.lambda_choices} repeats a value")
    if not 0.0 <= meth.Lambda <= 1.0:
        _fail("method.Lambda", f"{meth.Lambda} is outside [0, 1]")
    if get_method(meth.name).conditioned:
        if 0.0 not in meth.lambda_choices:
            _fail("method.lambda_choices", "OAT/OATS need 0.0 in the list (the λ = 0 share trains BN_c)")
        if len(meth.lambda_choices) < 2:
            _fail("method.lambda_choices", "OAT/OATS need at least one λ > 0")
        zf = meth.zero_fraction
        if zf is None or not 0.0 < zf < 1.0:
            _fail("method.zero_fraction", f"{zf} must lie strictly between 0 and 1")
    if m.encoding in ("rand", "onehot", "dct") and m.dim < len(meth.lambda_choices):
        _fail("model.dim", f"{m.dim} is smaller than the number of λ choices ({len(meth.lambda_choices)})")
    if m.dropout is not None and not 0.0 <= m.dropout < 1.0:
        _fail("model.dropout", f"{m.dropout} must lie in [0, 1)")
    if m.backbone == "resnet" and not m.blocks:
        _fail("model.blocks", "backbone 'resnet' needs blocks, e.g. [2, 2, 2, 2]")
    if m.backbone == "wrn" and (m.depth is None or (m.depth - 4) % 6 != 0):
        _fail("model.depth", f"{m.depth}: backbone 'wrn' needs a depth of the form 6n + 4 (16, 28, 40)")


def _check_widths(job: JobConfig) -> None:
    widths = job.model.widths
    assert widths is not None, "resolve() fills model.widths"
    slimmable = get_method(job.method.name).slimmable
    if not slimmable and len(widths) != 1:
        _fail("model.widths", f"{widths}: only OATS trains several widths; PGDAT and OAT take one width "
                              "multiplier, e.g. [1.0] or [0.5]")
    for i, w in enumerate(widths):
        if not 0.0 < w <= 1.0:
            _fail(f"model.widths[{i}]", f"{w} must lie in (0, 1]")
    if slimmable and max(widths) != 1.0:
        _fail("model.widths", f"{widths} must include 1.0 (the full network)")
    for i, w in enumerate(job.eval.strong_widths or []):
        if w not in (job.eval.widths or widths):
            _fail(f"eval.strong_widths[{i}]", f"{w} is not an evaluated width; allowed: {job.eval.widths or widths}")


def _check_counts(job: JobConfig) -> None:
    for key, val in (("attack.steps", job.attack.steps), ("train.epochs", job.train.epochs),
                     ("train.batch_size", job.train.batch_size), ("eval.batch_size", job.eval.batch_size),
                     ("eval.every", job.eval.every), ("eval.test_steps", job.eval.test_steps),
                     ("ray.num_workers", job.ray.num_workers), ("data.workers", job.data.workers or 1),
                     ("train.accumulate", job.train.accumulate),
                     ("ray.checkpoints_to_keep", job.ray.checkpoints_to_keep)):
        if val < 1:
            _fail(key, f"{val} must be >= 1")
    if job.train.batch_size % job.train.accumulate:
        _fail("train.accumulate", f"{job.train.accumulate} does not divide train.batch_size={job.train.batch_size}")
    if job.attack.eps < 0:
        _fail("attack.eps", f"{job.attack.eps} must be >= 0")
    if job.attack.warmup_epochs < 0:
        _fail("attack.warmup_epochs", f"{job.attack.warmup_epochs} must be >= 0")
    if job.optim.lr <= 0:
        _fail("optim.lr", f"{job.optim.lr} must be > 0")
    if job.ray.max_failures < -1:
        _fail("ray.max_failures", f"{job.ray.max_failures} must be >= -1 (-1: retry without limit)")
    if job.ray.cpus_per_worker <= 0:
        _fail("ray.cpus_per_worker", f"{job.ray.cpus_per_worker} must be > 0")


def _check_evaluation(job: JobConfig) -> None:
    meth, m, ev = job.method, job.model, job.eval
    assert ev.lambdas is not None and ev.widths is not None and m.widths is not None, "resolve() fills them"
    if get_method(meth.name).conditioned and m.encoding != "none":
        for i, lam in enumerate(ev.lambdas):
            if lam not in meth.lambda_choices:
                _fail(f"eval.lambdas[{i}]", f"{lam} is not a trained λ; allowed: {meth.lambda_choices}")
    for i, w in enumerate(ev.widths):
        if w not in m.widths:
            _fail(f"eval.widths[{i}]", f"{w} is not a trained width; allowed: {m.widths}")


def _check_pipeline(job: JobConfig) -> None:
    pl = job.pipeline
    if pl.stages and job.method.name != "oat":  # the stages derive the OATS and PGDAT jobs from the OAT one
        _fail("method.name", f"{job.method.name!r}: a pipeline job describes the OAT run (method.name: oat); "
                             "its OATS and PGDAT stages are derived from it")
    if len(set(pl.stages)) != len(pl.stages):
        _fail("pipeline.stages", f"{pl.stages} repeats a stage")
    if "compare" in pl.stages and ("sweep" not in pl.stages or not {"oat", "oats"} & set(pl.stages)):
        _fail("pipeline.stages", "compare needs the sweep stage and an oat or oats stage")
    if not pl.oats_widths or max(pl.oats_widths) != 1.0 or min(pl.oats_widths) <= 0:
        _fail("pipeline.oats_widths", f"{pl.oats_widths} must lie in (0, 1] and include 1.0")


def _check_sweep(job: JobConfig) -> None:
    sw = job.sweep
    for i, lam in enumerate(sw.lambdas or []):
        if not 0.0 <= lam <= 1.0:
            _fail(f"sweep.lambdas[{i}]", f"{lam} is outside [0, 1]")
    if not sw.widths or len(set(sw.widths)) != len(sw.widths):
        _fail("sweep.widths", f"{sw.widths} must be a non-empty list without repeats")
    for i, w in enumerate(sw.widths):
        if not 0.0 < w <= 1.0:
            _fail(f"sweep.widths[{i}]", f"{w} must lie in (0, 1]")
    if sw.num_workers is not None and sw.num_workers < 1:
        _fail("sweep.num_workers", f"{sw.num_workers} must be >= 1")
    if sw.max_concurrent_trials < 1:
        _fail("sweep.max_concurrent_trials", f"{sw.max_concurrent_trials} must be >= 1")
    if sw.max_failures < -1:
        _fail("sweep.max_failures", f"{sw.max_failures} must be >= -1 (-1: retry without limit)")


def _check_operations(job: JobConfig) -> None:
    """The schedule, retraining and tracking settings."""
    if job.schedule is not None:
        from pipeline.cron import Cron, CronError

        try:
            Cron.parse(job.schedule)
        except CronError as exc:
            _fail("schedule", str(exc))
    rt = job.retrain
    if rt.max_age_days is not None and rt.max_age_days <= 0:
        _fail("retrain.max_age_days", f"{rt.max_age_days} must be > 0 (null: retrain only on new data)")
    if rt.max_sa_drop < 0 or rt.max_ra_drop < 0:
        _fail("retrain.max_sa_drop" if rt.max_sa_drop < 0 else "retrain.max_ra_drop", "must be >= 0 (points)")
    t = job.tracking
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", t.alias) or re.fullmatch(r"latest|v\d+", t.alias):
        _fail("tracking.alias", f"{t.alias!r}: letters, digits, _ and - (not 'latest' or v<number>)")
    if t.system_metrics_interval <= 0 or t.flush_timeout_s < 0:
        _fail("tracking.system_metrics_interval" if t.system_metrics_interval <= 0 else "tracking.flush_timeout_s",
              "must be > 0 (flush_timeout_s: >= 0)")
    if not t.experiment.strip():
        _fail("tracking.experiment", "must not be empty")


# ---------------------------------------------------------------------------------------- parsing
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
    """A job from a mapping of sections (a parsed YAML file) and ``--set`` overrides; resolved unless told not."""
    tree: dict[str, Any] = _deep_copy(dict(data or {}))
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(tree, key, value)
    try:
        job = JobConfig.model_validate(tree)
    except ValidationError as exc:
        raise config_error(exc, JobConfig) from None
    return job.resolve() if resolve else job


def derive_job(job: JobConfig, changes: Mapping[str, Any]) -> JobConfig:
    """A new job derived from a resolved ``job``: its settings with ``changes`` applied by dotted path
    (``{"name": "x_pgdat", "method.name": "pgdat", "method.Lambda": 0.3}``), then validated and resolved
    like a loaded job. ``job`` itself is not changed. The one way the stages, the sweep and retraining
    derive their jobs."""
    tree = job.to_dict()
    for key, value in changes.items():
        _set_dotted(tree, key, value)
    return job_from_dict(tree)


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


# --------------------------------------------------------------------------------- schema and help
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (what ``jobs/schema.json`` holds)."""
    schema = JobConfig.model_json_schema()
    schema["title"] = "OAT job"
    return {"$schema": SCHEMA_DIALECT, **schema}


def schema_text() -> str:
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"


def _type_label(prop: Mapping[str, Any]) -> str:
    if "enum" in prop:
        return "one of " + ", ".join(str(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " or ".join(dict.fromkeys(_type_label(p) for p in prop["anyOf"]))
    kind = prop.get("type")
    if kind == "array":
        item = _type_label(prop.get("items", {}))
        return f"list of ({item})" if " " in item else f"list of {item}"
    if kind == "string" and "pattern" in prop:
        return "fraction (e.g. 8/255)"
    return {"boolean": "true/false", "null": "null"}.get(str(kind), str(kind or "any"))


def _value_label(value: Any) -> str:
    if isinstance(value, str):
        return value if value else '""'
    return json.dumps(value, ensure_ascii=False)


def _field_lines(key: str, prop: Mapping[str, Any]) -> list[str]:
    default = f" = {_value_label(prop['default'])}" if "default" in prop else ""
    return [f"  {key}: {_type_label(prop)}{default}", f"      {prop.get('description', '')}"]


def config_help() -> str:
    """Every section and field of a job: type, default and description (``oat train --help-config``)."""
    schema = job_schema()
    lines = ["Job file sections and fields (YAML; override one with --set SECTION.FIELD=VALUE).", "", "(top level)"]
    sections = []
    for key, prop in schema["properties"].items():
        if "$ref" in prop:
            sections.append((key, schema["$defs"][prop["$ref"].rsplit("/", 1)[-1]]))
        else:
            lines += _field_lines(key, prop)
    for key, section in sections:
        lines += ["", f"{key}:  {section.get('description', '')}"]
        for name, prop in section["properties"].items():
            lines += _field_lines(f"{key}.{name}", prop)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.config", description="The job file format.")
    parser.add_argument("--schema", action="store_true", help="print the JSON Schema of a job file")
    parser.add_argument("--out", help="with --schema: write it to this file (e.g. jobs/schema.json)")
    a = parser.parse_args(argv)
    if not a.schema:
        print(config_help())
    elif a.out:
        Path(a.out).write_text(schema_text())
    else:
        sys.stdout.write(schema_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
