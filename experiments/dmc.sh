#!/usr/bin/env bash
# DMControl-100k and -500k: the paper's six tasks, MLR and Baseline, SEEDS seeds each, as one
# restartable sweep (rerun the same command to continue it). Usage:
#   bash experiments/dmc.sh [BUDGET=100k] [SEEDS=10] [OUTDIR=runs/dmc<BUDGET>] [mlr-jax sweep options...]
set -euo pipefail
BUDGET=${1:-100k}; SEEDS=${2:-10}; OUTDIR=${3:-runs/dmc$BUDGET}; shift $(( $# < 3 ? $# : 3 ))
.venv/bin/mlr-jax sweep dmc --tasks all --budget "$BUDGET" --aux mlr,none \
  --seeds "0-$((SEEDS - 1))" --outdir "$OUTDIR" --no-progress "$@"
