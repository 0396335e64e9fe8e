#!/usr/bin/env bash
# Both agents, with MLR and without (the Baseline), on one real task per domain at the `cpu`
# preset's reduced sizes: Atari road_runner (15k agent steps) and DMC cartpole_swingup (100k
# environment steps, the DMControl-100k budget), 30-100 minutes per run alone on a 2-core CPU,
# JOBS runs at a time. Then experiments/plot_learning.py measures the random policy on each
# task and writes the curves, metrics and a summary to RESULTS. Not the paper's setting: see
# benchmarks/learning/README.md. Keep JOBS=1 unless there are cores to spare: two runs on 2
# cores each ran about 5x slower than alone (the DMC Baseline: 2 instead of 10 updates/s).
# Usage: bash experiments/cpu_learning.sh [OUTDIR=runs/cpu_learning] [RESULTS=benchmarks/learning] [JOBS=1] [extra train args]
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-runs/cpu_learning}; RESULTS=${2:-benchmarks/learning}; JOBS=${3:-1}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$OUTDIR/logs"
# longest first, so that parallel workers finish close together
RUNS=("atari --game road_runner --aux mlr" "dmc --task cartpole_swingup --aux mlr"
      "dmc --task cartpole_swingup --aux none" "atari --game road_runner --aux none")
for run in "${RUNS[@]}"; do echo "$run"; done | xargs -P "$JOBS" -I{} bash -c \
  'log="$1/logs/$(echo "$2" | tr -s " -" "_").log"; echo "[cpu_learning] $2 -> $log";
   .venv/bin/mlr-jax train $2 --preset cpu --seed 1 --outdir "$1" --no-progress "${@:3}" > "$log" 2>&1
   echo "[cpu_learning] finished: $2 ($(tail -n 1 "$log"))"' _ "$OUTDIR" {} "$@"
.venv/bin/python experiments/plot_learning.py "$OUTDIR" "$RESULTS"
