"""Proof of learning: both agents, with MLR and without (the Baseline), trained by the whole
loop (exploration schedule, replay, n-step targets, updates, targets, evaluation) on the toy
pixel tasks of :mod:`mlr_jax.envs.toy` with the ``toy`` preset, must end far above the random
policy. ``pytest -m learning`` runs just these.

Thresholds were set from measured runs on the 2-core CI machine (README "Proof of learning"
lists them) with a wide margin, and each test was checked to fail when learning is broken
(actions shifted by one step in the batch, rewards zeroed, the target network's output used
with gradients flowing the wrong way).
"""
import pytest

from mlr_jax import envs, loop
from mlr_jax.config import make_config

pytestmark = pytest.mark.learning

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
    cfg = make_config(domain, task, "toy", [f"aux={aux}", f"run.outdir={tmp_path}",
                                            "run.progress=false"])
    random_mean_now = float(envs.random_policy_scores(cfg, 1000 if domain == "atari" else 200).mean())
    assert random_mean_now == pytest.approx(random_mean, abs=0.15 * abs(random_mean))
    result = loop.train(cfg, log=lambda *_: None)
    final = result.final_eval["mean"]
    print(f"{task} {aux}: final evaluation {final:.2f} (random {random_mean_now:.2f})")
    assert final >= threshold, (f"{task} {aux}: final evaluation {final:.2f} < {threshold} "
                                f"(random {random_mean_now:.2f})")
