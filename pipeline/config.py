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
    AtLeastZero,
    ConfigError,
    Count,
    DataConfig,
    Flag,
    NonNegative,
    OneOf,
    Positive,
    Retries,
    Section,
    Share,
    Text,
    Unit,
    Width,
    config_error,
)
from pipeline.science.attacks import default_step_size
from pipeline.science.methods import METHODS, get_method

__all__ = ["REFERENCE_BACKBONE", "REFERENCE_LAMBDAS", "REFERENCE_VAL_SIZE", "REFERENCE_WIDTHS", "AttackConfig",
           "ConfigError", "DataConfig", "EvalConfig", "JobConfig", "MethodConfig", "ModelConfig", "OptimConfig",
           "PipelineConfig", "RayConfig", "RetrainConfig", "SweepConfig", "TrackingConfig", "TrainConfig",
           "config_help", "default_step_size", "derive_job", "job_from_dict", "job_schema", "load_job", "main",
           "parse_override", "schema_text", "tracking_uri_problem", "uri_scheme", "LOCATION_SCHEMES"]

REFERENCE_LAMBDAS = [0.0, 0.1, 0.2, 0.3, 0.4, 1.0]
REFERENCE_WIDTHS = [0.5, 0.75, 1.0]

# The reference pairs each data set with one backbone (CIFAR-10: ResNet-34, SVHN: WRN-16-8, STL-10: WRN-40-2);
# each data set's registry entry names it.
REFERENCE_BACKBONE: Mapping[str, str] = ReferenceTable("backbone")

Backbone = Literal["small_cnn", "lenet", "resnet18", "resnet34", "wrn16_8", "wrn40_2", "resnet", "wrn"]
Encoding = Literal["rand", "onehot", "dct", "none"]
MethodName = Annotated[str, OneOf(lambda: METHODS)]
AttackName = Literal["pgd", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"]
# lists that must name at least one value (a λ list, a width list): empty is refused at load, with the key
Units = Annotated[list[Unit], Field(min_length=1)]
Widths = Annotated[list[Width], Field(min_length=1)]
Counts = Annotated[list[Count], Field(min_length=1)]


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
    channels: Counts | None = _help("small_cnn / resnet: channels per stage")
    blocks: Counts | None = _help("resnet: BasicBlocks per stage")
    depth: Count | None = _help("wrn: depth (6n + 4)")
    widen: Count | None = _help("wrn: widen factor")
    dropout: Share | None = _help("null: 0.3 for WRNs (reference), 0 otherwise")
    widths: Widths | None = _help(
        "OATS: its slimmable widths (null: [0.5, 0.75, 1.0]); PGDAT / OAT: one width multiplier (null: [1.0]); "
        "[0.5] is a plain model with half the channels in every layer")
    encoding: Encoding = Field(default="rand", description="how λ is encoded into the model's conditioning input")
    dim: Count = Field(default=128, description="λ code dimension (1 for encoding none)")
    use2BN: Flag = Field(default=True, description="dual batch norm (BN_c for λ = 0, BN_a for λ > 0); OAT / OATS only")
    batch_norm: Flag = Field(
        default=True, description="batch norm in the backbone (false: none, and no dual BN; FiLM alone conditions "
                                  "on λ): the small-data LeNet, whose BN masks gradients (docs/evaluation.md)")
    clean_bn: Flag = Field(
        default=False, description="OAT / OATS with batch_norm false and use2BN: a BN on the λ = 0 route only (dual "
                                   "BN without the adversarial BN)")
    encoding_seed: AtLeastZero = Field(
        default=0, description="seeds the `rand` encoding matrix (the official code set none)")


class MethodConfig(Section):
    """The training method (pipeline/science/methods.py) and its λ settings."""

    section: ClassVar[str] = "method"

    name: MethodName = Field(default="oat", description="the training method")
    Lambda: Unit = Field(default=0.5, description="PGDAT: the fixed trade-off weight")
    lambda_choices: Units = Field(
        default=REFERENCE_LAMBDAS, description="OAT / OATS: the λ values the model is trained for (0.0 included)")
    zero_fraction: Unit | None = _help("share of a batch at λ = 0; null: 1/|Λ| as in the reference")


class AttackConfig(Section):
    """The PGD attack of training and validation."""

    section: ClassVar[str] = "attack"

    norm: Literal["linf", "l2"] = Field(default="linf", description="the threat model")
    eps: NonNegative = Field(default=8 / 255, description="the attack radius ε (a number or a fraction such as 8/255)")
    steps: Count = Field(default=7, description="PGD steps")
    step_size: NonNegative | None = _help("null: by step_rule")
    step_rule: Literal["official", "madry"] = Field(
        default="official", description="the step size when step_size is null, and for PGD at other step counts "
        "(validation, test): official = min(1.25ε, ε + 4/255)/steps (L∞), 2.5ε/steps (L2); madry = 2.5ε/steps")
    random_start: Flag = Field(default=True, description="start from a uniform random point in the ε-ball")
    warmup_epochs: AtLeastZero = Field(
        default=0, description="training only: ε grows linearly over the first epochs (epoch e attacks with "
        "ε·min(1, (e+1)/warmup_epochs)); 0: the full ε from the start, as the reference. Large ε (0.3 on MNIST) "
        "without a warm-up collapses training to one class")


class OptimConfig(Section):
    """The optimiser (SGD as the reference, or Adam for small data) and its learning-rate schedule."""

    section: ClassVar[str] = "optim"

    name: Literal["sgd", "adam"] = Field(default="sgd", description="the optimiser")
    lr: Positive = Field(default=0.1, description="the initial learning rate (onecycle: the peak)")
    momentum: Share = Field(default=0.9, description="SGD momentum (Adam: unused)")
    weight_decay: NonNegative = Field(default=5e-4, description="L2 weight decay")
    nesterov: Flag = Field(default=False, description="Nesterov momentum")
    schedule: Literal["cosine", "multistep", "constant", "onecycle"] = Field(
        default="cosine", description="the learning-rate schedule: cosine to 0 (per epoch, the reference), "
        "multistep, constant, or onecycle (per step: up to lr in the first 30%, then down)")
    milestones: list[Count] = Field(
        default=[50, 150], description="multistep: the epochs where the rate drops by 10×")


class TrainConfig(Section):
    """The training run on one process (or per Ray worker)."""

    section: ClassVar[str] = "train"

    epochs: Count = Field(default=200, description="training epochs")
    batch_size: Count = Field(default=128, description="the global batch (split over DDP workers)")
    seed: AtLeastZero = Field(default=0, description="seeds the weights, the data order and the λ sampling")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto: CUDA when available")
    amp: Flag = Field(default=False, description="bf16 autocast on CUDA (ignored on CPU)")
    channels_last: Flag = Field(
        default=False, description="channels-last memory format for images and the model (a training step is "
                                   "1.14-1.44x faster on every backbone on the CPU, but standard AutoAttack's small "
                                   "queries slower: docs/performance.md)")
    compile: Flag = Field(
        default=False, description="torch.compile the backbone (state-dict keys unchanged); pays a compile at start-up")
    threads: Count | None = _help("torch intra-op threads on CPU; null: torch's default")
    max_steps_per_epoch: Count | None = _help("cut epochs short (smoke tests, benchmarks)")
    accumulate: Count = Field(
        default=1, description="micro-batches per step, each with its own BN statistics and λ = 0 share (as DDP ranks)")
    init_from: Text | None = _help("start from these weights (a checkpoint of the same model: a file, runs:/…, "
                                   "s3://…); a resumed run ignores it")


class EvalConfig(Section):
    """Validation during training and the final test-split evaluation."""

    section: ClassVar[str] = "eval"

    batch_size: Count = Field(default=100, description="evaluation batch size")
    every: Count = Field(default=10, description="validate every N epochs ...")
    last_quarter: Flag = Field(default=True, description="... and every epoch in the last quarter (reference cadence)")
    lambdas: Units | None = _help("λ values to evaluate; null: method.lambda_choices")
    widths: Widths | None = _help("widths to evaluate; null: model.widths")
    val_steps: Count | None = _help("PGD steps on validation; null: attack.steps (PGD-7, the reference)")
    test_steps: Count = Field(default=20, description="PGD steps for the final test-split evaluation")
    test_attacks: list[AttackName] = Field(
        default=["pgd"], description="attacks of the final test evaluation: PGD-<test_steps> always; add "
                                     "autoattack (or one of its components) and eval.json, the comparison and the "
                                     "registry quote AutoAttack numbers (pipeline/science/robustness.py)")
    strong_widths: Widths | None = _help(
        "OATS: the widths the test_attacks other than PGD run at (null: every evaluated width); PGD runs at all")
    max_images: Count | None = _help("cap the images per evaluation (null: all)")
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
        system_metrics_interval: Positive = Field(default=10.0, description="seconds between system-metric samples")
        register: Flag | None = _help("register the final model (pyfunc serving λ); null: OAT/OATS yes, PGDAT no")
        register_flagged: Flag = Field(
            default=False, description="also register (and let oat retrain promote) a run with a flagged point "
            "(collapsed, or gradients masked): for tests of the registry's plumbing on tiny models, never for a result")
        model_name: Text | None = _help("registered model name; null: the job's name")
        alias: Text = Field(
            default="champion", description="alias set on the newly registered version (models:/NAME@ALIAS)")
        flush_timeout_s: NonNegative = Field(
            default=120.0, description="at the end, wait this long (seconds) for undelivered metrics and artifacts")


class RayConfig(Section):
    """How ``oat run`` runs the job on a Ray cluster (``oat train`` ignores this section)."""

    section: ClassVar[str] = "ray"

    num_workers: Count = Field(default=1, description="DDP workers; train.batch_size is split over them")
    use_gpu: Flag = Field(default=False, description="one GPU per worker, NCCL; otherwise gloo on CPU")
    cpus_per_worker: Positive = Field(
        default=1.0, description="CPUs per worker; also the worker's torch threads and FFCV decoding threads")
    gpus_per_worker: NonNegative = Field(default=1.0, description="GPUs per worker (with use_gpu)")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="Ray placement strategy of the worker group")
    max_failures: Retries = Field(
        default=0, description="restarts of the worker group (from the last checkpoint); -1: unlimited")
    storage_path: Text | None = _help("a folder every node sees, or s3://bucket/prefix; null: ~/ray_results")
    name: Text | None = _help("the run's name under storage_path (null: the job's name); same name = resume")
    checkpoints_to_keep: Count = Field(default=2, description="checkpoints kept under storage_path")


class SweepConfig(Section):
    """``oat sweep``: the dedicated PGDAT baselines, one Ray Tune trial per fixed λ (other sections as the job)."""

    section: ClassVar[str] = "sweep"

    lambdas: Units | None = _help("null: method.lambda_choices (the OAT job's list)")
    max_concurrent_trials: Count = Field(default=2, description="trials running at once")
    max_failures: Retries = Field(default=1, description="retries of a failed trial (-1: without limit)")
    num_workers: Count | None = _help("DDP workers per trial; null: ray.num_workers")
    widths: Widths = Field(
        default=[1.0], description="one dedicated model per (λ, width multiplier): [0.5, 0.75, 1.0] gives the OATS "
                           "comparison a plain model at every width")
    name: Text | None = _help("the sweep's name under ray.storage_path (null: <job name>_sweep); same name = resume")


class PipelineConfig(Section):
    """``oat run`` of a pipeline job: each stage a resumable Ray run; empty: the job is one training run."""

    section: ClassVar[str] = "pipeline"

    stages: list[Literal["oat", "oats", "sweep", "compare"]] = Field(default=[], description="the stages, in order")
    oats_widths: Widths = Field(default=REFERENCE_WIDTHS, description="the OATS stage's widths")


class RetrainConfig(Section):
    """``oat retrain`` / ``oat schedule``: when to train the registered model again, and when to promote it."""

    section: ClassVar[str] = "retrain"

    model_name: Text | None = _help("the registered model (null: tracking.model_name)")
    max_age_days: Positive | None = Field(
        default=30.0, description="retrain when the champion is older than this (null: only on new data)")
    init: Literal["scratch", "champion"] = Field(
        default="scratch", description="champion: warm-start from the champion's weights")
    runner: Literal["local", "ray"] = Field(
        default="local", description="ray: train as `oat run` does (Ray Train, the job's ray section)")
    max_sa_drop: NonNegative = Field(
        default=1.0, description="the gate: points of clean accuracy any λ (and width) may lose against the champion")
    max_ra_drop: NonNegative = Field(
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
    _check_threat_model(job)
    _check_locations(job)
    _check_repeats(job)
    _check_method(job)
    _check_widths(job)
    _check_counts(job)
    _check_evaluation(job)
    _check_pipeline(job)
    _check_operations(job)


def _check_threat_model(job: JobConfig) -> None:
    """ε within the images' range ([0, 1] per pixel): L∞ at most 1 (any image), L2 at most the diagonal of the cube
    √(C·H·W); beyond that the attack is unconstrained and a robust accuracy means nothing."""
    import math

    from pipeline.data.datasets import DATASETS

    a = job.attack
    c, h, w = DATASETS[job.data.dataset].image_shape
    bound, what = (1.0, "images are in [0, 1], so L∞ ε ≤ 1 (0.3 is MNIST's, 8/255 CIFAR-10's)") if a.norm == "linf" \
        else (math.sqrt(c * h * w), f"L2 ε ≤ √(C·H·W) = {math.sqrt(c * h * w):.3g} for {job.data.dataset} "
                                    "(0.5 is CIFAR-10's)")
    if not 0.0 <= a.eps <= bound:
        _fail("attack.eps", f"{a.eps:g} is outside [0, {bound:.4g}]: {what}")


# URI schemes each location accepts ("" = a local path); MLflow's are SQLAlchemy dialects (postgresql+psycopg2: the
# part before "+") and its HTTP server; its file store ("" or file) is refused by MLflow 3 unless
# MLFLOW_ALLOW_FILE_STORE is true, which is checked where the URI is used (tracking_uri_problem), not in the job
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")
FOLDER_SCHEMES = ("", "s3")  # ray.storage_path, data.beton
# train.init_from: a local file, or what mlflow.artifacts.download_artifacts fetches
INIT_SCHEMES = ("", "s3", "runs", "models", "file", "http", "https", "mlflow-artifacts", "gs", "wasbs", "hdfs", "ftp",
                "sftp", "dbfs")
LOCATION_SCHEMES: dict[str, tuple[str, ...]] = {
    "tracking.uri": (*TRACKING_SCHEMES, "", "file"), "ray.storage_path": FOLDER_SCHEMES, "data.beton": FOLDER_SCHEMES,
    "train.init_from": INIT_SCHEMES, "data.root": ("",), "data.cache_dir": ("",), "retrain.folder": ("",)}


def uri_scheme(uri: str) -> str:
    """``s3://b/k`` -> "s3", ``runs:/id/p`` -> "runs", ``postgresql+psycopg2://`` -> "postgresql", a path -> ""."""
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*):/", uri)
    if m is None or re.match(r"^[A-Za-z]:[\\/]", uri):  # C:\ is a Windows path, not a scheme
        return ""
    return m.group(1).split("+")[0]  # as written: S3:// is not s3:// to boto3 or to pyarrow


def tracking_uri_problem(uri: str) -> str | None:
    """Why MLflow cannot track into ``uri`` here and now (None: it can, as far as its form goes); where a URI is used
    (the CLI's --mlflow, the tracking client), as it reads the environment."""
    import os

    scheme = "databricks" if uri.strip() == "databricks" else uri_scheme(uri)
    if scheme in TRACKING_SCHEMES:
        return None
    if scheme in ("", "file"):
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("1", "true"):  # MLflow's own reading
            return None
        return (f"{uri!r} is MLflow's file store, which MLflow 3 keeps in maintenance mode: use sqlite:///PATH.db or "
                "an http(s):// tracking server (MLFLOW_ALLOW_FILE_STORE=true lets MLflow use it anyway)")
    allowed = ", ".join(f"{x}://" for x in TRACKING_SCHEMES)
    return f"{uri!r}: MLflow cannot track into a {scheme}:// URI; allowed: {allowed}"


def _check_locations(job: JobConfig) -> None:
    """Each URI by its scheme, each local folder by its kind (an existing file is not a folder)."""
    values = {"tracking.uri": job.tracking.uri, "ray.storage_path": job.ray.storage_path, "data.beton": job.data.beton,
              "train.init_from": job.train.init_from, "data.root": job.data.root, "data.cache_dir": job.data.cache_dir,
              "retrain.folder": job.retrain.folder}
    for key, value in values.items():
        schemes = LOCATION_SCHEMES[key]
        if key == "tracking.uri" and value == "":
            continue  # "": $MLFLOW_TRACKING_URI, else the local store, as null
        if not value:
            if value == "":
                _fail(key, "an empty string; give a path" + (" or a URI" if len(schemes) > 1 else ""))
            continue
        scheme = uri_scheme(value)
        if scheme not in schemes:
            allowed = ", ".join("a local path" if x == "" else f"{x}:{'/' if x in ('runs', 'models') else '//'}…"
                                for x in schemes)
            _fail(key, f"{value!r}: {scheme or 'that'} is not allowed here; allowed: {allowed}")
        if "\0" in value:
            _fail(key, f"{value!r} holds a NUL character")
        if scheme == "" and key not in ("train.init_from", "tracking.uri") and Path(value).expanduser().is_file():
            _fail(key, f"{value!r} is a file; a folder is expected here")


def _check_repeats(job: JobConfig) -> None:
    """No λ or width list names a value twice."""
    for key, values in (("method.lambda_choices", job.method.lambda_choices), ("model.widths", job.model.widths),
                        ("eval.lambdas", job.eval.lambdas), ("eval.widths", job.eval.widths),
                        ("sweep.lambdas", job.sweep.lambdas), ("sweep.widths", job.sweep.widths)):
        if values is not None and len(set(values)) != len(values):
            _fail(key, f"{values} repeats a value")


def _check_method(job: JobConfig) -> None:
    meth, m = job.method, job.model
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
    if slimmable and max(widths) != 1.0:
        _fail("model.widths", f"{widths} must include 1.0 (the full network)")
    for i, w in enumerate(job.eval.strong_widths or []):
        if w not in (job.eval.widths or widths):
            _fail(f"eval.strong_widths[{i}]", f"{w} is not an evaluated width; allowed: {job.eval.widths or widths}")


def _check_counts(job: JobConfig) -> None:
    """What the bounded types cannot say alone (each count's own bound is in the schema)."""
    if job.train.batch_size % job.train.accumulate:
        _fail("train.accumulate", f"{job.train.accumulate} does not divide train.batch_size={job.train.batch_size}")
    if job.train.batch_size < job.ray.num_workers * job.train.accumulate:
        _fail("train.batch_size", f"{job.train.batch_size} is smaller than ray.num_workers × train.accumulate = "
                                  f"{job.ray.num_workers * job.train.accumulate}: every micro-batch needs an image")
    if job.ray.use_gpu and job.ray.gpus_per_worker <= 0:
        _fail("ray.gpus_per_worker", f"{job.ray.gpus_per_worker:g}: ray.use_gpu needs a GPU share per worker (> 0)")


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
    if max(pl.oats_widths) != 1.0:
        _fail("pipeline.oats_widths", f"{pl.oats_widths} must include 1.0 (the full network)")


def _check_operations(job: JobConfig) -> None:
    """The schedule, retraining and tracking settings."""
    if job.schedule is not None:
        from pipeline.cron import Cron, CronError

        try:
            Cron.parse(job.schedule)
        except CronError as exc:
            _fail("schedule", str(exc))
    t = job.tracking
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]{0,254}", t.alias) or re.fullmatch(r"latest|v\d+", t.alias):
        _fail("tracking.alias", f"{t.alias!r}: letters, digits, _ and - (not 'latest' or v<number>)")
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
        if p.is_dir():
            raise ConfigError(f"job file {str(p)!r} is a folder; a job YAML file is expected (jobs/*.yaml)")
        if not p.is_file():
            raise ConfigError(f"job file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError:
            raise ConfigError(f"{p}: not a text file (a job is YAML in UTF-8)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML: {' '.join(str(exc).split())}") from None
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
