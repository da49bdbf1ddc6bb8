"""``oat stack up | down | status | env``: the local stack on this machine, started by pid and stopped by pid.

* **S3** (SeaweedFS ``weed mini``) with the buckets ``mlflow``, ``ray`` and ``data``; its keys come from the
  env file (created on first ``up`` with fresh random keys, mode 0600, never committed).
* **MLflow** tracking server: SQLite backend, ``--artifacts-destination s3://mlflow/artifacts`` (proxied
  artifacts: clients need no S3 keys; the keys live in the server's environment only).
* **Ray** head on 127.0.0.2 with token authentication.

Data in ``ROOT/data``, logs in ``ROOT/logs``, pids and the Ray token in ``ROOT/run``. ``up`` is idempotent
(a healthy service is left alone); ``down`` stops what ``up`` started and nothing else.

The production equivalents (``infra/README.md``): PostgreSQL for the backend store, MinIO or AWS S3 for the
artifacts, a KubeRay ``RayCluster``; the client side (``MLFLOW_TRACKING_URI``, ``RAY_ADDRESS``) is the same.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.platform.services import MlflowServer, RayCluster, S3Server, StackError, pid_alive, port_open, stop_group

DEFAULTS = {"OAT_S3_PORT": "8333", "OAT_MLFLOW_PORT": "5000", "OAT_RAY_PORT": "6379",
            "OAT_RAY_DASHBOARD_PORT": "8265", "OAT_RAY_CPUS": "2"}
SECRET_KEYS = ("OAT_S3_SECRET_KEY",)
BUCKETS = ("mlflow", "ray", "data")


def default_root() -> Path:
    return Path(os.environ.get("OAT_STACK_DIR", ".oat-stack")).resolve()


def default_env_file(root: Path) -> Path:
    if os.environ.get("OAT_STACK_ENV"):
        return Path(os.environ["OAT_STACK_ENV"])
    return Path("infra/local/stack.env") if Path("infra/local").is_dir() else root / "stack.env"


def read_env_file(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        if not sep:
            raise StackError(f"{path}:{n}: expected KEY=VALUE")
        out[key.strip()] = value.strip().strip("'\"")
    return out


def ensure_env_file(path: Path) -> dict[str, str]:
    """The stack's settings; a missing file is created with fresh random S3 keys (mode 0600)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = ["# The local stack's settings (oat stack up). Not committed: it holds the S3 keys.",
                 f"OAT_S3_ACCESS_KEY=oat{secrets.token_hex(6)}", f"OAT_S3_SECRET_KEY={secrets.token_urlsafe(24)}",
                 *(f"{k}={v}" for k, v in DEFAULTS.items())]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
    elif path.stat().st_mode & 0o077:
        print(f"[stack] warning: {path} holds secrets and is readable by others: chmod 600 {path}", file=sys.stderr)
    env = {**DEFAULTS, **read_env_file(path)}
    for key in ("OAT_S3_ACCESS_KEY", "OAT_S3_SECRET_KEY"):
        if not env.get(key):
            raise StackError(f"{path} lacks {key}")
    return env


@dataclass
class LocalStack:
    root: Path
    env_file: Path

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.data, self.logs, self.run = self.root / "data", self.root / "logs", self.root / "run"

    @property
    def settings(self) -> dict[str, str]:
        return ensure_env_file(self.env_file)

    def _port(self, key: str) -> int:
        try:
            return int(self.settings[key])
        except ValueError:
            raise StackError(f"{self.env_file}: {key} must be a port number, not {self.settings[key]!r}") from None

    # ---------------------------------------------------------------- the three services
    def s3(self) -> S3Server:
        s = self.settings
        return S3Server(self.data / "s3", port=self._port("OAT_S3_PORT"), buckets=BUCKETS,
                        access_key=s["OAT_S3_ACCESS_KEY"], secret_key=s["OAT_S3_SECRET_KEY"], log=self.logs / "s3.log")

    def mlflow(self) -> MlflowServer:
        return MlflowServer(self.data / "mlflow", self.s3().env(), port=self._port("OAT_MLFLOW_PORT"),
                            log=self.logs / "mlflow.log")

    def ray(self) -> RayCluster:
        return RayCluster(self.run / "ray", nodes=1, cpus_per_node=int(self.settings["OAT_RAY_CPUS"]),
                          port=self._port("OAT_RAY_PORT"), dashboard_port=self._port("OAT_RAY_DASHBOARD_PORT"))

    def _pid(self, name: str) -> int | None:
        try:
            pid = int((self.run / f"{name}.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def health(self) -> dict[str, tuple[str, int | None, str]]:
        """service -> (state, pid, where)"""
        s3, ml, ray = self.s3(), self.mlflow(), self.ray()
        out: dict[str, tuple[str, int | None, str]] = {}
        pid = self._pid("s3")
        up = port_open(s3.host, s3.port)
        out["s3"] = ("running" if pid and up else "starting/unhealthy" if pid else "stopped", pid, s3.endpoint)
        pid = self._pid("mlflow")
        ok = ml.healthy()
        out["mlflow"] = ("running" if pid and ok else "starting/unhealthy" if pid else "stopped", pid, ml.uri)
        pids = [p.pid for p in ray.processes()] if (self.run / "ray").is_dir() else []
        ok = port_open("127.0.0.2", ray.port)
        out["ray"] = ("running" if pids and ok else "unhealthy" if pids else "stopped", min(pids) if pids else None,
                      f"{ray.address} (dashboard {ray.dashboard})")
        return out

    def up(self) -> None:
        state = self.health()
        for name in ("s3", "mlflow", "ray"):
            if state[name][0] == "running":
                print(f"[stack] {name:<7} already running (pid {state[name][1]})")
            else:
                print(f"[stack] {name:<7} started {self.start_service(name)}", flush=True)
        self.print_status()
        print("\nClients need (eval \"$(oat stack env)\"):\n" + self.client_env())

    def start_service(self, name: str) -> str:
        """Start one service (stopping a stale one first); returns where it listens."""
        for d in (self.data, self.logs, self.run):
            d.mkdir(parents=True, exist_ok=True)
        self.stop_service(name)
        if name == "ray":
            ray = self.ray().start()
            return f"on {ray.address}, dashboard {ray.dashboard}"
        server = self.s3().start() if name == "s3" else self.mlflow().start()
        assert server.proc is not None
        (self.run / f"{name}.pid").write_text(f"{server.proc.pid}\n")
        return f"(pid {server.proc.pid}) on {server.endpoint if name == 's3' else server.uri}"  # type: ignore[union-attr]

    def stop_service(self, name: str) -> str:
        """Stop one service that ``up`` started (by pid, or Ray's processes under our folder)."""
        if name == "ray":
            if not (self.run / "ray").is_dir():
                return "was not running"
            procs = self.ray().processes()
            self.ray().stop()
            return f"stopped ({len(procs)} processes)" if procs else "was not running"
        pid = self._pid(name)
        (self.run / f"{name}.pid").unlink(missing_ok=True)
        if pid is None:
            return "was not running"
        t0 = time.monotonic()
        stop_group(pid, signal.SIGINT if name == "s3" else signal.SIGTERM)  # SIGINT: weed stops in seconds
        return f"stopped (pid {pid}, {time.monotonic() - t0:.1f} s)"

    def down(self) -> None:
        for name in ("ray", "mlflow", "s3"):
            print(f"[stack] {name:<7} {self.stop_service(name)}", flush=True)

    def print_status(self) -> bool:
        state = self.health()
        print(f"{'service':<8} {'state':<19} {'pid':>8}  where")
        for name, (st, pid, where) in state.items():
            print(f"{name:<8} {st:<19} {pid or '-':>8}  {where}")
        print(f"data: {self.data}   logs: {self.logs}   settings: {self.env_file}")
        return all(st == "running" for st, _, _ in state.values())

    def client_env(self) -> str:
        ray = self.ray()
        return "\n".join([f"export MLFLOW_TRACKING_URI={self.mlflow().uri}", f"export RAY_ADDRESS={ray.address}",
                          "export RAY_AUTH_MODE=token", f"export RAY_AUTH_TOKEN_PATH={ray.root / 'auth_token'}"])


def main(action: str, root: str | None = None, env_file: str | None = None) -> int:
    r = Path(root).resolve() if root else default_root()
    stack = LocalStack(r, Path(env_file) if env_file else default_env_file(r))
    if action == "up":
        stack.up()
        return 0
    if action == "down":
        stack.down()
        return 0
    if action == "env":
        print(stack.client_env())
        return 0
    return 0 if stack.print_status() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "status"))
