"""The ``oat`` command.

    oat train JOB.yaml [--set k=v ...] [--out DIR] [--fresh]
    oat train --help-config                        (every section and field of a job: type, default, description)
    oat train --method oat --ds cifar10 -b 128 -e 200 --lr 0.1 --use2BN      (the official flags)
    oat evaluate CHECKPOINT [--lambdas ..] [--widths ..] [--attack pgd autoattack ..] [--sanity] [--json FILE]
    oat report RUN_OR_CHECKPOINT [--attack ..] [--mlflow [URI]]   (HTML: AutoAttack, PGD, sanity checks)
    oat demo [--out DIR]
    oat data prepare --dataset DATASET [--root DIR] --out DEST [--force]    (the registry: pipeline/data/datasets.py)
    oat run JOB.yaml [--set k=v ...] [--name N] [--storage PATH] [--out DIR]      (Ray Train)
    oat submit JOB.yaml [--address http://HEAD:8265] [--no-wait]                  (Ray job API)
    oat sweep JOB.yaml [--set k=v ...] [--name N] [--storage PATH]      (Ray Tune: PGDAT per fixed λ)
    oat compare OAT_RUN_DIR SWEEP_DIR [--mlflow [URI]]          (table, plot, compute cost; MLflow run)
    oat retrain JOB.yaml [--force] [--mlflow [URI]]      (retrain if the data or the champion is stale; gate)
    oat schedule JOB.yaml                                 (the job's cron schedule: retrain, no overlaps)
    oat stack up | down | status | env                                           (local S3 + MLflow + Ray)
    oat track sync RUN_DIR                                  (deliver MLflow events kept while it was down)
    train / run / submit take --mlflow [URI]: track the run in MLflow
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.config import ConfigError


# --------------------------------------------------------------------------- option values, checked by argparse
def _number(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number")
    return value


def _whole(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``low``."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} must be >= {low}")
        return value

    return check


count = _whole(1)  # steps, images, batch sizes, workers
whole = _whole(0)  # a seed


def unit(text: str) -> float:
    """A number in [0, 1] (λ, a width)."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} is outside [0, 1]")
    return value


def positive(text: str) -> float:
    """A finite number > 0 (seconds, a learning rate)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be > 0")
    return value


def nonnegative(text: str) -> float:
    """A finite number ≥ 0 (ε, weight decay, momentum)."""
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be >= 0")
    return value


# ------------------------------------------------------------------------------ paths by kind, before any work
FOLDER_OPTIONS = {"out": "--out", "state": "--state", "root": "--root", "data_root": "--data-root",
                  "storage": "--storage"}  # written or read as folders (--out, --storage: also s3://)
FILE_OPTIONS = {"json": "--json", "plot": "--plot", "env_file": "--env-file"}


def check_paths(a: argparse.Namespace) -> None:
    """Refuse, before anything is read or written, a folder option that names a file, a file option that names a
    folder (or lies in a file), an empty or NUL-holding path, and an MLflow URI MLflow cannot track into."""
    from pipeline.config import tracking_uri_problem, uri_scheme

    for attr, option in (*FOLDER_OPTIONS.items(), *FILE_OPTIONS.items()):
        value = getattr(a, attr, None)
        if value is None or not isinstance(value, str):
            continue
        if not value.strip() or "\0" in value:
            raise ConfigError(f"{option} {value!r}: not a usable path")
        scheme = uri_scheme(value)
        s3_ok = attr == "storage" or (attr == "out" and a.command == "data")  # Ray's storage, a prepared data set
        if scheme:
            if scheme != "s3" or not s3_ok:
                raise ConfigError(f"{option} {value!r}: a {scheme}:// URI is not allowed here; "
                                  + ("a local folder or s3://bucket/prefix" if s3_ok else "a local path"))
            continue
        p = Path(value).expanduser()
        if attr in FOLDER_OPTIONS and p.exists() and not p.is_dir():
            raise ConfigError(f"{option} {value}: is a file; a folder is expected")
        if attr in FILE_OPTIONS:
            if p.is_dir():
                raise ConfigError(f"{option} {value}: is a folder; a file is expected")
            parent = next((q for q in p.parents if q.exists()), None)
            if parent is not None and not parent.is_dir():
                raise ConfigError(f"{option} {value}: {parent} is a file, not a folder")
    uri = getattr(a, "mlflow", None)
    if uri and (why := tracking_uri_problem(uri)):
        raise ConfigError(f"--mlflow: {why}")


def _fmt_list(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def legacy_overrides(a: argparse.Namespace) -> list[str]:
    """Map the official OAT.py / PGDAT.py flags onto dotted config overrides."""
    from pipeline.science.methods import get_method

    out: list[str] = []
    if a.method:
        out.append(f"method.name={a.method}")
    if a.ds:
        out.append(f"data.dataset={a.ds}")
    if a.batch_size is not None:
        out.append(f"train.batch_size={a.batch_size}")
    elif a.method and a.job is None:  # the official script's default batch (PGDAT.py: 256)
        out.append(f"train.batch_size={get_method(a.method).reference_batch}")
    if a.epochs is not None:
        out.append(f"train.epochs={a.epochs}")
    if a.lr is not None:
        out.append(f"optim.lr={a.lr}")
    if a.momentum is not None:
        out.append(f"optim.momentum={a.momentum}")
    if a.wd is not None:
        out.append(f"optim.weight_decay={a.wd}")
    if a.decay is not None:
        out.append(f"optim.schedule={'cosine' if a.decay == 'cos' else 'multistep'}")
    if a.decay_epochs is not None:
        out.append(f"optim.milestones=[{', '.join(str(e) for e in a.decay_epochs)}]")
    if a.use2BN:
        out.append("model.use2BN=true")
    if a.Lambda is not None:
        out.append(f"method.Lambda={a.Lambda}")
    if a.lambda_choices is not None:
        out.append(f"method.lambda_choices={_fmt_list(a.lambda_choices)}")
    if a.encoding is not None:
        out.append(f"model.encoding={a.encoding}")
    if a.dim is not None:
        out.append(f"model.dim={a.dim}")
    if a.eps is not None:
        out.append(f"attack.eps={a.eps}/255")  # the official --eps is in pixel levels (8 means 8/255)
    if a.steps is not None:
        out.append(f"attack.steps={a.steps}")
    return out


class _HelpConfig(argparse.Action):
    """``--help-config``: print every config section and field, then exit (like --help, no job needed)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="list every section and field of a job file (type, default, description) and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from pipeline.config import config_help

        print(config_help())
        parser.exit()


def _add_train(sub: argparse._SubParsersAction) -> None:
    from pipeline.data.datasets import dataset_names
    from pipeline.science.methods import method_names

    p = sub.add_parser("train", help="train one job in this process",
                       description="Train a job (YAML) or a run described by the official OAT flags.")
    p.add_argument("job", nargs="?", help="job YAML (jobs/*.yaml); omitted: the reference defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.epochs=3 (repeatable)")
    p.add_argument("--out", help="output folder (default: runs/<job name>)")
    p.add_argument("--fresh", action="store_true", help="start over even if OUT holds a latest.pt")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--help-config", action=_HelpConfig)
    _add_mlflow_arg(p)
    g = p.add_argument_group("official OAT.py / PGDAT.py flags")
    g.add_argument("--method", choices=method_names())
    g.add_argument("--dataset", "--ds", dest="ds", choices=dataset_names())
    g.add_argument("--batch_size", "-b", type=count)
    g.add_argument("--epochs", "-e", type=count)
    g.add_argument("--lr", type=positive)
    g.add_argument("--momentum", type=nonnegative)
    g.add_argument("--wd", type=nonnegative)
    g.add_argument("--decay", choices=["cos", "multisteps"])
    g.add_argument("--decay_epochs", "--de", type=count, nargs="+")
    g.add_argument("--use2BN", action="store_true")
    g.add_argument("--Lambda", type=unit)
    g.add_argument("--lambda_choices", type=unit, nargs="+")
    g.add_argument("--encoding", choices=["none", "onehot", "dct", "rand"])
    g.add_argument("--dim", type=count)
    g.add_argument("--eps", type=nonnegative, help="in pixel levels: 8 means 8/255")
    g.add_argument("--steps", type=count)


def _mlflow_overrides(a: argparse.Namespace) -> list[str]:
    """``--mlflow [URI]``: tracking on (URI, else $MLFLOW_TRACKING_URI, else the local store)."""
    if a.mlflow is None:
        return []
    import json

    return ["tracking.enabled=true"] + ([f"tracking.uri={json.dumps(a.mlflow)}"] if a.mlflow else [])


def _add_mlflow_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                   help="track the run in MLflow (URI, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")


def cmd_train(a: argparse.Namespace) -> int:
    from pipeline.config import load_job
    from pipeline.launch.local import train_here

    job = load_job(a.job, [*legacy_overrides(a), *a.overrides, *_mlflow_overrides(a)])
    out = Path(a.out or Path("runs") / job.name)
    train_here(job, out, resume=not a.fresh, progress=not a.quiet, final_test=not a.no_test)
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from pipeline.launch.assess import assess, summary_table, warn_failed
    from pipeline.science.curves import plot_tradeoff, points_table, write_points

    out_json = Path(a.json) if a.json else _beside(a.checkpoint) / "evaluate.json"
    state = Path(a.state) if a.state else out_json.with_suffix(".state")
    res = assess(a.checkpoint, attacks=a.attack, steps=a.steps, restarts=a.restarts, norm=a.norm, eps=a.eps,
                 lambdas=a.lambdas, widths=a.widths, max_images=a.max_images, batch_size=a.batch_size,
                 device=a.device, data_root=a.data_root, overrides=a.overrides, state_dir=state,
                 sanity=a.sanity, sanity_images=a.sanity_images, seed=a.seed)
    print(points_table(res.points, f"{res.checkpoint}: {res.dataset} test split"))
    if len(a.attack) > 1:
        print("\n" + summary_table(res))
    extra = {"split": "test", "dataset": res.dataset, "checkpoint": res.checkpoint, "attack_settings": res.attacks}
    if res.checks:
        extra["sanity_checks"] = [c.to_dict() for c in res.checks]
        print("\nsanity checks: " + ", ".join(f"{c.name} {'passed' if c.passed else 'FAILED'}" for c in res.checks))
    write_points(res.points, out_json, extra)
    png = Path(a.plot) if a.plot else out_json.with_suffix(".png")
    by: dict[str, list] = {}
    for p in res.points:
        by.setdefault(p.attack, []).append(p)
    plot_tradeoff({f"{res.method.upper()} {k}": v for k, v in by.items()}, png,
                  title=f"{res.job_name}: {res.dataset} test split")
    print(f"wrote {out_json} and {png}")
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    warn_failed(res)
    return 0


def _beside(target: str) -> Path:
    p = Path(target)
    return p if p.is_dir() else p.parent


def _add_attack_args(p: argparse.ArgumentParser, default: list[str]) -> None:
    from pipeline.science.robustness import ATTACKS

    p.add_argument("--attack", nargs="+", choices=ATTACKS, default=default,
                   help="attacks (several: also the per-image worst case over them); autoattack = the standard "
                        "ensemble APGD-CE, APGD-T, FAB-T, Square")
    p.add_argument("--steps", type=count, default=20, help="PGD steps")
    p.add_argument("--restarts", type=count, default=1, help="PGD random restarts (robust only if it survives all)")
    p.add_argument("--eps", type=nonnegative, help="default: the training ε")
    p.add_argument("--norm", choices=["linf", "l2"], help="default: the training norm")
    p.add_argument("--seed", type=whole, default=0)
    p.add_argument("--lambdas", type=unit, nargs="+", help="λ values (default: every trained λ)")
    p.add_argument("--widths", type=unit, nargs="+", help="widths (default: every trained width)")
    p.add_argument("--data-root", help="where the data set lives, if not where training found it")
    p.add_argument("--max-images", type=count, help="evaluate on the first N test images only")
    p.add_argument("--batch-size", type=count)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--state", help="folder that makes a long evaluation restartable (default: beside the output)")
    p.add_argument("--sanity-images", type=count, default=200, help="images for the sanity checks")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="trade-off curve of a checkpoint on the test split")
    p.add_argument("checkpoint", help="a .pt file or a run folder (final.pt, else latest.pt)")
    _add_attack_args(p, ["pgd"])
    p.add_argument("--sanity", action="store_true", help="also run the gradient-masking sanity checks")
    p.add_argument("--json", help="output JSON (default: evaluate.json beside the checkpoint)")
    p.add_argument("--plot", help="output PNG (default: the JSON's name with .png)")


def cmd_report(a: argparse.Namespace) -> int:
    from pipeline.launch.assess import assess, log_report, summary_table, warn_failed, write_report

    out = Path(a.out) if a.out else _beside(a.target) / "report"
    res = assess(a.target, attacks=a.attack, steps=a.steps, restarts=a.restarts, norm=a.norm, eps=a.eps,
                 lambdas=a.lambdas, widths=a.widths, max_images=a.max_images, batch_size=a.batch_size,
                 device=a.device, data_root=a.data_root, overrides=a.overrides,
                 state_dir=Path(a.state) if a.state else out / "state", sanity=not a.no_sanity,
                 sanity_images=a.sanity_images, seed=a.seed)
    files = write_report(res, out)
    print("\n" + summary_table(res))
    if res.checks:
        print("\nsanity checks: " + ", ".join(f"{c.name} {'passed' if c.passed else 'FAILED'}" for c in res.checks))
    print(f"\nreport: {files['html']} (data: {files['json']})")
    if a.mlflow is not None:
        log_report(res, files, a.mlflow or None, a.experiment)
    for w in res.warnings:
        print(f"warning: {w}", file=sys.stderr)
    warn_failed(res)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="robustness report (HTML): every attack, sanity checks, exact settings")
    p.add_argument("target", help="a run folder or a checkpoint")
    _add_attack_args(p, ["pgd", "autoattack"])
    p.add_argument("--no-sanity", action="store_true", help="skip the gradient-masking sanity checks")
    p.add_argument("--out", help="output folder (default: report/ beside the checkpoint)")
    p.add_argument("--mlflow", nargs="?", const="", metavar="URI",
                   help="log the report to MLflow: into the training run when the folder was tracked")
    p.add_argument("--experiment", default="oat", help="experiment of a new report run (default: oat)")


def cmd_demo(a: argparse.Namespace) -> int:
    from pipeline.launch.demo import run_demo

    run_demo(a.out, lambdas=a.lambdas, overrides=a.overrides, progress=not a.quiet)
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    import os

    from pipeline.config import load_job
    from pipeline.launch.ray_run import run_job
    from pipeline.science.curves import points_table, read_points

    job = load_job(a.job, [*a.overrides, *_mlflow_overrides(a)])
    if job.pipeline.stages:  # a pipeline job: OAT, OATS, the sweep and the comparisons
        from pipeline.launch.stages import run_pipeline

        run_pipeline(job, storage_path=a.storage, address=a.address, out=a.out)
        return 0
    submitted = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ  # a Ray job's working dir is temporary: no copy
    out = Path(a.out) if a.out else (None if submitted else Path("runs") / (a.name or job.ray.name or job.name))
    res = run_job(job, name=a.name, storage_path=a.storage, address=a.address, out=out)
    copied = f"; final run folder copied to {res.out}" if res.out is not None else ""
    print(f"run {res.name}: checkpoints in {res.storage} (last: {res.checkpoint}){copied} ({res.seconds:.0f} s)")
    if res.out is not None and (res.out / "eval.json").is_file():
        print(points_table(read_points(res.out / "eval.json"), "test split"))
    return 0


def _add_ray_job_args(p: argparse.ArgumentParser) -> None:
    """What `oat run` and `oat submit` share (submit passes them on to `oat run`)."""
    p.add_argument("job", help="job YAML inside this folder (jobs/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--name", help="run name under the storage path (default: ray.name, else the job's name)")
    p.add_argument("--storage", help="folder every node sees, or s3://bucket/prefix (default: ray.storage_path)")
    _add_mlflow_arg(p)


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run a job with Ray Train (DDP workers, checkpoints, restarts)",
                       description="Run JOB.yaml as a Ray Train TorchTrainer. With RAY_ADDRESS (or --address) it "
                                   "joins that cluster; otherwise it starts a local Ray. Rerunning with the same "
                                   "name and storage resumes from the last checkpoint.")
    _add_ray_job_args(p)
    p.add_argument("--out", help="local copy of the final run folder (default: runs/<name>; none inside a "
                                 "submitted Ray job, whose working dir is temporary)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")


def cmd_sweep(a: argparse.Namespace) -> int:
    from pipeline.config import load_job
    from pipeline.launch.sweep import run_sweep

    job = load_job(a.job, [*a.overrides, *_mlflow_overrides(a)])
    res = run_sweep(job, name=a.name, storage_path=a.storage, address=a.address, out=a.out)
    print(f"sweep {res.name}: {len(res.trials)} dedicated models; summary in {res.out / 'sweep.json'} "
          f"({res.seconds:.0f} s)")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="Ray Tune: one dedicated PGDAT model per fixed λ (the baselines)",
                       description="Train the job's dedicated PGDAT baselines, one Ray Tune trial per λ of "
                                   "sweep.lambdas (default: method.lambda_choices), each a Ray Train run. "
                                   "Rerunning with the same name and storage resumes the sweep.")
    _add_ray_job_args(p)
    p.add_argument("--out", help="local summary folder (default: runs/<sweep name>)")
    p.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")


def cmd_compare(a: argparse.Namespace) -> int:
    from pipeline.launch.compare import compare

    compare(a.oat, a.sweep, out=a.out, mlflow_uri=a.mlflow, experiment=a.experiment)
    return 0


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="OAT/OATS against the dedicated sweep: table, plot, compute cost",
                       description="Compare an OAT/OATS run folder (eval.json, history.json) with a sweep folder "
                                   "(sweep.json): SA and RA per λ (and width), the differences, the trade-off "
                                   "plot, and the training cost in worker-seconds.")
    p.add_argument("oat", help="the OAT/OATS run folder (oat train --out, or oat run's local copy)")
    p.add_argument("sweep", help="the sweep folder (oat sweep --out; holds sweep.json)")
    p.add_argument("--out", help="where compare.json, compare.txt and compare.png go (default: the sweep folder)")
    _add_mlflow_arg(p)
    p.add_argument("--experiment", default="oat", help="MLflow experiment of the comparison run")


def cmd_retrain(a: argparse.Namespace) -> int:
    from pipeline.config import load_job
    from pipeline.launch.retrain import retrain

    job = load_job(a.job, [*a.overrides, *_mlflow_overrides(a)])
    retrain(job, force=a.force, progress=not a.quiet)
    return 0


def cmd_schedule(a: argparse.Namespace) -> int:
    from pipeline.launch.schedule import Scheduler

    return Scheduler(a.job, a.overrides).run(max_fires=a.max_fires)


def _add_retrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("retrain", help="retrain the registered model if there is reason to; promote it only if "
                                       "it passes the gate against the champion")
    p.add_argument("job", help="the job YAML (its retrain section: max_age_days, init, the gate)")
    p.add_argument("--force", action="store_true", help="retrain even if the data and the champion are current")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    _add_mlflow_arg(p)
    p = sub.add_parser("schedule", help="run the job's retraining schedule (cron, UTC) on this machine")
    p.add_argument("job", help="the job YAML (its schedule: \"0 3 * * 0\")")
    p.add_argument("--max-fires", type=count, help="stop after this many fire times (default: run until stopped)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")


def cmd_submit(a: argparse.Namespace) -> int:
    from pipeline.launch.submit import submit

    return submit(a.job, [*a.overrides, *_mlflow_overrides(a)], address=a.address, wait=not a.no_wait, name=a.name,
                  storage=a.storage)


def _add_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="submit `oat run JOB` to a Ray cluster's job API and follow its logs",
                       description="Submit `oat run JOB` through Ray's job submission API with this folder as the "
                                   "working dir (without data, runs or checkpoints). The plain equivalent: "
                                   "ray job submit --address http://HEAD:8265 --working-dir . -- oat run JOB")
    _add_ray_job_args(p)
    p.add_argument("--address", help="the dashboard's URL, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)")
    p.add_argument("--no-wait", action="store_true", help="print the submission id and return")


def cmd_data_prepare(a: argparse.Namespace) -> int:
    from pipeline.config import DataConfig
    from pipeline.data import prepare

    cfg = DataConfig(dataset=a.dataset, root=a.root, download=a.download, val_size=a.val_size)
    manifest, status = prepare(cfg, a.out, force=a.force, workers=a.workers)
    counts = ", ".join(f"{s} {manifest.count(s)}" for s in ("train", "val", "test"))
    shape = "×".join(str(v) for v in manifest.image_shape)
    print(f"{a.out}: {manifest.dataset} ({counts}; {shape}, {manifest.num_classes} classes) {status}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    from pipeline.data.datasets import dataset_names

    p = sub.add_parser("data", help="prepare data sets as .beton files (FFCV)")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("prepare", help="write a data set's reference splits as .beton files plus a manifest",
                        description="Write train/val/test .beton files and manifest.json to a folder or "
                                    "s3://bucket/prefix (endpoint and keys from AWS_* variables). Run again, it "
                                    "only verifies checksums; --force rewrites.")
    q.add_argument("--dataset", required=True, choices=dataset_names(),
                   help="a data set of the registry (pipeline/data/datasets.py)")
    q.add_argument("--root", default="data", help="where the raw data set lives (torchvision's layout)")
    q.add_argument("--out", required=True, help="destination folder or s3://bucket/prefix")
    q.add_argument("--val-size", type=count, help="held-out images at the end of train (default: the reference)")
    q.add_argument("--download", action="store_true", help="let torchvision download a missing data set")
    q.add_argument("--force", action="store_true", help="rewrite even if DEST already holds the set")
    q.add_argument("--workers", type=count, help="writer processes (default: the CPUs available)")


def cmd_stack(a: argparse.Namespace) -> int:
    from pipeline.platform.local_stack import main as stack_main

    return stack_main(a.action, a.root, a.env_file)


def cmd_track(a: argparse.Namespace) -> int:
    from pipeline.platform.tracking import sync

    left = sync(a.run_dir, timeout=a.timeout)
    print(f"{a.run_dir}: " + (f"{left} events still undelivered (is the server up?)" if left else "all delivered"))
    return 1 if left else 0


def _add_stack_track(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stack", help="the local stack: S3 (SeaweedFS), MLflow server, Ray head",
                       description="Start, stop or inspect the local stack on this machine (by pid). Settings and "
                                   "S3 keys: infra/local/stack.env, created on first `up`.")
    p.add_argument("action", choices=["up", "down", "status", "env"])
    p.add_argument("--root", help="data, logs and pids (default: $OAT_STACK_DIR, else .oat-stack)")
    p.add_argument("--env-file", help="settings file (default: infra/local/stack.env)")
    t = sub.add_parser("track", help="MLflow tracking maintenance")
    tsub = t.add_subparsers(dest="track_command", required=True)
    q = tsub.add_parser("sync", help="deliver what a run folder's tracking outbox still holds")
    q.add_argument("run_dir")
    q.add_argument("--timeout", type=positive, default=600.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="oat", description="Once-for-All Adversarial Training pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_report(sub)
    _add_data(sub)
    _add_run(sub)
    _add_submit(sub)
    _add_sweep(sub)
    _add_compare(sub)
    _add_retrain(sub)
    _add_stack_track(sub)
    d = sub.add_parser("demo", help="OAT vs dedicated PGDAT models on digits (the embedded default)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--lambdas", type=unit, nargs="+", help="λ values to compare (default: the job's list)")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override both demo jobs, e.g. --set train.epochs=5")
    d.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.data import DataError
    from pipeline.data.s3 import StorageError
    from pipeline.files import CheckpointError
    from pipeline.launch.submit import ClusterError, SubmitError
    from pipeline.platform.services import StackError
    from pipeline.platform.tracking import TrackingError

    handlers = {"train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo, "data": cmd_data_prepare,
                "run": cmd_run, "submit": cmd_submit, "stack": cmd_stack, "track": cmd_track, "sweep": cmd_sweep,
                "compare": cmd_compare, "report": cmd_report, "retrain": cmd_retrain, "schedule": cmd_schedule}
    try:
        check_paths(args)  # paths by kind and the MLflow URI, before any handler reads or writes
        return handlers[args.command](args)
    except (ConfigError, DataError, CheckpointError, StorageError, SubmitError, ClusterError, StackError,
            TrackingError, FileNotFoundError) as exc:
        print(f"oat: error: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # e.g. an untrained λ or width
        print(f"oat: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\noat: interrupted. latest.pt holds the last finished epoch: rerun the same command to resume.",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
