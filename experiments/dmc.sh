#!/usr/bin/env bash
# DMControl-100k and -500k: the paper's six tasks, MLR and Baseline, SEEDS seeds each.
# Usage: bash experiments/dmc.sh [BUDGET=100k] [SEEDS=10] [OUTDIR=runs/dmc<BUDGET>]
# Extra arguments after the three positional ones go to every `mlr-jax train` call.
set -euo pipefail
BUDGET=${1:-100k}; SEEDS=${2:-10}; OUTDIR=${3:-runs/dmc$BUDGET}; shift $(( $# < 3 ? $# : 3 ))
TASKS=$(.venv/bin/python -c "from mlr_jax.config import DMC_PAPER_TASKS; print(' '.join(DMC_PAPER_TASKS))")
for seed in $(seq 1 "$SEEDS"); do
  for task in $TASKS; do
    for aux in mlr none; do
      .venv/bin/mlr-jax train dmc --task "$task" --budget "$BUDGET" --aux "$aux" --seed "$seed" --outdir "$OUTDIR" --no-progress "$@"
    done
  done
done
.venv/bin/mlr-jax report "$OUTDIR" --compare mlr,none
