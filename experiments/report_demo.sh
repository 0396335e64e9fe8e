#!/usr/bin/env bash
# A real `mlr-jax report` on a 2-core CPU in about half an hour: both agents (MLR and the
# Baseline) on the toy continuous-control task (3 seeds each, evaluated every 250 steps, so
# there are sample-efficiency curves) and on two Atari games at the smoke preset (2 seeds
# each: a few hundred steps, so those scores only show the machinery). Then the report, with
# every table, figure and scores.csv, into RESULTS. The runs are small; see
# benchmarks/report_demo/README.md for what they do and do not show.
# Usage: bash experiments/report_demo.sh [OUTDIR=runs/report_demo] [RESULTS=benchmarks/report_demo]
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-runs/report_demo}; RESULTS=${2:-benchmarks/report_demo}
mkdir -p "$OUTDIR/logs"
train() {  # one run, its console output in OUTDIR/logs, its wall time on stdout
  local log="$OUTDIR/logs/$(echo "$*" | tr -s ' =-' '_').log" start=$SECONDS
  .venv/bin/mlr-jax train "$@" --outdir "$OUTDIR" --no-progress > "$log" 2>&1
  echo "[report_demo] $* ($((SECONDS - start)) s): $(grep 'final evaluation' "$log" | cut -c1-60)"
}
for aux in mlr none; do
  for seed in 1 2 3; do
    train dmc --task toy_reach --preset toy --aux "$aux" --seed "$seed" run.eval_every=250
  done
  for game in pong boxing; do
    for seed in 1 2; do
      train atari --game "$game" --preset smoke --aux "$aux" --seed "$seed"
    done
  done
done
.venv/bin/mlr-jax report "$OUTDIR" --compare mlr,none --out "$RESULTS"
