"""Atari vector environment: Atari-100k settings, learning signals, no extra reset steps."""

import dataclasses

import chex
import envpool
import numpy as np
import pytest

from mlr_jax.config import ATARI_GAMES, AtariConfig
from mlr_jax.envs import atari_task_id, make_env

# The spec's Atari-100k settings, written out independently of the wrapper: the reference
# pool plays the same full games, so the wrapper's signals can be derived from its output.
RAW_SETTINGS = dict(episodic_life=False, reward_clip=False, repeat_action_probability=0.0,
                    use_fire_reset=False, noop_max=30, frame_skip=4, stack_num=1,
                    img_height=84, img_width=84, max_episode_steps=27_001,
                    full_action_space=False, use_inter_area_resize=False)
BREAKOUT_LIVES = 5


def _random_actions(seed, num_actions, num_envs, steps):
    return np.random.default_rng(seed).integers(0, num_actions, (steps, num_envs))


def test_pong_starts_and_steps():
    env = make_env(AtariConfig(game="pong"), num_envs=2, seed=0)
    obs = env.reset()
    chex.assert_shape(obs, (2, 4, 84, 84))
    assert obs.dtype == np.uint8 and env.obs_shape == (4, 84, 84) and env.num_envs == 2
    assert env.num_actions == 6  # Pong's minimal action set
    step = env.step(np.array([0, 3]))
    chex.assert_shape([step.reward, step.terminal, step.episode_end, step.score], (2,))
    chex.assert_shape(step.obs, (2, 4, 84, 84))
    assert step.obs.dtype == np.uint8 and step.reward.dtype == np.float32
    assert step.terminal.dtype == bool and step.episode_end.dtype == bool
    assert np.isnan(step.score).all()  # no game ended
    # The stack is oldest -> newest: the previous newest frame moved one slot back; a game
    # starts with zeros in the older slots (the authors' env)
    np.testing.assert_array_equal(step.obs[:, :3], obs[:, 1:])
    assert not obs[:, :3].any() and obs[:, 3].any()
    env.close()


def test_envpool_runs_the_spec_settings():
    env = make_env(AtariConfig(game="pong"), num_envs=1, seed=0)
    config = env.envpool_config
    for key, value in RAW_SETTINGS.items():
        assert config[key] == value, key
    assert config["gray_scale"] and config["seed"] == 0
    env.close()
    # The settings come from the config, not constants.
    changed = dataclasses.replace(AtariConfig(game="pong"), repeat_action_probability=0.25,
                                  fire_reset=True, noop_max=5, max_episode_steps=100, resize="area")
    config = make_env(changed, num_envs=1, seed=3).envpool_config
    assert config["repeat_action_probability"] == pytest.approx(0.25)
    assert config["use_inter_area_resize"]
    assert config["use_fire_reset"] and config["noop_max"] == 5
    assert config["max_episode_steps"] == 100 and config["seed"] == 3


def test_signals_match_the_raw_game_without_reset_steps():
    """Against a raw envpool pool playing the same full games with the same actions: reward
    is sign(r), terminal is life loss or game over, score is the raw game total, and after a
    game over the wrapper already returns the next game's first observation, where the raw
    pool needs one extra step (its action ignored) to get there."""
    env = make_env(AtariConfig(game="breakout"), num_envs=1, seed=7)
    raw = envpool.make_gymnasium("Breakout-v5", num_envs=1, seed=7, **RAW_SETTINGS)
    obs = env.reset()
    raw_obs, info = raw.reset()
    np.testing.assert_array_equal(obs[:, -1], raw_obs[:, 0])
    lives, total, games, terminals = info["lives"][0], 0.0, 0, 0
    for action in _random_actions(0, env.num_actions, 1, 3000):
        step = env.step(action)
        raw_obs, r, terminated, truncated, info = raw.step(action.astype(np.int32))
        game_over = bool(terminated[0] or truncated[0])
        life_lost = info["lives"][0] < lives
        lives, total = info["lives"][0], total + r[0]
        assert step.reward[0] == np.sign(r[0])
        assert step.terminal[0] == (life_lost or game_over)
        assert step.episode_end[0] == game_over
        terminals += int(step.terminal[0])
        if game_over:
            assert step.score[0] == pytest.approx(total) and total > 0
            assert terminals == BREAKOUT_LIVES  # four life losses, then the game over
            raw_obs, r, terminated, truncated, info = raw.step(np.zeros(1, np.int32))
            assert info["elapsed_step"][0] == 0 and r[0] == 0  # the raw pool's reset step
            lives, total, terminals, games = info["lives"][0], 0.0, 0, games + 1
        else:
            assert np.isnan(step.score[0])
        np.testing.assert_array_equal(step.obs[:, -1], raw_obs[:, 0])
        if games == 2:
            break
    assert games == 2


def test_evaluation_has_no_life_loss_terminals():
    """Same seed and actions in training and evaluation mode: identical games, but in
    evaluation a terminal only comes with the game over, and a life loss does not restart
    the frame stack (the authors' env zeroes it only with episodic lives)."""
    cfg = AtariConfig(game="breakout")
    train, evaluation = make_env(cfg, 2, seed=1), make_env(cfg, 2, seed=1, evaluation=True)
    np.testing.assert_array_equal(train.reset(), previous := evaluation.reset())
    train_terminals, eval_terminals, games = np.zeros(2, int), np.zeros(2, int), np.zeros(2, int)
    for actions in _random_actions(1, train.num_actions, 2, 3000):
        a, b = train.step(actions), evaluation.step(actions)
        np.testing.assert_array_equal(a.obs[:, -1], b.obs[:, -1])
        life_lost = a.terminal & ~a.episode_end
        assert not a.obs[life_lost, :3].any()  # training: a new stack after a life loss
        np.testing.assert_array_equal(b.obs[life_lost, :3], previous[life_lost, 1:])
        previous = b.obs
        np.testing.assert_array_equal(a.reward, b.reward)
        np.testing.assert_array_equal(a.episode_end, b.episode_end)
        np.testing.assert_array_equal(b.terminal, b.episode_end)  # no time limit reached
        assert np.all(a.terminal >= b.terminal)
        train_terminals += a.terminal
        eval_terminals += b.terminal
        games += a.episode_end
        if games.min() >= 1:
            break
    assert games.min() >= 1
    np.testing.assert_array_equal(eval_terminals, games)
    # Every finished game contributed its life losses; an unfinished one may add a few more.
    assert np.all(train_terminals >= BREAKOUT_LIVES * games)


def bilinear_resize(frame, size):
    """Float reference of ``cv2.resize(frame, (size, size))`` with its default INTER_LINEAR:
    pixel centres aligned (``x = (i + 0.5) * scale - 0.5``), edges clamped."""

    def weights(out, inp):
        x = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, inp - 1), x - lo

    (r0, r1, fr), (c0, c1, fc) = weights(size, frame.shape[0]), weights(size, frame.shape[1])
    f = frame.astype(np.float64)
    rows = f[r0] * (1 - fr)[:, None] + f[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


@pytest.mark.parametrize("resize", ["bilinear", "area"])
def test_frames_are_resized_as_configured(resize):
    """Against envpool's unresized 210x160 max-pooled screens of the same game: bilinear
    (the default, the authors' cv2.resize) matches the float reference to cv2's fixed-point
    rounding (1 gray level); INTER_AREA ("area", envpool's default) does not."""
    cfg = dataclasses.replace(AtariConfig(game="breakout"), resize=resize)
    env = make_env(cfg, 1, seed=4)
    raw = envpool.make_gymnasium("Breakout-v5", num_envs=1, seed=4,
                                 **{**RAW_SETTINGS, "img_height": 210, "img_width": 160})
    obs, (screen, _) = env.reset(), raw.reset()
    diffs = []
    for action in _random_actions(3, env.num_actions, 1, 40):
        obs, screen = env.step(action).obs, raw.step(action.astype(np.int32))[0]
        diffs.append(np.abs(obs[0, -1] - bilinear_resize(screen[0, 0], 84)))
    diffs = np.stack(diffs)
    if resize == "bilinear":
        assert diffs.max() <= 1.0
    else:
        assert diffs.max() > 20 and (diffs > 1).mean() > 0.01


@pytest.mark.parametrize("stack_reset", ["zero", "repeat"])
def test_replay_rebuilds_the_stacks_the_agent_acted_on(stack_reset):
    """Breakout with life losses and a game over: every stack the replay built by the loop's
    config rebuilds is exactly the observation the agent acted on, in both stack modes."""
    from mlr_jax.domains import make_replay

    cfg = dataclasses.replace(AtariConfig(game="breakout", replay_capacity=3000),
                              stack_reset=stack_reset)
    env, replay = make_env(cfg, 1, seed=2), make_replay(cfg)
    obs, seen, ends, life_losses = env.reset(), [], 0, 0
    for action in _random_actions(4, env.num_actions, 1, 2500):
        step = env.step(action)
        replay.add(obs[0, -1], int(action[0]), step.reward[0], step.terminal[0], step.episode_end[0])
        seen.append(obs[0])
        obs, ends = step.obs, ends + int(step.episode_end[0])
        life_losses += int(step.terminal[0] and not step.episode_end[0])
    assert ends >= 1 and life_losses >= 4
    rebuilt = replay.ring.stacks(np.arange(len(seen)))
    np.testing.assert_array_equal(rebuilt, np.stack(seen))


@pytest.mark.parametrize("time_limit_terminal", [True, False])
def test_time_limit_counts_agent_steps_and_is_terminal_as_the_authors(time_limit_terminal):
    """The authors' env reports its horizon as a done, which the replay treats as game over
    (no bootstrap past it); ``time_limit_terminal=False`` bootstraps through it. Evaluation
    never sees it as a terminal."""
    cfg = dataclasses.replace(AtariConfig(game="pong"), max_episode_steps=50,
                              time_limit_terminal=time_limit_terminal)
    for evaluation in (False, True):
        env = make_env(cfg, 2, seed=0, evaluation=evaluation)
        env.reset()
        actions = _random_actions(2, env.num_actions, 2, 50)
        for t, action in enumerate(actions):
            step = env.step(action)
            assert step.episode_end.all() == (t == 49)
            # no game over or life lost in 50 Pong steps: the time limit is the only done
            assert step.terminal.all() == (t == 49 and time_limit_terminal and not evaluation)
            assert step.terminal.any() == step.terminal.all()
        assert np.all(np.isfinite(step.score)) and np.all(step.score <= 0)  # Pong: -21..21
        assert not step.obs[:, :3].any() and step.obs[:, 3].any()  # a new game's stack
        env.close()


def authors_episode_length(horizon):
    """Agent steps in a game the authors' ``AtariEnv`` cuts at ``horizon``
    (``Atari/src/rlpyt_atari_env.py`` ``step``: ``game_over = ... or self._step_counter >=
    self.horizon``, then ``self._step_counter += 1``; ``reset`` sets the counter to 0)."""
    counter, steps, over = 0, 0, False
    while not over:
        over = counter >= horizon
        counter += 1
        steps += 1
    return steps


def test_episode_cap_is_the_authors():
    """The authors' horizon 27,000 ends a game at agent step 27,001; envpool ends it at agent
    step ``max_episode_steps``, which the config passes through unchanged."""
    assert authors_episode_length(27_000) == 27_001 == AtariConfig().max_episode_steps
    env = make_env(AtariConfig(game="pong"), 1, seed=0)
    assert env.envpool_config["max_episode_steps"] == 27_001
    assert env.protocol["max_frames_per_episode"] == 108_004
    env.close()
    # the same counting on a short game: horizon 20 -> the 21st step ends it
    cfg = dataclasses.replace(AtariConfig(game="pong"),
                              max_episode_steps=authors_episode_length(20))
    env = make_env(cfg, 1, seed=1)
    env.reset()
    ends = [bool(env.step(np.zeros(1, np.int64)).episode_end[0]) for _ in range(42)]
    assert np.flatnonzero(ends).tolist() == [20, 41]
    env.close()


@pytest.mark.parametrize("name, task_id", [
    ("ms_pacman", "MsPacman-v5"), ("up_n_down", "UpNDown-v5"),
    ("kung_fu_master", "KungFuMaster-v5"), ("chopper_command", "ChopperCommand-v5"),
    ("pong", "Pong-v5"), ("Pong-v5", "Pong-v5"), ("Private_Eye", "PrivateEye-v5"),
])
def test_game_names(name, task_id):
    assert atari_task_id(name) == task_id


def test_all_atari_100k_games_resolve():
    assert len({atari_task_id(game) for game in ATARI_GAMES}) == len(ATARI_GAMES) == 26


def test_unknown_game_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown Atari game 'pongg'; did you mean 'pong'"):
        make_env(AtariConfig(game="pongg"), 1, seed=0)
    with pytest.raises(ValueError, match="ms_pacman"):
        atari_task_id("mspacman")


def test_bad_arguments_fail_early():
    with pytest.raises(TypeError, match="AtariConfig or DMCConfig"):
        make_env(object(), 1, seed=0)
    with pytest.raises(ValueError, match="num_envs"):
        make_env(AtariConfig(), 0, seed=0)
    env = make_env(AtariConfig(game="pong"), 2, seed=0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(np.zeros(2, int))
    env.reset()
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, int))
    with pytest.raises(ValueError, match="integers"):
        env.step(np.zeros(2, np.float32))
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        env.step(np.array([0, 6]))
