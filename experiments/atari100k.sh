#!/usr/bin/env bash
# Atari-100k: the paper's 26 games, MLR and Baseline, SEEDS seeds each, one run after another
# on the local accelerator. Usage: bash experiments/atari100k.sh [SEEDS=10] [OUTDIR=runs/atari100k]
# Extra arguments after the two positional ones go to every `mlr-jax train` call.
set -euo pipefail
SEEDS=${1:-10}; OUTDIR=${2:-runs/atari100k}; shift $(( $# < 2 ? $# : 2 ))
GAMES=$(.venv/bin/python -c "from mlr_jax.config import ATARI_GAMES; print(' '.join(ATARI_GAMES))")
for seed in $(seq 1 "$SEEDS"); do
  for game in $GAMES; do
    for aux in mlr none; do
      .venv/bin/mlr-jax train atari --game "$game" --aux "$aux" --seed "$seed" --outdir "$OUTDIR" --no-progress "$@"
    done
  done
done
.venv/bin/mlr-jax report "$OUTDIR" --compare mlr,none
