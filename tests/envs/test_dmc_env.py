"""DMC vector environment from pixels: frames, camera, action repeat, episodes, GL loading."""

import os

import chex
import envpool
import numpy as np
import pytest

from mlr_jax.config import DMC_PAPER_TASKS, DMCConfig, make_config
from mlr_jax.envs import dmc_task_id, dmc_tasks, gl, make_env

SEED = 0


@pytest.fixture(scope="module")
def cartpole():
    env = make_env(make_config("dmc", "cartpole_swingup"), num_envs=2, seed=SEED)
    yield env
    env.close()


def _raw_cartpole(num_envs=2):
    """Envpool's state-based cartpole with the same seed: the reference dynamics."""
    return envpool.make_gymnasium("CartpoleSwingup-v1", num_envs=num_envs, seed=SEED,
                                  render_mode="rgb_array", render_width=100,
                                  render_height=100, render_camera_id=0)


def _newest(obs):
    """uint8[N,9,H,W] -> the newest RGB frame as uint8[N,H,W,3]."""
    return obs[:, -3:].transpose(0, 2, 3, 1)


def _same_stacked_frames(obs):
    return all(np.array_equal(obs[:, 3 * k:3 * k + 3], obs[:, -3:]) for k in range(3))


def test_reset_renders_stacked_pixels_from_camera_0(cartpole):
    obs = cartpole.reset()
    chex.assert_shape(obs, (2, 9, 100, 100))
    assert obs.dtype == np.uint8 and cartpole.obs_shape == (9, 100, 100)
    assert obs.reshape(2, -1).std(axis=1).min() > 10  # real images, not blank
    assert _same_stacked_frames(obs)  # CURL's FrameStack: first frame repeated
    assert cartpole.action_dim == 1 and cartpole.episode_length == 125  # 1000 / repeat 8
    np.testing.assert_array_equal(cartpole.action_low, [-1.0])
    np.testing.assert_array_equal(cartpole.action_high, [1.0])
    raw = _raw_cartpole()
    raw.reset()
    np.testing.assert_array_equal(_newest(obs), raw.render(env_ids=np.arange(2)))
    other_camera = raw.render(env_ids=np.arange(2), camera_id=1)
    assert np.abs(_newest(obs).astype(int) - other_camera).mean() > 5
    raw.close()


def test_episode_repeats_actions_sums_rewards_and_ends_without_terminal():
    """One full episode against the raw state-based pool stepped 8 times per action."""
    cartpole = make_env(make_config("dmc", "cartpole_swingup"), num_envs=2, seed=SEED)
    obs = cartpole.reset()
    raw = _raw_cartpole()
    raw.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (cartpole.episode_length, 2, 1))
    actions = actions.astype(np.float32)
    rewards = np.zeros(2)
    for t, action in enumerate(actions):
        step = cartpole.step(action)
        expected = np.zeros(2)
        for _ in range(8):
            _, r, terminated, truncated, _ = raw.step(action)
            expected += r
        np.testing.assert_allclose(step.reward, expected, rtol=1e-6, atol=1e-6)
        rewards += step.reward
        last = t == cartpole.episode_length - 1
        assert truncated.all() == last and not terminated.any()
        np.testing.assert_array_equal(step.episode_end, [last, last])
        assert not step.terminal.any()  # a time limit is never a terminal
        if not last:
            assert np.isnan(step.score).all()
            np.testing.assert_array_equal(step.obs[:, :6], obs[:, 3:])  # oldest -> newest
            if t % 40 == 0:  # the newest frame is the state after the 8th control step
                np.testing.assert_array_equal(_newest(step.obs), raw.render(env_ids=np.arange(2)))
        obs = step.obs
    np.testing.assert_allclose(step.score, rewards, rtol=1e-5)
    assert rewards.min() > 0
    # The same step already returns the next episode's first observation.
    assert _same_stacked_frames(step.obs)
    raw.reset()
    np.testing.assert_array_equal(_newest(step.obs), raw.render(env_ids=np.arange(2)))
    assert np.isnan(cartpole.step(actions[0]).score).all()  # a new episode is running
    raw.close()
    cartpole.close()


def test_bad_actions_fail_early(cartpole):
    cartpole.reset()
    with pytest.raises(ValueError, match="shape"):
        cartpole.step(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="within"):
        cartpole.step(np.full((2, 1), 1.5))
    with pytest.raises(ValueError, match="finite"):
        cartpole.step(np.full((2, 1), np.nan))


@pytest.mark.parametrize("name, task_id", [
    ("cartpole_swingup", "CartpoleSwingup-v1"), ("ball_in_cup_catch", "BallInCupCatch-v1"),
    ("reacher_easy", "ReacherEasy-v1"), ("cheetah_run", "CheetahRun-v1"),
    ("finger_spin", "FingerSpin-v1"), ("walker_walk", "WalkerWalk-v1"),
    ("humanoid_CMU_run", "HumanoidCMURun-v1"), ("point_mass_easy", "PointMassEasy-v1"),
    ("CartpoleSwingup-v1", "CartpoleSwingup-v1"),
])
def test_task_names(name, task_id):
    assert dmc_task_id(name) == task_id


def test_task_list_is_envpool_dmc_suite():
    tasks = dmc_tasks()
    assert set(DMC_PAPER_TASKS) <= set(tasks)
    assert all(task_id.endswith("-v1") for task_id in tasks.values())
    assert len(set(tasks.values())) == len(tasks) > 40


def test_unknown_task_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown DMC task 'cartpole_swingpu'; did you mean "
                                         r"'cartpole_swingup'"):
        make_env(DMCConfig(task="cartpole_swingpu"), 1, seed=0)


# ------------------------------------------------------------------------------ GL loading

@pytest.fixture
def fresh_gl(monkeypatch):
    """ensure_gl as in a new process, with the child-process probe and loader recorded."""
    calls = {"probed": [], "loaded": []}
    monkeypatch.setattr(gl, "_platform", None)
    monkeypatch.setattr(gl, "_load_library", calls["loaded"].append)
    monkeypatch.delenv("MUJOCO_GL", raising=False)
    return calls


def _fake_probe(calls, working):
    def probe(library, platform):
        calls["probed"].append(platform)
        return None if platform in working else f"OSError: {library}: cannot open shared object"
    return probe


def test_gl_missing_raises_one_clear_error(fresh_gl, monkeypatch):
    monkeypatch.setattr(gl, "_probe", _fake_probe(fresh_gl, working=()))
    with pytest.raises(RuntimeError) as info:
        make_env(make_config("dmc", "cartpole_swingup"), 1, seed=0)
    message = str(info.value)
    assert "libegl1 libgl1-mesa-dri" in message and "libosmesa6" in message
    assert "cannot open shared object" in message
    assert fresh_gl["probed"] == ["egl", "osmesa"] and fresh_gl["loaded"] == []


def test_gl_falls_back_from_egl_to_osmesa(fresh_gl, monkeypatch):
    monkeypatch.setattr(gl, "_probe", _fake_probe(fresh_gl, working=("osmesa",)))
    assert gl.ensure_gl() == "osmesa"
    assert fresh_gl["loaded"] == ["libOSMesa.so.8"]
    assert os.environ["MUJOCO_GL"] == "osmesa"
    assert gl.ensure_gl() == "osmesa" and fresh_gl["probed"] == ["egl", "osmesa"]  # cached


def test_gl_respects_mujoco_gl(fresh_gl, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setattr(gl, "_probe", _fake_probe(fresh_gl, working=("egl", "osmesa")))
    assert gl.ensure_gl() == "osmesa" and fresh_gl["probed"] == ["osmesa"]
    monkeypatch.setattr(gl, "_platform", None)
    monkeypatch.setattr(gl, "_probe", _fake_probe(fresh_gl, working=("egl",)))
    with pytest.raises(RuntimeError, match="libosmesa6.*unset MUJOCO_GL"):
        gl.ensure_gl()
    monkeypatch.setenv("MUJOCO_GL", "glfw")
    with pytest.raises(RuntimeError, match="MUJOCO_GL='glfw' is not supported"):
        gl.ensure_gl()


def test_gl_probe_reports_a_missing_library():
    reason = gl._probe("libDoesNotExist.so.9", "egl")
    assert reason is not None and "libDoesNotExist.so.9" in reason
    assert gl.library_path("osmesa") == "libOSMesa.so.8"
    assert "libEGL" in gl.library_path("egl")
