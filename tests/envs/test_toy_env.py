"""The synthetic learning-test tasks: their rules, frames, stacks and random-play scores."""
import chex
import numpy as np
import pytest

from mlr_jax.config import ConfigError, make_config
from mlr_jax.envs import check_name, make_env, toy


def _play(env, actions):
    """Play ``actions[T, N, ...]`` from the current state (resetting a fresh env first)."""
    if not env._started:
        env.reset()
    scores = []
    for a in actions:
        step = env.step(a)
        scores += step.score[step.episode_end].tolist()
    return np.array(scores), step


def test_catch_rules_frames_and_stacks():
    cfg = make_config("atari", "toy_catch", "toy")
    env = make_env(cfg, num_envs=3, seed=0)
    obs = env.reset()
    chex.assert_shape(obs, (3, cfg.frame_stack, cfg.image_size, cfg.image_size))
    assert env.num_actions == 3 and obs.dtype == np.uint8
    assert not obs[:, :-1].any()  # a game starts with zeros in the older slots
    cell = cfg.image_size // toy.GRID
    board = obs[:, -1, ::cell, ::cell]  # one pixel per cell
    assert np.all((board == 255).sum((1, 2)) == 1) and np.all((board[:, 0] == 255).sum(1) == 1)
    assert np.all((board[:, -1] == 128).sum(1) == 1)  # the paddle on the bottom row
    ball_col = np.argmax(board[:, 0] == 255, axis=1)
    paddle = np.argmax(board[:, -1] == 128, axis=1)
    # steer the paddle under the ball: every game is caught, in GRID - 1 steps
    for t in range(toy.GRID - 1):
        step = env.step(np.sign(ball_col - paddle).astype(np.int64) + 1)
        paddle = np.clip(paddle + np.sign(ball_col - paddle), 0, toy.GRID - 1)
        last = t == toy.GRID - 2
        np.testing.assert_array_equal(step.episode_end, last)
        np.testing.assert_array_equal(step.terminal, last)
        np.testing.assert_array_equal(step.reward, 1.0 if last else 0.0)
        if not last:
            np.testing.assert_array_equal(step.obs[:, :-1], obs[:, 1:])  # oldest -> newest
        obs = step.obs
    np.testing.assert_array_equal(step.score, 1.0)
    assert not step.obs[:, :-1].any()  # the next game's first stack


def test_random_play_and_seeds():
    cfg = make_config("atari", "toy_catch", "toy")
    rng = np.random.default_rng(0)
    scores, _ = _play(make_env(cfg, 8, seed=1), rng.integers(0, 3, (3000, 8)))
    assert len(scores) > 3000 and -0.7 < scores.mean() < -0.48  # a catch about 1 in 5
    a, b = make_env(cfg, 2, seed=5).reset(), make_env(cfg, 2, seed=5).reset()
    np.testing.assert_array_equal(a, b)


def test_reach_rewards_frames_and_time_limit():
    cfg = make_config("dmc", "toy_reach", "toy", ["action_repeat=2"])
    env = make_env(cfg, num_envs=2, seed=0)
    obs = env.reset()
    chex.assert_shape(obs, (2, 3 * cfg.frame_stack, cfg.image_size, cfg.image_size))
    assert env.action_dim == 2 and env.episode_length == toy.REACH_STEPS // 2
    np.testing.assert_array_equal(obs[:, :3], obs[:, -3:])  # CURL's stack: first frame repeated
    start = env._position.copy()
    step = env.step(np.array([[1.0, 0.0], [0.0, -1.0]]))
    first = np.clip(start + toy.STEP * np.array([[1, 0], [0, -1]]), -1, 1)
    second = np.clip(first + toy.STEP * np.array([[1, 0], [0, -1]]), -1, 1)
    expected = -np.linalg.norm(first, axis=1) - np.linalg.norm(second, axis=1)  # summed repeat
    np.testing.assert_allclose(step.reward, expected, rtol=1e-5)
    red = step.obs[:, -3]  # the newest frame's red channel: the dot
    rows, cols = np.nonzero(red[0] == 255)
    centre = (second[0] + 1) / 2 * (cfg.image_size - 1)
    assert abs(cols.mean() - centre[0]) <= 1 and abs(rows.mean() - centre[1]) <= 1
    scores, step = _play(env, np.zeros((env.episode_length - 1, 2, 2)))
    assert step.episode_end.all() and not step.terminal.any() and len(scores) == 2
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        env.step(np.full((2, 2), 1.5))


def test_reach_random_and_steering_scores():
    cfg = make_config("dmc", "toy_reach", "toy")
    rng = np.random.default_rng(0)
    scores, _ = _play(make_env(cfg, 4, seed=1), rng.uniform(-1, 1, (1000, 4, 2)))
    assert -45 < scores.mean() < -30
    env, steered = make_env(cfg, 4, seed=2), []
    env.reset()
    for _ in range(500):
        step = env.step(-np.clip(env._position / toy.STEP, -1, 1))
        steered += step.score[step.episode_end].tolist()
    assert np.mean(steered) > -3


def test_toy_names_are_known_and_image_sizes_checked():
    with pytest.raises(ConfigError, match="toy_catch"):
        check_name(make_config("atari", "toy_cach", "toy"))
    with pytest.raises(ValueError, match="multiple of 5"):
        make_env(make_config("atari", "toy_catch", "toy", ["image_size=24", "mlr.patch_size=6"]),
                 1, seed=0)


def test_policy_scores_count_episodes_and_no_constant_action_wins_catch():
    from mlr_jax import envs
    cfg = make_config("atari", "toy_catch", "toy")
    scores = envs.random_policy_scores(cfg, 50, num_envs=4)
    assert scores.shape == (50,) and set(np.unique(scores).tolist()) <= {-1.0, 1.0}
    constant = envs.constant_action_scores(cfg, 40)
    assert sorted(constant) == [0, 1, 2]
    assert all(v.shape == (40,) and v.mean() < 0 for v in constant.values())
    with pytest.raises(TypeError, match="discrete-action"):
        envs.constant_action_scores(make_config("dmc", "toy_reach", "toy"), 4)
