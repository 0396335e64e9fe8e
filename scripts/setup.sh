#!/usr/bin/env bash
# Set up mlr-jax on a fresh Debian machine (run as root or with sudo available):
# Debian GL packages for DMC pixel rendering, a virtual environment in .venv,
# the requirements and the package itself (editable). Idempotent.
#   --bench       also install the PyTorch comparison (benchmarks/requirements-torch.txt),
#                 which the benchmark and its equivalence tests need.
#   --jax=KIND    the JAX build: cpu (default, what requirements.txt installs), cuda12
#                 (NVIDIA GPUs) or tpu (Cloud TPU VMs, every host of a pod slice); the
#                 accelerator builds are installed at the version requirements.txt resolved.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BENCH=0
JAX_KIND=cpu
for arg in "$@"; do
  case "$arg" in
    --bench) WITH_BENCH=1 ;;
    --jax=cpu|--jax=cuda12|--jax=tpu) JAX_KIND="${arg#--jax=}" ;;
    *) echo "setup.sh: unknown option '$arg' (known: --bench, --jax=cpu|cuda12|tpu)" >&2; exit 2 ;;
  esac
done

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
if [ "$JAX_KIND" != cpu ]; then
  JAX_VERSION="$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
  echo "[setup] installing jax[$JAX_KIND]==$JAX_VERSION"
  .venv/bin/python -m pip install -q "jax[$JAX_KIND]==$JAX_VERSION"
fi
if [ "$WITH_BENCH" = 1 ]; then
  echo "[setup] installing the PyTorch comparison (benchmarks/requirements-torch.txt)"
  .venv/bin/python -m pip install -q -r benchmarks/requirements-torch.txt
fi
echo "[setup] done: activate with 'source .venv/bin/activate'"
