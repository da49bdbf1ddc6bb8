#!/usr/bin/env bash
# Idempotent set-up: the system libraries FFCV needs, then .venv with the project and its dependencies.
# A second run finishes in seconds (it only checks what is already there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${OAT_VENV:-.venv}

stamp_of() {  # what the installed environment must match
  cat pyproject.toml infra/requirements-torch.txt infra/requirements-ffcv.txt infra/ffcv-build-constraints.txt \
    | sha256sum | cut -c1-16
}

# --- system packages: for FFCV libjpeg-turbo and OpenCV core/imgproc (headers to build, libraries to run);
#     for the tests, headless Chromium (it renders the MLflow UI) and a font for its text ---
missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
[ -f /usr/include/turbojpeg.h ] || missing+=(libturbojpeg0-dev)
[ -f /usr/include/opencv4/opencv2/core.hpp ] || missing+=(libopencv-core-dev)
[ -f /usr/include/opencv4/opencv2/imgproc.hpp ] || missing+=(libopencv-imgproc-dev)
if [ -z "${OAT_NO_BROWSER:-}" ]; then
  command -v chromium >/dev/null 2>&1 || missing+=(chromium)
  [ -d /usr/share/fonts/truetype/dejavu ] || missing+=(fonts-dejavu-core)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] installing system packages: ${missing[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"
  else
    echo "[setup] error: the pipeline needs these Debian packages and this user cannot install them:" >&2
    echo "          sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade "pip>=25.3"  # --build-constraint
fi

want=$(stamp_of)
have=$(cat "$VENV/.oat-setup-stamp" 2>/dev/null || true)
if [ "$want" != "$have" ]; then
  echo "[setup] installing torch (from the local wheel mirror), FFCV and the project"
  # torch/torchvision first and pinned, so that nothing else pulls a different build.
  "$VENV/bin/python" -m pip install -q -r infra/requirements-torch.txt
  # FFCV builds from source against the shim in infra/ffcv-shim (OpenCV core + imgproc only); pip caches
  # the built wheel, so a rebuilt venv reinstalls it in seconds.
  PKG_CONFIG_PATH="$PWD/infra/ffcv-shim/pkgconfig" CPPFLAGS="-I$PWD/infra/ffcv-shim/include" \
    "$VENV/bin/python" -m pip install -q --build-constraint infra/ffcv-build-constraints.txt \
    -r infra/requirements-ffcv.txt
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$VENV/.oat-setup-stamp"
  echo "[setup] done"
else
  echo "[setup] $VENV is up to date"
fi
