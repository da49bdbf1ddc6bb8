"""``oat run``: the job's training loop (:func:`pipeline.training.loop.fit`) inside a Ray Train ``TorchTrainer``.

* ``ScalingConfig`` from the job's ``ray`` section; DDP through Ray's process group (gloo on CPU, NCCL on
  GPU); each worker reads its shard of the .beton files (FFCV ``distributed=True``).
* Rank 0 writes the run folder as ``oat train`` does and, after every epoch, reports it (latest.pt,
  history.json, config.yaml, best/; at the end also final.pt, eval.json, tradeoff.png) as the epoch's Ray
  checkpoint into ``RunConfig(storage_path, name)``; only rank 0's metrics are kept.
* With ``tracking.enabled`` the driver begins the MLflow run (one clear error before Ray starts anything) and
  rank 0 reports to it; the tracking outbox travels in the checkpoints, so a restart delivers what was left.
* A restarted worker group (``FailureConfig(max_failures)``) and a resubmitted job with the same
  (storage path, name) both start from the last reported checkpoint: every worker copies it into its run
  folder and ``fit`` resumes from its ``latest.pt``.
* With ``RAY_ADDRESS`` set (as ``ray job submit`` does) it joins that cluster; otherwise it starts a local
  Ray, the embedded default.
* The console shows our lines only, each once: Ray's own output (its controller, raylets, workers' logs) stays in
  Ray's log files (``log_to_driver=False``; the local Ray says where), and what rank 0 (and each Tune trial)
  prints comes to the driver through a :class:`Console` relay, unprefixed, on the stream it was written to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, job_from_dict
from pipeline.data import s3 as storage
from pipeline.launch.console import Console, console_to_driver
from pipeline.launch.submit import ClusterError
from pipeline.platform import tracking
from pipeline.platform.tracking import RunInfo
from pipeline.training.callbacks import Callback, RunContext, TrainResult
from pipeline.training.metrics import epoch_metrics

RUN_FILES = ("latest.pt", "history.json", "config.yaml", "workers.json")
FINAL_FILES = ("final.pt", "eval.json", "tradeoff.png")


@dataclass
class RunResult:
    name: str
    storage: str  # where Ray keeps the run (folder or s3://…)
    checkpoint: str | None  # the last checkpoint's location
    out: Path | None  # the local copy of the final run folder
    metrics: dict[str, Any]
    seconds: float
    tracking: RunInfo | None = None  # the run's MLflow run (tracking on)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)  # the files are replaced, never rewritten in place: a hard link is a snapshot
    except OSError:
        shutil.copy2(src, dst)


def snapshot(out: Path, final: bool, dest: Path) -> None:
    """The run folder's files that make up a checkpoint, linked into ``dest`` (the tracking outbox, which is
    appended to in place, is copied)."""
    for name in RUN_FILES + (FINAL_FILES if final else ()):
        if (out / name).is_file():
            _link_or_copy(out / name, dest / name)
    for folder in ("best", "tracking"):
        if not (out / folder).is_dir():
            continue
        for f in (out / folder).rglob("*"):
            if f.is_file() and not f.name.startswith("."):
                target = dest / f.relative_to(out)
                if folder == "tracking" and f.parent == out / folder:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, target)
                else:
                    _link_or_copy(f, target)


def _quiet_reports() -> None:
    """Ray Train logs every report (all metrics) at INFO under a logger named after its file; our progress
    lines already say what happened."""
    try:
        from ray.train.v2._internal.execution import context
        from ray.train.v2._internal.execution import storage as ray_storage

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
        logging.getLogger(ray_storage.__name__).setLevel(logging.WARNING)  # "Checkpoint successfully created at…"
    except ImportError:  # a Ray without this module: keep its logging as is
        pass


class RayReport(Callback):
    """The loop's Ray Train report, on every rank: each epoch's metrics, and from rank 0 the run folder's files
    as the checkpoint Ray keeps (the last one with ``final.pt`` and the test curve). It runs after the MLflow
    callback, so that Ray's final checkpoint holds the delivered outbox."""

    def _report(self, run: RunContext, record: dict[str, Any], final: bool) -> None:
        import ray.train

        metrics: dict[str, Any] = {"epoch": int(record.get("epoch", 0)), **epoch_metrics(record)}
        if not run.is_main:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory(prefix="oat-ckpt-") as tmp:
            snapshot(run.out, final, Path(tmp))
            name = "final" if final else f"epoch_{int(record.get('epoch', 0)):04d}"
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)

    def on_epoch_end(self, run: RunContext, record: dict[str, Any], last: bool) -> None:
        if not last:
            self._report(run, record, False)

    def on_end(self, run: RunContext, result: TrainResult) -> None:
        self._report(run, result.history[-1] if result.history else {}, True)


def _worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: restore the last checkpoint, then the same loop as ``oat train``; rank 0's output
    also goes to the driver's console."""
    import ray.train

    _quiet_reports()
    ctx = ray.train.get_context()
    with console_to_driver(ctx.get_world_rank() == 0):
        _run_worker(config, ctx.get_world_rank(), ctx.get_world_size())


def _run_worker(config: dict[str, Any], rank: int, world: int) -> None:
    import ray.train
    import ray.train.torch
    import ray.util
    import torch

    from pipeline.training.ddp import Dist
    from pipeline.training.loop import fit

    job = job_from_dict(config["job"])
    if job.train.threads is None:  # Ray sets OMP_NUM_THREADS to the worker's CPUs; FFCV follows torch
        job.train.threads = max(1, torch.get_num_threads())
    out = Path(tempfile.mkdtemp(prefix=f"oat-{job.name}-rank{rank}-"))
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            shutil.copytree(d, out, dirs_exist_ok=True)
        if rank == 0:
            print(f"[{config.get('label', job.name)}] restoring the run from checkpoint {ckpt.path}", flush=True)

    device = ray.train.torch.get_device() if job.ray.use_gpu else torch.device("cpu")
    where = {"rank": rank, "node_ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "device": str(device),
             "threads": torch.get_num_threads()}
    placed: list[Any] = [None] * world
    torch.distributed.all_gather_object(placed, where)
    if rank == 0:
        (out / "workers.json").write_text(json.dumps(placed, indent=1) + "\n")
    info = RunInfo.from_dict(config["tracking"]) if config.get("tracking") else None
    callbacks = [*tracking.tracking_callbacks(job, out, info=info, rank=rank), RayReport()]
    try:
        fit(job, out, callbacks, dist=Dist(rank, world, device), progress=rank == 0, label=config.get("label", ""),
            init=tracking.fetch_init(job, out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


def storage_location(path: str | None) -> tuple[str | None, Any]:
    """RunConfig's (storage_path, storage_filesystem): a folder, or s3://bucket/prefix on the environment's
    endpoint (pyarrow's S3 filesystem with the environment's keys)."""
    if path is None:
        return None, None
    if not storage.is_s3(path):
        return str(Path(path).expanduser().resolve()), None
    import pyarrow.fs

    bucket, key = storage.split_s3(path)
    ep = storage.endpoint()
    kw: dict[str, Any] = {"region": os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if ep:
        scheme, _, host = ep.partition("://")
        kw.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kw.update(access_key=os.environ["AWS_ACCESS_KEY_ID"], secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", ""))
    storage.exists(storage.join(path, ".probe"))  # fail now, clearly, if the endpoint or bucket is wrong
    return f"{bucket}/{key}".rstrip("/"), pyarrow.fs.S3FileSystem(**kw)


def _host_port(addr: str) -> tuple[str, int] | None:
    """``host:port`` of a GCS (``ray start``) or Ray Client (``ray://``) address; None for ``auto`` and the like."""
    rest = addr.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]") or "127.0.0.1", int(port)


def _cluster_error(addr: str, seconds: float, why: str) -> ClusterError:
    return ClusterError(f"cannot join the Ray cluster at {addr} within {seconds:g} s ({why}): is `ray start --head` "
                        "running there, and is the address (--address, RAY_ADDRESS) its GCS host:port (default port "
                        "6379) or ray://host:10001? OAT_RAY_CONNECT_TIMEOUT_S waits longer")


def cluster_address(address: str | None) -> str | None:
    """The cluster to join: ``address``, else $RAY_ADDRESS; None (or ``local``): start a local Ray."""
    addr = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if addr in ("", "local") else addr


def probe_cluster(address: str | None) -> float:
    """A TCP connection to the cluster at ``address`` (or $RAY_ADDRESS; none: a local Ray, nothing to probe) within
    ``OAT_RAY_CONNECT_TIMEOUT_S``, before anything is written; :class:`ClusterError` if nothing listens there.
    Returns the timeout."""
    import socket

    from pipeline.timeouts import timeout_s

    seconds = timeout_s("ray")
    addr = cluster_address(address)
    if addr is None:
        return seconds
    if addr.startswith(("http://", "https://")):
        raise ClusterError(f"{addr} is a dashboard (job API) URL: `oat submit --address {addr}` sends a job there; "
                           "`oat run --address` joins the cluster's GCS, host:6379 (or ray://host:10001)")
    hp = _host_port(addr)
    if hp is not None:
        try:
            socket.create_connection(hp, timeout=seconds).close()
        except OSError as exc:
            raise _cluster_error(addr, seconds, getattr(exc, "strerror", None) or type(exc).__name__) from None
    return seconds


def join_cluster(addr: str, init_kwargs: dict[str, Any]) -> None:
    """``ray.init(address=addr)`` that gives up after ``OAT_RAY_CONNECT_TIMEOUT_S`` with one :class:`ClusterError`,
    where Ray itself retries for minutes and prints its GCS retry warnings. First a TCP connection to the address
    (nothing listening is known at once); then ``ray.init`` under a watchdog, its C++ retry warnings discarded (its
    exception, if it fails otherwise, is quoted). A process stuck inside Ray's connect past the timeout (in C, where no
    exception reaches it) is ended with the same line and exit code 2: the CLI owns this process."""
    import _thread

    import ray

    seconds = probe_cluster(addr)
    lock, returned, timed_out = threading.Lock(), threading.Event(), threading.Event()
    console = os.dup(2)  # the watchdog's own copy of the console's stderr: it closes it, nobody else does

    def watchdog() -> None:
        try:
            if returned.wait(seconds):
                return
            with lock:  # never interrupt a ray.init that has returned
                if returned.is_set():
                    return
                timed_out.set()
                _thread.interrupt_main()  # ends Ray's Python-level retry loop at its next sleep
            if not returned.wait(2.0):
                line = f"oat: error: {_cluster_error(addr, seconds, 'no Ray GCS answered')}\n"
                os.write(console, line.encode())  # fd 2 holds Ray's chatter file meanwhile
                os._exit(2)
        finally:
            os.close(console)

    error: ClusterError | None = None
    with tempfile.TemporaryFile() as chatter:
        saved = os.dup(2)
        os.dup2(chatter.fileno(), 2)  # Ray's core worker writes its connect retries to fd 2 (rpc_client.h, gcs_client)
        threading.Thread(target=watchdog, name="ray-connect-watchdog", daemon=True).start()
        try:
            try:
                ray.init(address=addr, **init_kwargs)
            finally:
                os.dup2(saved, 2)  # the console's stderr back first, whatever happens next
                os.close(saved)
                with lock:
                    returned.set()
        except KeyboardInterrupt:
            if not timed_out.is_set():
                raise  # the user's Ctrl-C
            error = _cluster_error(addr, seconds, "no Ray GCS answered")
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
            error = _cluster_error(addr, seconds, str(exc).strip().splitlines()[0][:200] if str(exc) else
                                   type(exc).__name__)
    if error is None and timed_out.is_set():  # ray.init returned as the watchdog fired: its interrupt is pending
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(0.1)
        error = _cluster_error(addr, seconds, "no Ray GCS answered in time")
    if error is not None:
        raise error


def join_first(address: str | None) -> None:
    """With a cluster to join (``address`` or $RAY_ADDRESS), join it now: joining writes nothing, so a cluster that
    does not answer fails before any MLflow run or folder. A local Ray starts later, after the cheaper checks."""
    if cluster_address(address):
        ray_init(address)


def ray_init(address: str | None = None) -> None:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a local Ray. Either way Ray's own output stays
    in its log files (:class:`Console` brings back ours); the console says where they are."""
    import ray

    if ray.is_initialized():
        return
    addr = cluster_address(address)
    # ERROR: the driver's own Ray warnings (e.g. that token authentication is on) are Ray's business, not the user's
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if addr:
        join_cluster(addr, quiet)
        print(f"[ray] joined the Ray cluster at {addr}; Ray's own logs stay on the cluster (`ray logs`, the "
              "dashboard)", flush=True)
    else:  # the embedded default: a local Ray on this machine, with its dashboard on a free loopback port: Ray
        # Train's PlacementGroupCleaner asks the State API (served by the dashboard) once a second whether the run's
        # controller lives, and without it logs "Failed to query Ray Train Controller actor state" every time
        from pipeline.platform.services import free_port

        # one machine has no node to preempt: no PreemptionWatcher actor per run (one Python process fewer each)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        ctx = ray.init(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(), **quiet)
        logs = Path(getattr(ctx, "address_info", {}).get("session_dir", "/tmp/ray/session_latest")) / "logs"
        print(f"[ray] started a local Ray; its own logs: {logs}", flush=True)


def begin_tracking(job: JobConfig, run_name: str, where: str, *, source: str = "oat run",
                   tags: dict[str, str] | None = None) -> RunInfo | None:
    """The MLflow run of a Ray run, begun by its driver before Ray starts anything (None: tracking off)."""
    if not job.tracking.enabled:
        return None
    job.tracking.uri = tracking.resolve_uri(job.tracking.uri)
    info = tracking.begin(job, where=f"ray:{where}/{run_name}", run_name=run_name, source=source, tags=tags)
    print(f"[tracking] MLflow run '{run_name}' ({'continues' if info.resumed else 'new'}, id "
          f"{info.run_id[:12]}) at {tracking.redact(info.uri)}", flush=True)
    return info


def fit_trainer(job: JobConfig, run_name: str, spath: str | None, fs: Any, info: RunInfo | None, label: str,
                callbacks: list[Any] | None = None) -> Any:
    """Build and fit the job's ``TorchTrainer``; returns Ray's ``Result`` (raises the run's error)."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # Ray Train patches the workers' print() to also log each line at INFO (to stderr and its own files): every line
    # our workers print would reach Ray's logs twice, once on each stream. Ray Train hands this to the workers.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    r = job.ray
    resources: dict[str, float] = {"CPU": float(r.cpus_per_worker)}
    if r.use_gpu:
        resources["GPU"] = float(r.gpus_per_worker)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"job": job.to_dict(), "label": label or job.name,
                           "tracking": info.to_dict() if info else None},
        scaling_config=ray.train.ScalingConfig(num_workers=r.num_workers, use_gpu=r.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=r.placement_strategy),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=spath, storage_filesystem=fs, callbacks=callbacks,
            failure_config=ray.train.FailureConfig(max_failures=r.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=r.checkpoints_to_keep)),
        torch_config=TorchConfig(backend="nccl" if r.use_gpu else "gloo"),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    return result


def run_job(job: JobConfig, *, name: str | None = None, storage_path: str | None = None,
            address: str | None = None, out: str | Path | None = None, label: str = "",
            source: str = "oat run", tags: dict[str, str] | None = None) -> RunResult:
    """Run ``job`` on Ray; returns where its checkpoints are and, with ``out``, a local copy of the run."""
    t0 = time.perf_counter()
    r = job.ray
    run_name = name or r.name or job.name
    where = storage_path or r.storage_path or "~/ray_results"
    spath, fs = storage_location(storage_path or r.storage_path)
    join_first(address)
    # before a local Ray starts: a bad URI or store fails here
    info = begin_tracking(job, run_name, where, source=source, tags=tags)
    ray_init(address)
    with Console():
        result = fit_trainer(job, run_name, spath, fs, info, label)
    ckpt = result.checkpoint
    local: Path | None = None
    if ckpt is not None and out is not None:
        local = Path(out).resolve()
        with ckpt.as_directory() as d:
            shutil.copytree(d, local, dirs_exist_ok=True)
    return RunResult(run_name, f"{where.rstrip('/')}/{run_name}", ckpt.path if ckpt is not None else None, local,
                     dict(result.metrics or {}), time.perf_counter() - t0, info)
