#!/usr/bin/env bash
# The test command: set-up (idempotent), then lint, type-check and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash infra/setup.sh
export MPLBACKEND=Agg
echo "[test] ruff"
.venv/bin/ruff check pipeline tests benchmarks
echo "[test] mypy pipeline"
.venv/bin/mypy pipeline
echo "[test] pytest"
# two processes (pytest-xdist), a test file per process at a time: the suite waits on Ray, MLflow and S3 start-ups
# as much as it computes. OAT_TEST_WORKERS=0 runs it in one process.
.venv/bin/python -m pytest -n "${OAT_TEST_WORKERS:-2}" --dist loadfile "$@"
