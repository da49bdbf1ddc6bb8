#!/usr/bin/env bash
# Idempotent set-up: creates .venv with the project and its dependencies.
# A second run finishes in seconds (it only checks what is already there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${OAT_VENV:-.venv}

stamp_of() {  # what the installed environment must match
  cat pyproject.toml infra/requirements-torch.txt | sha256sum | cut -c1-16
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=24" 
fi

want=$(stamp_of)
have=$(cat "$VENV/.oat-setup-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[setup] installing torch (from the local wheel mirror) and the project"
  # torch/torchvision first and pinned, so that nothing else pulls a different build.
  "$VENV/bin/python" -m pip install -q -r infra/requirements-torch.txt
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$VENV/.oat-setup-stamp"
  echo "[setup] done"
else
  echo "[setup] $VENV is up to date"
fi
