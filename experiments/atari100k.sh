#!/usr/bin/env bash
# Atari-100k: the paper's 26 games, MLR and Baseline, SEEDS seeds each, as one restartable
# sweep (rerun the same command to continue it). Usage:
#   bash experiments/atari100k.sh [SEEDS=10] [OUTDIR=runs/atari100k] [mlr-jax sweep options...]
# e.g. --shard 0/4 (a quarter of the grid), --group-size 5, --distributed, KEY=VALUE overrides.
set -euo pipefail
SEEDS=${1:-10}; OUTDIR=${2:-runs/atari100k}; shift $(( $# < 2 ? $# : 2 ))
.venv/bin/mlr-jax sweep atari --games all --aux mlr,none --seeds "0-$((SEEDS - 1))" \
  --outdir "$OUTDIR" --no-progress "$@"
