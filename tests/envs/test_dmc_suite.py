"""The dm_control backend (``env_backend="dm_control"``): the dmc2gym protocol behind the
VecEnv interface, its cross-check against envpool's DMC, and a run that trains, resumes and
evaluates on it."""

import json

import numpy as np
import pytest

from mlr_jax import cli, envs, loop
from mlr_jax.bench import dmc_backends
from mlr_jax.config import ConfigError, make_config
from mlr_jax.envs import SuiteVecEnv, make_env


def test_the_suite_backend_steps_like_dmc2gym():
    cfg = make_config("dmc", "cartpole_swingup", "paper", ["env_backend=dm_control", "image_size=40",
                                                             "crop_size=32"])
    env = make_env(cfg, num_envs=2, seed=3)
    assert isinstance(env, SuiteVecEnv)
    try:
        assert env.episode_length == 125 and env.action_dim == 1  # 1,000 control steps / repeat 8
        assert env.action_low.tolist() == [-1.0] and env.action_high.tolist() == [1.0]
        assert env.protocol == {"backend": "dm_control", "max_control_steps_per_episode": 1000,
                                "action_repeat": 8, "frame_size": 40}
        obs = env.reset()
        assert obs.shape == (2, 9, 40, 40) and obs.dtype == np.uint8
        assert all(np.array_equal(obs[:, 3 * k:3 * k + 3], obs[:, -3:]) for k in range(3))
        assert not np.array_equal(obs[0], obs[1])  # seeds 3 and 4
        rng = np.random.default_rng(0)
        for t in range(env.episode_length):
            rec = env.step(rng.uniform(-1, 1, (2, 1)))
            assert not rec.terminal.any()  # the time limit is not a terminal
            assert rec.episode_end.all() == (t == env.episode_length - 1)
        assert np.all(np.isfinite(rec.score)) and np.all(rec.score > 0)
        # the hidden auto-reset: the stack holds the new episode's first frame only
        assert all(np.array_equal(rec.obs[:, 3 * k:3 * k + 3], rec.obs[:, -3:]) for k in range(3))
        with pytest.raises(ValueError, match="within"):
            env.step(np.full((2, 1), 1.5))
    finally:
        env.close()
    with pytest.raises(ConfigError, match="unknown DMC task 'cartpole_swingupp'; did you mean"):
        envs.check_name(make_config("dmc", "cartpole_swingupp", "paper", ["env_backend=dm_control"]))


def test_envpool_matches_dm_control_from_the_same_state():
    """What benchmarks/results/dmc_backends_*.json records, on cartpole_swingup: one episode,
    same random actions.

    From the same initial state the two MuJoCo builds (envpool's 3.6.0, dm_control's 3.17)
    give the same rewards and nearly the same frames: measured max reward difference 4e-5
    over 125 agent steps (float32 rewards summed over 8 control steps, physics differing in
    the last bits); frames 0.19 / 255 mean absolute difference (anti-aliasing of the two
    renderers), PSNR 52 dB. The bounds below leave 25x / 5x / 12 dB of room. From the same
    seed they do not start in the same state (their random generators differ)."""
    same = dmc_backends.compare_task("cartpole_swingup", seed=1, align=True)
    assert same["agent_steps"] == 125
    assert same["reward_max_abs_diff"] < 1e-3
    assert abs(same["return_envpool"] - same["return_dm_control"]) < 0.01
    assert same["frame_mae_max"] < 1.0 and same["psnr_mean_db"] > 40
    seeded = dmc_backends.compare_task("cartpole_swingup", seed=1)
    assert seeded["frame_mae_first"] > 0.5 and seeded["first_reward_diff_step"] == 0


@pytest.mark.slow
def test_a_run_on_dm_control_trains_resumes_and_evaluates(tmp_path, capsys):
    # the Baseline: the backend is under test here, and the envpool smoke run
    # (test_train_end_to_end.py) trains MLR
    small = ["--env-backend", "dm_control", "--preset", "smoke", "--outdir", str(tmp_path),
             "--no-progress", "--aux", "none", "image_size=40", "crop_size=32", "seed_steps=20",
             "batch_size=4",
             "run.eval_every=0", "run.checkpoint_every=0", "run.log_every=80"]
    assert cli.main(["train", "dmc", "--task", "cartpole_swingup", "--env-steps", "320", *small]) == 0
    (run,) = tmp_path.iterdir()
    final = json.loads((run / "final_eval.json").read_text())
    assert final["agent_steps"] == 40 and final["protocol"]["backend"] == "dm_control"
    assert cli.main(["train", "dmc", "--resume", str(run), "--no-progress", "--env-steps", "400"]) == 0
    assert json.loads((run / "final_eval.json").read_text())["agent_steps"] == 50
    assert json.loads((run / "config.json").read_text())["env_backend"] == "dm_control"
    summary = loop.evaluate_checkpoint(run, episodes=1, log=lambda *_: None)
    assert summary["checkpoint_step"] == 50 and summary["protocol"]["backend"] == "dm_control"
