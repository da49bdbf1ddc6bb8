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
.venv/bin/python -m pytest "$@"
