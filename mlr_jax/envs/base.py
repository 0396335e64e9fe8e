"""What both environment domains share: the step record, the vector-env protocol, helpers.

Every vector environment here runs ``N`` envpool environments in lock-step and hides
envpool's auto-reset: when an episode ends, the same :meth:`VecEnv.step` call already
returns the first observation of the next episode (there is never an extra "reset step"
that ignores the agent's action).
"""

from __future__ import annotations

import abc
from typing import Mapping, NamedTuple

import numpy as np

from mlr_jax.names import close_matches


class Step(NamedTuple):
    """One vector step; every field has leading axis ``N`` (number of environments).

    Attributes:
      obs: uint8[N,C,H,W] observation after the step; for environments with
        ``episode_end`` it is already the first observation of the next episode.
      reward: float32[N] reward for learning (Atari: sign-clipped; DMC: summed over the
        action repeat).
      terminal: bool[N] no bootstrapping past this step (Atari training: life lost or game
        over; Atari evaluation: game over; DMC: a true task termination, never the time
        limit).
      episode_end: bool[N] the full episode ended (game over or time limit).
      score: float32[N] raw undiscounted return of the episode that just ended where
        ``episode_end``, NaN elsewhere.
    """

    obs: np.ndarray
    reward: np.ndarray
    terminal: np.ndarray
    episode_end: np.ndarray
    score: np.ndarray


class VecEnv(abc.ABC):
    """The base of :class:`~mlr_jax.envs.atari.AtariVecEnv` and
    :class:`~mlr_jax.envs.dmc.DMCVecEnv`; subclasses set ``_num_envs`` and ``_obs_shape``."""

    _num_envs: int
    _obs_shape: tuple[int, int, int]

    @property
    def num_envs(self) -> int:
        return self._num_envs

    @property
    def obs_shape(self) -> tuple[int, int, int]:
        """``(channels, H, W)`` of one stacked observation (Atari ``(4, 84, 84)``, DMC
        ``(9, 100, 100)``)."""
        return self._obs_shape

    @abc.abstractmethod
    def reset(self) -> np.ndarray: ...

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> Step: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    def protocol(self) -> dict:
        """What an evaluation episode in this environment is, as read from the environment
        itself (recorded in ``final_eval.json``; ``mlr-jax report`` refuses to mix runs
        whose protocols differ). The base has nothing to say."""
        return {}


class FrameStack:
    """The last ``F`` frames of every environment, oldest first along the channel axis.

    Args:
      num_envs: ``N``.
      frame_stack: ``F``.
      frame_shape: ``(C, H, W)`` of one frame (Atari ``(1, 84, 84)``, DMC ``(3, 100, 100)``).
      fill: what a new stack holds before its first frame: ``"zero"`` (zeros; the authors'
        Atari env) or ``"repeat"`` (the first frame again; CURL's ``FrameStack``, envpool).
    """

    def __init__(self, num_envs: int, frame_stack: int, frame_shape: tuple[int, int, int],
                 fill: str):
        if fill not in ("zero", "repeat"):
            raise ValueError(f"fill must be 'zero' or 'repeat', got {fill!r}")
        self._channels = int(frame_shape[0])
        self._fill = fill
        self._stacks = np.zeros((num_envs, frame_stack * self._channels, *frame_shape[1:]),
                                np.uint8)

    def push(self, env_ids: np.ndarray, frames: np.ndarray, fresh: np.ndarray) -> None:
        """Append ``frames[M, C, H, W]`` to the stacks of ``env_ids[M]``; where ``fresh[M]``
        a new stack starts with that frame (the older slots filled by the ``fill`` rule)."""
        env_ids, fresh, c = np.asarray(env_ids), np.asarray(fresh, bool), self._channels
        stacks = self._stacks[env_ids]
        stacks[:, :-c] = stacks[:, c:]
        stacks[:, -c:] = frames
        if fresh.any():
            older = (np.zeros_like(stacks[fresh, :-c]) if self._fill == "zero" else
                     np.tile(frames[fresh], (1, stacks.shape[1] // c - 1, 1, 1)))
            stacks[fresh, :-c] = older
        self._stacks[env_ids] = stacks

    @property
    def stacks(self) -> np.ndarray:
        """A copy of the stacks, uint8[N, F * C, H, W]."""
        return self._stacks.copy()


class ScoreTracker:
    """Running raw return of each environment's current episode."""

    def __init__(self, num_envs: int):
        self._running = np.zeros(num_envs, np.float64)

    def reset(self) -> None:
        self._running[:] = 0.0

    def update(self, raw_reward: np.ndarray, episode_end: np.ndarray) -> np.ndarray:
        """Add ``raw_reward[N]``; return float32[N] episode scores where ``episode_end[N]``
        (NaN elsewhere) and restart those episodes' sums."""
        self._running += raw_reward
        score = np.where(episode_end, self._running, np.nan).astype(np.float32)
        self._running[episode_end] = 0.0
        return score


def resolve_task(name: str, tasks: Mapping[str, str], kind: str) -> str:
    """Envpool task id of ``name``.

    Args:
      name: a snake_case name (a key of ``tasks``, matched case-insensitively) or an
        envpool id (a value of ``tasks``).
      tasks: snake_case name -> envpool task id.
      kind: what is looked up, for the error message (``"Atari game"``).

    Raises:
      ValueError: unknown name; the message lists close matches.
    """
    if name in tasks.values():
        return name
    key = name.lower()
    if key in tasks:
        return tasks[key]
    raise ValueError(f"unknown {kind} {name!r}" + close_matches(key, sorted(tasks)))


def scatter(env_ids: np.ndarray, values: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Write envpool results ``values[M,...]`` (row ``k`` belongs to environment
    ``env_ids[k]``) into ``out[N,...]`` in place and return ``out``."""
    out[np.asarray(env_ids)] = values
    return out


def check_num_envs(num_envs: int) -> int:
    if int(num_envs) != num_envs or num_envs < 1:
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    return int(num_envs)
