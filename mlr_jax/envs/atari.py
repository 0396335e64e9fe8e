"""Atari-100k environments on envpool ``<Game>-v5``.

Envpool runs full games (``episodic_life=False``, ``reward_clip=False``) with the Atari-100k
settings from :class:`~mlr_jax.config.AtariConfig`; this wrapper derives the learning signal:

* ``reward = sign(r)``; ``score`` is the raw, unclipped sum over the whole game.
* ``terminal``: training -- a life was lost (``info["lives"]`` decreased), the game is over
  or, with ``time_limit_terminal`` (the default: the authors' env reports its horizon as a
  done), the time limit was reached; evaluation -- only game over.
* ``episode_end``: game over or the time limit.
* the frame stack ``[N, frame_stack, 84, 84]`` (oldest -> newest) is built here from
  envpool's single frames. With ``stack_reset="zero"`` (the authors' env) a new stack of
  zeros and the newest frame starts at every game start and, in training, at every life
  loss; with ``"repeat"`` (envpool's own stacking) a game starts with its first frame
  repeated and a life loss does not break the stack.

Facts about envpool 1.2.5 this relies on (read from ``envpool/atari/atari_env.h`` and
checked by ``tests/envs/test_atari_env.py``):

* one step = ``frame_skip`` emulator frames with the action repeated; the observation is
  the pixel-wise max of the last two frames, resized to 84x84 gray with ``cv::resize``:
  bilinear (its default, as the authors' ``cv2.resize``) when
  ``use_inter_area_resize=False``, INTER_AREA otherwise (envpool's default);
* ``max_episode_steps`` counts agent steps: ``elapsed_step`` is 0 after a reset, one step
  adds 1 and the game ends when it reaches ``max_episode_steps`` (the default 27,001 is the
  authors' ``horizon=27000``, checked before their env counts the step);
* reset performs 1..``noop_max`` no-ops (then FIRE if ``use_fire_reset``);
* in sync mode ``reset(env_ids)`` resets just those environments, and their next ``step``
  is an ordinary step (``elapsed_step`` 1), so this wrapper resets finished games itself in
  the step that ended them.
"""

from __future__ import annotations

import functools

import envpool
import numpy as np
from envpool.registration import registry

from mlr_jax.config import AtariConfig
from mlr_jax.envs.base import (FrameStack, ScoreTracker, Step, VecEnv, check_num_envs,
                               resolve_task, scatter)


@functools.cache
def atari_tasks() -> dict[str, str]:
    """snake_case game name (the ROM name, e.g. ``"ms_pacman"``) -> envpool id (``"MsPacman-v5"``)."""
    return {kwargs["task"]: task_id for task_id, (module, _, kwargs) in registry.specs.items()
            if module == "envpool.atari"}


def atari_task_id(game: str) -> str:
    """Envpool id of ``game`` (``"up_n_down"`` or ``"UpNDown-v5"`` -> ``"UpNDown-v5"``).

    Raises:
      ValueError: unknown game, e.g. ``unknown Atari game 'pongg'; did you mean 'pong'?``.
    """
    return resolve_task(game, atari_tasks(), "Atari game")


class AtariVecEnv(VecEnv):
    """``num_envs`` Atari games in lock-step; see the module docstring for the semantics."""

    def __init__(self, cfg: AtariConfig, num_envs: int, seed: int, evaluation: bool = False):
        self._num_envs = check_num_envs(num_envs)
        self._evaluation = bool(evaluation)
        self._pool = envpool.make_gymnasium(
            atari_task_id(cfg.game),
            num_envs=self._num_envs,
            seed=int(seed),
            episodic_life=False,
            reward_clip=False,
            repeat_action_probability=float(cfg.repeat_action_probability),
            use_fire_reset=bool(cfg.fire_reset),
            noop_max=int(cfg.noop_max),
            frame_skip=int(cfg.frame_skip),
            stack_num=1,  # stacked here, by cfg.stack_reset
            use_inter_area_resize=cfg.resize == "area",
            img_height=int(cfg.image_size),
            img_width=int(cfg.image_size),
            max_episode_steps=int(cfg.max_episode_steps),
            full_action_space=False,
            gray_scale=True,
        )
        self._obs_shape = (int(cfg.frame_stack), int(cfg.image_size), int(cfg.image_size))
        self._num_actions = int(self._pool.action_space.n)
        self._lives = np.zeros(self._num_envs, np.int64)
        self._stack = FrameStack(self._num_envs, int(cfg.frame_stack),
                                 (1, int(cfg.image_size), int(cfg.image_size)),
                                 "zero" if cfg.stack_reset == "zero" else "repeat")
        self._break_at_life_loss = cfg.stack_reset == "zero" and not self._evaluation
        self._time_limit_terminal = bool(cfg.time_limit_terminal) and not self._evaluation
        self._scores = ScoreTracker(self._num_envs)
        self._started = False

    @property
    def num_actions(self) -> int:
        """Size of the game's minimal action set."""
        return self._num_actions

    @property
    def envpool_config(self) -> dict:
        """The envpool configuration in effect (for logging and checks)."""
        return dict(self._pool.config)

    @property
    def protocol(self) -> dict:
        """Episodes as envpool runs them: no-op starts, sticky actions, the frame cap, and
        whether a life loss ends the episode (training) or only game over (evaluation)."""
        config = self._pool.config
        return {"episode_end": "game over" if self._evaluation else "game over or life lost",
                "noop_max": int(config["noop_max"]),
                "sticky_actions": float(config["repeat_action_probability"]),
                "max_frames_per_episode": int(config["max_episode_steps"]) * int(config["frame_skip"]),
                "frame_skip": int(config["frame_skip"])}

    def reset(self) -> np.ndarray:
        """Start new games in every environment; returns uint8[N, stack, H, W]."""
        obs, info = self._pool.reset()
        self._store(info["env_id"], obs, info["lives"], np.ones(len(obs), bool))
        self._scores.reset()
        self._started = True
        return self._stack.stacks

    def step(self, actions: np.ndarray) -> Step:
        """Act with ``actions`` int[N] (indices into the minimal action set)."""
        actions = self._check_actions(actions)
        obs, raw, terminated, truncated, info = self._pool.step(actions)
        ids = info["env_id"]
        n = self._num_envs
        raw = scatter(ids, raw, np.zeros(n, np.float32))
        # info["terminated"] is ALE's game over; gymnasium's `terminated` is False when the
        # game ends on the time-limit step.
        game_over = scatter(ids, info["terminated"].astype(bool), np.zeros(n, bool))
        episode_end = scatter(ids, terminated | truncated, np.zeros(n, bool))
        life_lost = scatter(ids, info["lives"] < self._lives[ids], np.zeros(n, bool))
        self._store(ids, obs, info["lives"], life_lost[ids] & self._break_at_life_loss)
        terminal = game_over if self._evaluation else game_over | life_lost
        if self._time_limit_terminal:
            terminal = terminal | scatter(ids, truncated & ~terminated, np.zeros(n, bool))
        score = self._scores.update(raw, episode_end)
        if episode_end.any():
            new_obs, new_info = self._pool.reset(np.flatnonzero(episode_end).astype(np.int32))
            self._store(new_info["env_id"], new_obs, new_info["lives"],
                        np.ones(len(new_obs), bool))
        return Step(obs=self._stack.stacks, reward=np.sign(raw).astype(np.float32),
                    terminal=terminal, episode_end=episode_end, score=score)

    def close(self) -> None:
        self._pool.close()

    def _store(self, env_ids: np.ndarray, obs: np.ndarray, lives: np.ndarray,
               fresh: np.ndarray) -> None:
        """Push envpool's frames ``obs[M, 1, H, W]`` of ``env_ids``; ``fresh[M]`` start new
        stacks (a game start, or a life loss in training with ``stack_reset="zero"``)."""
        self._stack.push(env_ids, obs, fresh)
        scatter(env_ids, lives, self._lives)

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        if not self._started:
            raise RuntimeError("call reset() before step()")
        actions = np.asarray(actions)
        if actions.shape != (self._num_envs,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integers of shape ({self._num_envs},), got "
                             f"{actions.dtype}{list(actions.shape)}")
        if actions.min() < 0 or actions.max() >= self._num_actions:
            raise ValueError(f"actions must lie in [0, {self._num_actions}), got {actions.tolist()}")
        return actions.astype(np.int32)

