#!/usr/bin/env bash
# The accelerator check, prepared to run as ONE command on a lent GPU machine (about 15 minutes
# of device time in all, at most 10 a command; no network there: it uses the machine's own
# jax/flax/optax/chex/torch and this checkout on PYTHONPATH; envpool is optional, its absence
# is recorded in each JSON).
#
#   bash benchmarks/gpu_check.sh [OUTDIR]          # OUTDIR defaults to $OUT, else benchmarks/results
#   PRESET=smoke DEVICE=cpu bash benchmarks/gpu_check.sh /tmp/dry   # the same steps on a CPU
#
# Correctness first, then the timings, in priority order. Each step is one `mlr-jax bench`
# with a time limit (STEP_TIMEOUT, default 90 s) that writes its JSON as soon as it ends. No
# step starts once less than one step's limit is left of the script's budget (BUDGET, default
# 480 s), and a step whose JSON is already in OUTDIR is skipped: a second call fills in only
# what is missing. Estimated for one H100 (no GPU has run it yet): a step is a process start
# and imports (~5 s), compiling a paper-size update (20-40 s), 20 JAX and 20 torch updates of
# at most 0.2 s and the batch benchmark (~5 s), about 50 s; the nine take about 7.5 minutes.
#   1-2. parity: the JAX update against the PyTorch port on the same state, batch and random
#        draws, Atari MLR and DMC MLR, losses and gradient norms to float32 rounding;
#   3.   Atari MLR at the default run.precision=tf32 (TF32 matmuls and convolutions; torch's
#        TF32 switches on, as torch 1.7.1, the authors' pin, had them), JAX and torch, with a
#        Perfetto trace of two updates (and, as step 6, the envpool step time; the other
#        steps skip it);
#   4.   Atari MLR bf16 (JAX only: the port has no bf16);
#   5.   Atari Baseline (aux=none), JAX and torch;
#   6.   DMC MLR, JAX and torch, with a trace;
#   7.   8 Atari seeds in one seed-batched step, bf16;
#   8.   2 DMC seeds in one seed-batched step;
#   9.   Atari SPR (aux=spr), JAX and torch;
#   10.  the training loop's host work: LOOP_SEEDS (8) Atari seeds, LOOP_STEPS (100) agent
#        steps of no-op updates (bench --loop --host-only; run.sampler=auto: the device
#        sampler on an accelerator), host_ms_per_seed_step and the copies to the host;
#   11.  the whole training loop of the same group, real updates: agent steps per second.
# Targets (the brief): JAX >= 3x torch; on an H100 Atari MLR <= 9 ms (bf16 <= 5 ms), Baseline
# <= 2 ms, DMC <= 30 ms per update; 8 seeds per step (bf16) <= 3.5 ms per seed-update
# (jax.ms_per_seed_update in the JSON); host work outside envpool <= 0.2 ms per seed-step
# (issue 27).
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-benchmarks/results}}"
PRESET="${PRESET:-paper}"
DEVICE="${DEVICE:-gpu}"
STEP_TIMEOUT="${STEP_TIMEOUT:-90}"
BUDGET="${BUDGET:-480}"
REPEATS="${REPEATS:-20}"
LOOP_SEEDS="${LOOP_SEEDS:-8}"
LOOP_STEPS="${LOOP_STEPS:-100}"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# JAX and torch share the GPU in one process: JAX must not take 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUTDIR"

"$PY" -c "import jax, flax, optax, chex; print('jax', jax.__version__, jax.devices())" || exit 1
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" || true
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

failed=0
start=$SECONDS
# step NAME RECORD_GLOB BENCH_ARGS...: run `mlr-jax bench BENCH_ARGS` unless a record matching
# RECORD_GLOB is in OUTDIR or the budget is spent
step() {
  local name="$1" glob="$2"
  shift 2
  if compgen -G "$OUTDIR/$glob" >/dev/null; then
    echo "== $name: done before ($(basename "$(ls "$OUTDIR"/$glob | tail -1)"))"
    return
  fi
  if (( SECONDS - start + STEP_TIMEOUT > BUDGET )); then
    echo "== $name: not started ($((SECONDS - start)) of ${BUDGET} s used); run the script again"
    failed=1
    return
  fi
  echo "== $name: mlr-jax bench $*"
  local t0=$SECONDS
  timeout "$STEP_TIMEOUT" "$PY" -m mlr_jax bench --device "$DEVICE" --preset "$PRESET" \
    --outdir "$OUTDIR" "$@" || { echo "FAILED ($?): $name"; failed=1; }
  echo "== $name: $((SECONDS - t0)) s"
}
P="${PRESET}" D="${DEVICE}" HALF=$(( REPEATS / 2 > 0 ? REPEATS / 2 : 1 ))  # DMC: 2 updates a unit
step "parity atari" "parity_atari_${P}-mlr_${D}_*.json" --parity --domain atari
step "parity dmc" "parity_dmc_${P}_${D}_*.json" --parity --domain dmc
step "atari mlr tf32" "atari_${P}_${D}_tf32_*.json" --domain atari --frameworks jax,torch \
  --repeats "$REPEATS" --warmup 3 --profile /tmp/mlr_profile_atari
step "atari mlr bf16" "atari_${P}_${D}_bf16_*.json" --domain atari --frameworks jax \
  --precision bf16 --repeats "$REPEATS" --warmup 3 --envpool-steps 0
step "atari baseline" "atari_${P}-baseline_${D}_tf32_*.json" --domain atari --frameworks jax,torch \
  --repeats "$REPEATS" --warmup 3 --envpool-steps 0 aux=none
step "dmc mlr" "dmc_${P}_${D}_tf32_*.json" --domain dmc --frameworks jax,torch \
  --repeats "$HALF" --warmup 2 --profile /tmp/mlr_profile_dmc
step "atari 8 seeds bf16" "atari_${P}-s8_${D}_bf16_*.json" --domain atari --frameworks jax \
  --precision bf16 --seeds 8 --repeats "$REPEATS" --warmup 3 --envpool-steps 0
step "dmc 2 seeds" "dmc_${P}-s2_${D}_tf32_*.json" --domain dmc --frameworks jax --seeds 2 \
  --repeats "$HALF" --warmup 2 --envpool-steps 0
step "atari spr" "atari_${P}-spr_${D}_tf32_*.json" --domain atari --frameworks jax,torch \
  --repeats "$REPEATS" --warmup 3 --envpool-steps 0 aux=spr
step "atari loop host work" "loop_atari_${P}-s${LOOP_SEEDS}-host_${D}_*.json" --domain atari \
  --loop "$LOOP_STEPS" --seeds "$LOOP_SEEDS" --host-only
step "atari loop" "loop_atari_${P}-s${LOOP_SEEDS}_${D}_*.json" --domain atari \
  --loop "$LOOP_STEPS" --seeds "$LOOP_SEEDS"
for domain in atari dmc; do
  trace=$(ls /tmp/mlr_profile_$domain/plugins/profile/*/perfetto_trace.json.gz 2>/dev/null | tail -1)
  if [ -n "$trace" ] && [ "$(stat -c %s "$trace")" -lt 15000000 ]; then
    cp "$trace" "$OUTDIR/${domain}_${PRESET}_${DEVICE}_perfetto_trace.json.gz"
  fi
done
echo "== gpu_check: $((SECONDS - start)) s"
ls -l "$OUTDIR"
exit $failed
