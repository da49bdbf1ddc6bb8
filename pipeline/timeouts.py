"""How long ``oat`` waits for each outside service before it gives up with one line: the one place they are set.

=====================  ==============================  =======  =============================================
service                environment variable            default  what it bounds
=====================  ==============================  =======  =============================================
Ray cluster            ``OAT_RAY_CONNECT_TIMEOUT_S``   30       joining a cluster (``--address``, RAY_ADDRESS)
MLflow server          ``OAT_MLFLOW_TIMEOUT_S``        20       each HTTP request to the tracking server
S3 endpoint            ``OAT_S3_CONNECT_TIMEOUT_S``    5        opening a connection (reads: 60 s, 3 tries)
Ray job API            ``OAT_JOB_API_TIMEOUT_S``       5        the first request to the dashboard
=====================  ==============================  =======  =============================================

A value is seconds (a positive number); ``MLFLOW_HTTP_REQUEST_TIMEOUT``, when set, is MLflow's own and wins. A bad
value is refused by name, so a typo in a deployment's environment does not turn into an infinite wait. Waiting
longer than the default is for slow links (a cluster across a VPN); tests set a few seconds. Each refusal names the
address and what to check (``docs/cluster.md``).
"""

from __future__ import annotations

import math
import os

__all__ = ["TIMEOUTS", "timeout_s"]

# service -> (environment variable, default seconds)
TIMEOUTS: dict[str, tuple[str, float]] = {
    "ray": ("OAT_RAY_CONNECT_TIMEOUT_S", 30.0),  # a loaded head can take 10-20 s to answer a new driver
    "mlflow": ("OAT_MLFLOW_TIMEOUT_S", 20.0),
    "s3": ("OAT_S3_CONNECT_TIMEOUT_S", 5.0),
    "job_api": ("OAT_JOB_API_TIMEOUT_S", 5.0),
}


def timeout_s(service: str) -> float:
    """Seconds to wait for ``service`` (a key of :data:`TIMEOUTS`): its environment variable, else the default."""
    var, default = TIMEOUTS[service]
    raw = os.environ.get(var, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{var}={raw!r}: expected a positive number of seconds (default {default:g})")
    return value
