"""Proof of learning: both agents, with MLR and without (the Baseline), trained by the whole
loop (exploration schedule, replay, n-step targets, updates, targets, evaluation) on the toy
pixel tasks of :mod:`mlr_jax.envs.toy` with the ``toy`` preset, must end far above the random
policy. ``pytest -m learning`` runs just these.

Thresholds were set from measured runs on the 2-core CI machine (README "Proof of learning"
lists them) with a wide margin, and each test was checked to fail when learning is broken
(``experiments/mutations.py`` re-runs them with each mutation: actions shifted by one step,
rewards zeroed, the RL loss's online prediction detached).
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import OPTIMIZED_XLA_FLAGS
from mlr_jax import envs
from mlr_jax.config import make_config
from test_train_end_to_end import only_run_dir

pytestmark = pytest.mark.learning

# experiments/mutations.py sets this to run the test against a deliberately broken agent: the
# training run then starts through that script, which patches the mutation in first
MUTATION = os.environ.get("MLR_JAX_MUTATION")
TRAIN = ([sys.executable, str(pathlib.Path(__file__).parent.parent / "experiments" / "mutations.py"),
          "--apply", MUTATION, "--"] if MUTATION else [sys.executable, "-m", "mlr_jax"])

# (domain, task, aux, the final evaluation's mean must reach, random play's mean)
CASES = [
    ("atari", "toy_catch", "none", 0.3, -0.6),
    ("atari", "toy_catch", "mlr", 0.3, -0.6),
    ("dmc", "toy_reach", "none", -15.0, -38.0),
    ("dmc", "toy_reach", "mlr", -15.0, -38.0),
]


@pytest.mark.parametrize("domain,task,aux,threshold,random_mean", CASES,
                         ids=[f"{c[1]}-{c[2]}" for c in CASES])
def test_agent_learns_far_above_random(domain, task, aux, threshold, random_mean, tmp_path):
    cfg = make_config(domain, task, "toy", [f"aux={aux}"])
    random_mean_now = float(envs.random_policy_scores(cfg, 1000 if domain == "atari" else 200).mean())
    assert random_mean_now == pytest.approx(random_mean, abs=0.15 * abs(random_mean))
    # the command a user would type, compiled with XLA's default optimisation (thousands of
    # updates: optimised code pays for its longer compile here)
    flag = "--game" if domain == "atari" else "--task"
    proc = subprocess.run(
        [*TRAIN, "train", domain, flag, task, "--preset", "toy",
         "--aux", aux, "--outdir", str(tmp_path), "--no-progress"],
        env=dict(os.environ, XLA_FLAGS=OPTIMIZED_XLA_FLAGS), capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    final = json.loads((only_run_dir(tmp_path) / "final_eval.json").read_text())["mean"]
    print(f"{task} {aux}: final evaluation {final:.2f} (random {random_mean_now:.2f})")
    assert final >= threshold, (f"{task} {aux}: final evaluation {final:.2f} < {threshold} "
                                f"(random {random_mean_now:.2f})")
