#!/usr/bin/env bash
# The local stack (S3, MLflow, Ray head) on this machine: up | down | status | env.
# Settings and keys: infra/local/stack.env (created on first `up`, never committed; see stack.env.example).
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x .venv/bin/oat ] || bash infra/setup.sh
exec .venv/bin/oat stack "${1:-status}" "${@:2}"
