"""Seeds as a batch axis: a seed trained in a group of seeds trains as it would alone.

``mlr-jax train --seeds`` stacks the seeds' states and updates them with one vmapped step
(:func:`mlr_jax.loop.train_group`). Here seed 2 of a group of two (one seed per CPU device)
is compared with seed 2 trained alone by ``mlr-jax train --seed 2`` in a process with one
device, on the real envpool environments of the smoke preset, from the first step past the
first updates. (Alone on two devices its batch would be split: the same update up to float
rounding, tests/agents, but a greedy action at a near-tie of two Q-values could then flip.)
Compared:

- the environment trajectory: every stored frame, action, reward and flag of the final
  replay (Atari: equal, with epsilon kept at 1, see below; DMC: actions agree to float32
  rounding of the policy network, so the frames may differ by a rendering level where the
  physics moved a hair);
- the batches: the same host sampler draws (equal generator states at the end) and, for
  Atari, priorities written back to the same transitions (the sampled indices are equal;
  their values, per-sample losses of later updates, within :data:`PRIORITY_RTOL`);
- the update metrics of every logged window (``train/*`` in metrics.jsonl) to
  :data:`GROUP_RTOL`.

A group resumes as a whole from any member's directory.

Atari's greedy actions are not compared along a trajectory: right after an update the two
runs' parameters differ at the scale of the learning rate (Adam turns a rounding-level
gradient difference into up to ``lr``, tests/tolerances.py) while an early C51 head's action
values differ by about as little, so a greedy action flipped 8 updates in (measured) and the
prioritised replay then samples the new transition at once. Acting is compared instead on the
same states: :func:`test_acting_for_a_group_is_acting_for_each_seed`.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlr_jax import checkpoint, cli, envs, loop, parallel
from mlr_jax.config import make_config
from mlr_jax.domains import make_domain
from mlr_jax.logging import read_metrics
from conftest import FAST_COMPILE_FLAG

pytestmark = pytest.mark.slow

# vmap over the seeds may fuse or order a reduction differently from the lone step: a float32
# rounding difference (the first 10 updates' mean losses agreed to 4e-7 relative, measured).
# Each Adam step turns a rounding-level gradient difference into up to ``lr`` of parameter
# (tests/tolerances.py) and the differences compound: over 20-40 updates the Atari losses
# drifted up to 2.5e-3 apart (measured), so the runs stop 10 (Atari) or 20 (DMC) updates in.
# A wrong seed's batch, key or state moves the losses by percent.
GROUP_RTOL = 1e-3
# A priority is one sample's loss at one update's parameters, not a mean over a batch and over
# updates: after 10 updates they differed by up to 2.3% (measured, 20 of 2,000 entries).
PRIORITY_RTOL = 0.05

# (domain, flag, name, overrides, agent steps). Atari updates from agent step 200 on, with
# epsilon kept at 1 (see above), and trains the Baseline: SPR's BatchNorm over the smoke
# batch (4 windows of mostly uniform Pong frames) divides by near-zero variances, so its
# gradient norms drifted 1.5% apart by the 5th update while every loss agreed to 2e-6
# (measured; on random frames the same two steps agree to 2e-6 for 10 updates). DMC trains
# MLR, from agent step 100 (environment step 800) on, acting with the seed's policy.
CASES = [
    ("atari", "--game", "pong", ["steps=210", "--aux", "none", "eps_end=1.0"], 210),
    ("dmc", "--task", "cartpole_swingup", ["env_steps=960", "run.log_every=80"], 120),
    # the batches drawn on the devices (run.sampler=device): each seed's own key and replay copy
    ("atari", "--game", "pong", ["steps=210", "--aux", "none", "eps_end=1.0", "run.sampler=device"], 210),
    ("dmc", "--task", "cartpole_swingup", ["env_steps=960", "run.log_every=80", "run.sampler=device"], 120),
]


def train(tmp_path, domain, flag, name, overrides, seeds, one_device=False):
    """Train ``seeds`` together (in this process, 2 devices, or alone in a 1-device process);
    ``{seed: run directory}``."""
    out = tmp_path / seeds.replace(",", "_")
    argv = ["train", domain, flag, name, "--preset", "smoke", "--outdir", str(out),
            "--no-progress", "--seeds", seeds, "run.log_every=10", "run.eval_every=0",
            "run.checkpoint_every=0", "run.eval_episodes=1", "run.conv_impl=xla", *overrides]
    if one_device:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count=1 {FAST_COMPILE_FLAG}")
        subprocess.run([sys.executable, "-m", "mlr_jax", *argv], env=env, check=True,
                       stdout=subprocess.DEVNULL, timeout=900)
    else:
        assert cli.main(argv) == 0
    return {json.loads((run / "config.json").read_text())["run"]["seed"]: run
            for run in out.iterdir()}


def final_checkpoint(run):
    """The replay and loop state of the run's latest checkpoint."""
    cfg = loop.load_run_config(run)
    env = envs.make_env(cfg, 1, cfg.run.seed)
    target = jax.eval_shape(make_domain(cfg, env).agent.init, jax.random.PRNGKey(0))
    env.close()
    _, replay, loop_state, _ = checkpoint.restore(run / "checkpoints", target)
    return replay, loop_state


def train_rows(run):
    return [{k: v for k, v in row.items() if k.startswith("train/")} | {"step": row["step"]}
            for row in read_metrics(run / "metrics.jsonl") if any(k.startswith("train/") for k in row)]


@pytest.mark.parametrize("domain, flag, name, overrides, steps", CASES)
def test_a_seed_in_a_group_trains_as_it_would_alone(tmp_path, domain, flag, name, overrides, steps):
    group = train(tmp_path, domain, flag, name, overrides, "1,2")
    alone = train(tmp_path, domain, flag, name, overrides, "2", one_device=True)
    assert sorted(group) == [1, 2] and list(alone) == [2]
    members = json.loads((group[1] / "group.json").read_text())
    assert members["seeds"] == [1, 2] and members["runs"] == [group[1].name, group[2].name]
    assert not (alone[2] / "group.json").exists()

    (replay_g, loop_g), (replay_a, loop_a) = (final_checkpoint(r[2]) for r in (group, alone))
    assert loop_g["step"] == loop_a["step"] == steps
    assert loop_g["rng"] == loop_a["rng"]  # the same batches and random actions were drawn
    np.testing.assert_array_equal(loop_g["key"], loop_a["key"])
    ring_g = dict(jax.tree_util.tree_leaves_with_path(replay_g["ring"]))
    for path, want in jax.tree_util.tree_leaves_with_path(replay_a["ring"]):
        got, want, field = np.asarray(ring_g[path]), np.asarray(want), jax.tree_util.keystr(path)
        if domain == "dmc" and field == "['frames']":
            assert np.abs(got.astype(int) - want.astype(int)).mean() < 0.05, field
        elif domain == "dmc" and np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=field)
        else:
            np.testing.assert_array_equal(got, want, err_msg=field)
    if domain == "atari":
        got, want = np.asarray(replay_g["priority"]), np.asarray(replay_a["priority"])
        # new transitions enter with priority 1 (initial_priority): the same ones were updated
        np.testing.assert_array_equal(got == 1.0, want == 1.0)
        np.testing.assert_allclose(got, want, rtol=PRIORITY_RTOL, err_msg="priorities")

    rows_g, rows_a = train_rows(group[2]), train_rows(alone[2])
    assert len(rows_g) == len(rows_a) >= 1
    worst = 0.0
    for row_g, row_a in zip(rows_g, rows_a):
        assert row_g.keys() == row_a.keys()
        for k in row_a:
            np.testing.assert_allclose(row_g[k], row_a[k], rtol=GROUP_RTOL, atol=1e-6,
                                       err_msg=f"{k} at step {row_a['step']}")
            worst = max(worst, abs(row_g[k] - row_a[k]) / max(abs(row_a[k]), 1e-6))
    print(f"largest relative difference of a logged metric: {worst:.2e}")
    # the other seed trained on its own data
    assert train_rows(group[1])[-1] != rows_g[-1]

    if domain == "dmc":  # any member's directory resumes the whole group
        assert cli.main(["train", domain, "--resume", str(group[2]), "--no-progress",
                         "env_steps=1040"]) == 0
        for seed in (1, 2):
            final = json.loads((group[seed] / "final_eval.json").read_text())
            assert final["agent_steps"] == 130


@pytest.mark.parametrize("num_devices", [1, 2], ids=["2-seeds-on-1-device", "1-seed-per-device"])
@pytest.mark.parametrize("domain, name", [("atari", "toy_catch"), ("dmc", "toy_reach")])
def test_acting_for_a_group_is_acting_for_each_seed(domain, name, num_devices):
    """The group's one vmapped act (``Domain.explore``, greedy for Atari), its two seeds on one
    device or one per device, gives each seed the action its own state and key give alone
    (freshly initialised states, different observations)."""
    cfg = make_config(domain, name, "toy")
    env = envs.make_env(cfg, 1, 0)
    layout = parallel.layout(2, num_devices)
    group = make_domain(cfg, env, layout)
    alone = make_domain(cfg, env)
    keys = np.stack([np.asarray(jax.random.PRNGKey(s)) for s in (3, 4)])
    state = layout.stacked(group.agent.init, keys, group.axes)
    obs = np.stack([env.reset() for _ in range(2)])  # [seeds, 1 env, C, H, W]
    obs[1] = np.random.default_rng(0).integers(0, 256, obs[1].shape, dtype=np.uint8)
    env.close()
    step = 10 ** 6  # Atari: epsilon 0, greedy
    rngs = [np.random.default_rng(s) for s in (3, 4)]
    actions = group.explore(state, obs, keys, step, rngs)
    one = parallel.layout(1)
    for i, member in enumerate(layout.unstack(state, group.axes)):
        mine = alone.explore(one.put(parallel.stack([member], alone.axes), alone.axes), obs[i:i + 1],
                             keys[i:i + 1], step, rngs[i:i + 1])
        np.testing.assert_allclose(actions[i], mine[0], rtol=1e-5, atol=1e-6, err_msg=f"seed {i}")
    assert not np.array_equal(actions[0], actions[1]) or domain == "atari"
