#!/usr/bin/env bash
# Issue 9's GPU benchmark on a machine with one CUDA GPU: set-up (idempotent), then benchmarks/gpu.py.
# Writes benchmarks/results/gpu.json. About 6 minutes on an H100-class GPU with the defaults
# (compiling the OAT variants takes most of it). Arguments go to benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "benchmarks/gpu.sh: no NVIDIA GPU here (nvidia-smi not found)" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
[ -x .venv/bin/python ] || bash infra/setup.sh
exec .venv/bin/python -m benchmarks.gpu "$@"
