"""What every benchmark records: the machine, the versions, the config; medians of repeated timings."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    """CPU count, model name, platform and the versions of what the numbers depend on."""
    info: dict[str, Any] = {"cpus": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
                            "platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    threads = torch.get_num_threads()
    for mod in ("ray", "mlflow", "ffcv", "torchvision"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is recorded as absent
            info[mod] = None
    torch.set_num_threads(threads)  # importing FFCV sets it to 1
    return info


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: torch.device | str = "cpu") -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` calls (synchronised on CUDA)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def matmul_rate(n: int = 1024, repeats: int = 20, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> float:
    """GFLOP/s of an n×n matrix multiply in ``dtype`` (median of ``repeats``)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / median(timed(lambda: a @ b, repeats, warmup=3, device=device)) / 1e9


def write_result(name: str, body: dict[str, Any], out: str | Path | None = None) -> Path:
    """``results/<name>.json`` with the date and the machine first."""
    path = Path(out) if out else RESULTS / f"{name}.json"
    doc = {"benchmark": name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), **body}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
