#!/usr/bin/env bash
# Set up mlr-jax on a fresh Debian machine (run as root or with sudo available):
# Debian GL packages for DMC pixel rendering, a virtual environment in .venv,
# the requirements and the package itself (editable). Idempotent.
#   --bench       also install the PyTorch comparison (benchmarks/requirements-torch.txt),
#                 which the benchmark and its equivalence tests need.
#   --jax=KIND    the JAX build: cpu (default, what requirements.txt installs), cuda13
#                 (NVIDIA GPUs, driver >= 580; the CUDA of PyPI's torch, so --bench shares
#                 one set of NVIDIA libraries), cuda12 (older drivers; not with --bench: two
#                 cuDNN 9 builds would load under one name) or tpu (Cloud TPU VMs, every
#                 host of a pod slice); installed at the version requirements.txt resolved,
#                 in one pip resolution with the PyTorch comparison, then `pip check`ed.
#                 scripts/check_gpu_install.py checks that resolution without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_BENCH=0
JAX_KIND=cpu
for arg in "$@"; do
  case "$arg" in
    --bench) WITH_BENCH=1 ;;
    --jax=cpu|--jax=cuda12|--jax=cuda13|--jax=tpu) JAX_KIND="${arg#--jax=}" ;;
    *) echo "setup.sh: unknown option '$arg' (known: --bench, --jax=cpu|cuda12|cuda13|tpu)" >&2; exit 2 ;;
  esac
done
if [ "$JAX_KIND" = cuda12 ] && [ "$WITH_BENCH" = 1 ]; then
  echo "setup.sh: --jax=cuda12 with --bench would load two CUDA stacks in one process: PyPI's" \
       "torch (benchmarks/requirements-torch.txt) is built for CUDA 13 and brings" \
       "nvidia-cudnn-cu13, jax[cuda12] brings nvidia-cudnn-cu12, both libcudnn.so.9. Use" \
       "--jax=cuda13 (NVIDIA driver >= 580), or --jax=cuda12 without --bench" >&2
  exit 2
fi

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
EXTRA=()  # the accelerator build and the PyTorch comparison, resolved together
if [ "$JAX_KIND" != cpu ]; then
  JAX_VERSION="$(.venv/bin/python -c 'import jax; print(jax.__version__)')"
  EXTRA+=("jax[$JAX_KIND]==$JAX_VERSION")
fi
if [ "$WITH_BENCH" = 1 ]; then
  EXTRA+=(-r benchmarks/requirements-torch.txt)
fi
if [ "${#EXTRA[@]}" -gt 0 ]; then
  echo "[setup] installing ${EXTRA[*]} (one resolution)"
  .venv/bin/python -m pip install -q "${EXTRA[@]}"
fi
.venv/bin/python -m pip check
echo "[setup] done: activate with 'source .venv/bin/activate'"
