"""DeepMind Control Suite from pixels on envpool ``<Domain><Task>-v1``.

The CURL/MLR protocol (dmc2gym): ``action_repeat`` control steps per agent step with the
rewards summed, the last state rendered RGB ``image_size`` x ``image_size`` from
``camera_id``, and the last ``frame_stack`` renders stacked oldest -> newest on the channel
axis (``[N, 3 * frame_stack, H, W]``). After a reset the stack holds the first frame
repeated (CURL's ``FrameStack``).

Facts about envpool 1.2.5 this relies on (read from ``envpool/mujoco/dmc/mujoco_env.cc``
and checked by ``tests/envs/test_dmc_env.py``):

* envpool's DMC ``frame_skip`` is dm_control's ``n_sub_steps`` (physics steps per control
  step, task specific: walker 10, finger 2, ...); it is NOT an action repeat (the reward is
  not summed over it). It is therefore left at the task's default and the action repeat is
  done here, on envpool's state-based environment.
* ``max_episode_steps`` counts control steps (1000 for the suite), so an episode is
  ``ceil(1000 / action_repeat)`` agent steps; the time limit comes as ``truncated`` and is
  never a ``terminal``.
* ``from_pixels=True`` renders every control step; rendering once per agent step through
  ``render()`` gives the same frames for ``action_repeat`` times less rendering.
"""

from __future__ import annotations

import abc
import functools
import math
import re

import envpool
import numpy as np
from envpool.registration import registry

from mlr_jax.config import DMCConfig
from mlr_jax.envs.base import FrameStack, ScoreTracker, Step, VecEnv, check_num_envs, resolve_task
from mlr_jax.envs.gl import ensure_gl


@functools.cache
def dmc_tasks() -> dict[str, str]:
    """snake_case ``<domain>_<task>`` (``"ball_in_cup_catch"``) -> envpool id
    (``"BallInCupCatch-v1"``) for every DMC suite task envpool registers."""
    tasks = {}
    for task_id, (module, spec_cls, kwargs) in registry.specs.items():
        if module == "envpool.mujoco.dmc":
            domain = spec_cls.removeprefix("Dmc").removesuffix("EnvSpec")
            domain = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", domain).lower()
            tasks[f"{domain}_{kwargs['task_name']}".lower()] = task_id
    return tasks


def dmc_task_id(task: str) -> str:
    """Envpool id of ``task`` (``"cartpole_swingup"`` or ``"CartpoleSwingup-v1"``).

    Raises:
      ValueError: unknown task; the message lists close matches.
    """
    return resolve_task(task, dmc_tasks(), "DMC task")


class PixelControlVecEnv(VecEnv):
    """What both DMC backends share: the CURL/MLR protocol of the module docstring (action
    repeat with summed rewards, frames rendered after the last control step of each agent
    step, the last ``frame_stack`` of them stacked), episode scores and the hidden auto-reset.

    A backend sets ``_low``/``_high`` (the action bounds the agent sees), ``_limit`` (control
    steps per episode) and implements :meth:`_control` (``action_repeat`` control steps of
    every environment still running), :meth:`_restart` and :meth:`_render`.
    """

    backend: str

    def __init__(self, cfg: DMCConfig, num_envs: int):
        if cfg.action_repeat < 1 or cfg.frame_stack < 1:
            raise ValueError(f"action_repeat={cfg.action_repeat} and frame_stack="
                             f"{cfg.frame_stack} must be >= 1")
        self._num_envs = check_num_envs(num_envs)
        self._repeat = int(cfg.action_repeat)
        self._obs_shape = (3 * int(cfg.frame_stack), int(cfg.image_size), int(cfg.image_size))
        self._stack = FrameStack(self._num_envs, int(cfg.frame_stack),
                                 (3, int(cfg.image_size), int(cfg.image_size)), "repeat")
        self._all_ids = np.arange(self._num_envs, dtype=np.int32)
        self._scores = ScoreTracker(self._num_envs)
        self._started = False
        self._low = self._high = np.zeros(0, np.float32)
        self._limit = 0

    @property
    def action_dim(self) -> int:
        return int(self._low.shape[0])

    @property
    def action_low(self) -> np.ndarray:
        """float32[A] lower action bounds (-1 for the suite)."""
        return self._low.copy()

    @property
    def action_high(self) -> np.ndarray:
        """float32[A] upper action bounds (+1 for the suite)."""
        return self._high.copy()

    @property
    def protocol(self) -> dict:
        """Episodes as the backend runs them: which backend, control steps per episode,
        action repeat, frame size."""
        return {"backend": self.backend, "max_control_steps_per_episode": self._limit,
                "action_repeat": self._repeat, "frame_size": self._obs_shape[1]}

    @property
    def episode_length(self) -> int:
        """Agent steps per episode: ``ceil(control-step limit / action_repeat)``."""
        return math.ceil(self._limit / self._repeat)

    def reset(self) -> np.ndarray:
        """Start new episodes everywhere; returns uint8[N, 3 * frame_stack, H, W]."""
        self._restart(self._all_ids)
        self._push(np.ones(self._num_envs, bool))
        self._scores.reset()
        self._started = True
        return self._stack.stacks

    def step(self, actions: np.ndarray) -> Step:
        """Repeat ``actions`` float[N, A] for ``action_repeat`` control steps."""
        reward, terminal, episode_end = self._control(self._check_actions(actions))
        score = self._scores.update(reward, episode_end)
        if episode_end.any():
            self._restart(np.flatnonzero(episode_end).astype(np.int32))
        self._push(episode_end)
        return Step(obs=self._stack.stacks, reward=reward.astype(np.float32),
                    terminal=terminal, episode_end=episode_end, score=score)

    def _push(self, fresh: np.ndarray) -> None:
        """Render every env; shift the new frame into the stacks; environments with
        ``fresh[N]`` (new episodes) get the frame in every stack slot."""
        self._stack.push(self._all_ids, self._render().transpose(0, 3, 1, 2), fresh)

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self._num_envs, self.action_dim):
            raise ValueError(f"actions must have shape ({self._num_envs}, {self.action_dim}), "
                             f"got {list(actions.shape)}")
        if not np.all(np.isfinite(actions)) or np.any(actions < self._low - 1e-6) \
                or np.any(actions > self._high + 1e-6):
            raise ValueError(f"actions must be finite and within [{self._low.min()}, "
                             f"{self._high.max()}], got min {actions.min()} max {actions.max()}")
        return np.clip(actions, self._low, self._high)

    @abc.abstractmethod
    def _control(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``action_repeat`` control steps -> ``(reward float64[N] summed, terminal bool[N],
        episode_end bool[N])``; an environment whose episode ends stops there."""

    @abc.abstractmethod
    def _restart(self, env_ids: np.ndarray) -> None:
        """Start new episodes in ``env_ids``."""

    @abc.abstractmethod
    def _render(self) -> np.ndarray:
        """uint8[N, H, W, 3] of every environment's current state."""


class DMCVecEnv(PixelControlVecEnv):
    """``num_envs`` DMC tasks from pixels on envpool, in lock-step; see the module docstring.

    ``evaluation`` changes nothing (DMC has no life-loss terminals); it is accepted so both
    domains share one factory signature.
    """

    backend = "envpool"

    def __init__(self, cfg: DMCConfig, num_envs: int, seed: int, evaluation: bool = False):
        del evaluation
        task_id = dmc_task_id(cfg.task)
        super().__init__(cfg, num_envs)
        ensure_gl()
        self._pool = envpool.make_gymnasium(
            task_id,
            num_envs=self._num_envs,
            seed=int(seed),
            render_mode="rgb_array",
            render_width=int(cfg.image_size),
            render_height=int(cfg.image_size),
            render_camera_id=int(cfg.camera_id),
        )
        space = self._pool.action_space
        self._low = np.asarray(space.low, np.float32)
        self._high = np.asarray(space.high, np.float32)
        self._limit = int(self._pool.config["max_episode_steps"])

    def _control(self, actions):
        n = self._num_envs
        reward = np.zeros(n, np.float64)
        terminal = np.zeros(n, bool)
        episode_end = np.zeros(n, bool)
        active = self._all_ids
        for _ in range(self._repeat):
            _, r, terminated, truncated, info = self._pool.step(actions[active], env_id=active)
            ids = info["env_id"]
            reward[ids] += r
            terminal[ids] |= terminated
            episode_end[ids] |= terminated | truncated
            active = np.flatnonzero(~episode_end).astype(np.int32)
            if active.size == 0:
                break
        return reward, terminal, episode_end

    def _restart(self, env_ids):
        if len(env_ids) == self._num_envs:
            self._pool.reset()
        else:
            self._pool.reset(env_ids)

    def _render(self):
        return self._pool.render(env_ids=self._all_ids)

    def close(self) -> None:
        self._pool.close()
