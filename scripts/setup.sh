#!/usr/bin/env bash
# Set up mlr-jax on a fresh Debian machine (run as root or with sudo available):
# Debian GL packages for DMC pixel rendering, a virtual environment in .venv,
# the requirements and the package itself (editable). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
GL_PACKAGES="libegl1 libgl1-mesa-dri libosmesa6"
if ! dpkg -s $GL_PACKAGES >/dev/null 2>&1; then
  echo "[setup] installing Debian GL packages: $GL_PACKAGES"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $GL_PACKAGES >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
echo "[setup] installing requirements"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip install -q --no-deps -e .
echo "[setup] done: activate with 'source .venv/bin/activate'"
