#!/usr/bin/env bash
# The GPU measurements of the benchmark, prepared to run as ONE command on a lent GPU machine
# (no network there: it uses the machine's own jax/flax/optax/chex/torch and this checkout on
# PYTHONPATH; envpool is optional, its absence is recorded in each JSON).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]          # OUTDIR defaults to $OUT, else benchmarks/results
#   PRESET=smoke DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/dry   # a dry run on a CPU
#
# Paper-size updates, each against the PyTorch port on the same GPU:
#   Atari MLR fp32, Atari MLR bf16 (JAX only: the port is fp32), Atari Baseline (aux=none),
#   Atari SPR (aux=spr), DMC MLR; and 8 seeds in one seed-batched step, Atari MLR bf16 (issue 13).
# Targets (issue 5 and the brief): JAX >= 3x torch; bf16 Atari >= 35% of the bf16 peak; on an
# H100 Atari MLR <= 9 ms (bf16 <= 5 ms), Baseline <= 2 ms, DMC <= 30 ms per update; with 8
# seeds per step (bf16) <= 3.5 ms per seed-update (jax.ms_per_seed_update in the JSON).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/results}}"
PRESET="${PRESET:-paper}"
DEVICE="${DEVICE:-gpu}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: JAX must not take 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUTDIR"

"$PY" -c "import jax, flax, optax, chex; print('jax', jax.__version__, jax.devices())" || exit 1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

failed=0
bench() {
  echo "== mlr-jax bench $*"
  timeout "${STEP_TIMEOUT:-240}" "$PY" -m mlr_jax bench --device "$DEVICE" --preset "$PRESET" \
    --outdir "$OUTDIR" "$@" || { echo "FAILED ($?): $*"; failed=1; }
}
# a Perfetto trace of two updates each for the fp32 MLR runs (summary: jax.profile.top_ops
# in the JSON); the trace file itself is copied next to the JSONs when under 15 MB
bench --domain atari --frameworks jax,torch --repeats 20 --warmup 3 --profile /tmp/mlr_profile_atari
bench --domain atari --frameworks jax --precision bf16 --repeats 20 --warmup 3
bench --domain atari --frameworks jax,torch --repeats 20 --warmup 3 aux=none
bench --domain atari --frameworks jax,torch --repeats 20 --warmup 3 aux=spr
bench --domain dmc --frameworks jax,torch --repeats 10 --warmup 2 --profile /tmp/mlr_profile_dmc
bench --domain atari --frameworks jax --precision bf16 --seeds 8 --repeats 20 --warmup 3
for domain in atari dmc; do
  trace=$(ls /tmp/mlr_profile_$domain/plugins/profile/*/perfetto_trace.json.gz 2>/dev/null | tail -1)
  if [ -n "$trace" ] && [ "$(stat -c %s "$trace")" -lt 15000000 ]; then
    cp "$trace" "$OUTDIR/${domain}_${PRESET}_${DEVICE}_perfetto_trace.json.gz"
  fi
done
ls -l "$OUTDIR"
exit $failed
