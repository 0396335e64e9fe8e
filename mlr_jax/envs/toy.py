"""Two small synthetic pixel tasks behind the :class:`VecEnv` interface, for learning tests.

They are fast and have known random and optimal returns, so a few minutes of training on a
CPU show whether an agent learns; they run through the very loop, replay and agents that the
real games use (``mlr-jax train atari --game toy_catch --preset toy``).

* ``toy_catch`` (Atari agent, 3 discrete actions): a ball falls one row per step down a
  ``GRID x GRID`` board from a random column of the top row; a paddle on the bottom row moves
  left, stays or moves right. When the ball reaches the bottom row the episode ends with
  reward +1 if the paddle is under it, else -1. Grayscale frames, stacked like Atari's
  (``cfg.stack_reset``). Random play scores about -0.6; the best policy scores +1.
* ``toy_reach`` (DMC agent, 2-D actions in [-1, 1]): a dot starts at a random point of the
  square ``[-1, 1]^2`` and moves by ``STEP * action`` per control step (clipped to the
  square); the reward of a control step is ``-|position|`` (the target is the centre, drawn
  in green). Episodes end by a time limit of ``REACH_STEPS`` control steps, never a
  terminal. RGB frames; rewards summed over ``cfg.action_repeat``; 3-channel frames stacked
  like DMC's. Random play scores about -38 per 50 steps; steering straight to the centre
  about -1.3.

Both draw their randomness from ``np.random.default_rng(seed + i)`` for environment ``i``.
"""

from __future__ import annotations

import math

import numpy as np

from mlr_jax.config import AtariConfig, DMCConfig
from mlr_jax.envs.base import FrameStack, ScoreTracker, Step, VecEnv, check_num_envs

GRID = 5  # toy_catch board side, in cells
STEP = 0.15  # toy_reach: distance moved per control step at |action| = 1
REACH_STEPS = 50  # toy_reach: control steps per episode
DOT = 0.06  # toy_reach: half side of the drawn dot, as a fraction of the image
TOY_GAMES = ("toy_catch",)
TOY_TASKS = ("toy_reach",)


def _check_side(image_size: int, cells: int, name: str) -> int:
    if image_size < cells or image_size % cells:
        raise ValueError(f"{name}: image_size={image_size} must be a positive multiple of {cells}")
    return image_size // cells


class _ToyVecEnv(VecEnv):
    """What both toy tasks share: a generator per environment, frame stacks, scores, resets.

    Subclasses set their state in ``__init__`` and define ``_start(ids)`` (new episodes) and
    ``_render(ids) -> uint8[len(ids), C, H, W]``; their ``step`` ends with :meth:`_finish`.
    """

    def __init__(self, num_envs: int, seed: int, frame_stack: int,
                 frame_shape: tuple[int, int, int], fill: str):
        self._num_envs = check_num_envs(num_envs)
        self._obs_shape = (frame_stack * frame_shape[0], *frame_shape[1:])
        self._stack = FrameStack(self._num_envs, frame_stack, frame_shape, fill)
        self._rngs = [np.random.default_rng(seed + i) for i in range(self._num_envs)]
        self._scores = ScoreTracker(self._num_envs)
        self._started = False

    def reset(self) -> np.ndarray:
        everyone = np.arange(self._num_envs)
        self._start(everyone)
        self._stack.push(everyone, self._render(everyone), np.ones(self._num_envs, bool))
        self._scores.reset()
        self._started = True
        return self._stack.stacks

    def close(self) -> None:
        pass

    def _check_started(self) -> None:
        if not self._started:
            raise RuntimeError("call reset() before step()")

    def _finish(self, reward: np.ndarray, terminal: np.ndarray, episode_end: np.ndarray) -> Step:
        """Score the step, start new episodes where ``episode_end``, and return the frames
        (a new episode's first stack where one started)."""
        score = self._scores.update(reward, episode_end)
        self._start(np.flatnonzero(episode_end))
        everyone = np.arange(self._num_envs)
        self._stack.push(everyone, self._render(everyone), episode_end)
        return Step(obs=self._stack.stacks, reward=reward.astype(np.float32), terminal=terminal,
                    episode_end=episode_end, score=score)


class CatchVecEnv(_ToyVecEnv):
    """``num_envs`` games of ``toy_catch`` in lock-step (see the module docstring)."""

    def __init__(self, cfg: AtariConfig, num_envs: int, seed: int, evaluation: bool = False):
        del evaluation  # no lives: training and evaluation episodes are the same
        self._cell = _check_side(int(cfg.image_size), GRID, "toy_catch")
        super().__init__(num_envs, seed, int(cfg.frame_stack),
                         (1, int(cfg.image_size), int(cfg.image_size)),
                         "zero" if cfg.stack_reset == "zero" else "repeat")
        self._ball = np.zeros((self._num_envs, 2), np.int64)  # (row, column)
        self._paddle = np.zeros(self._num_envs, np.int64)

    @property
    def num_actions(self) -> int:
        """Left, stay, right."""
        return 3

    def step(self, actions: np.ndarray) -> Step:
        self._check_started()
        actions = np.asarray(actions)
        if actions.shape != (self._num_envs,) or actions.min() < 0 or actions.max() > 2:
            raise ValueError(f"actions must be ints in [0, 3) of shape ({self._num_envs},), "
                             f"got {actions.tolist()}")
        self._paddle = np.clip(self._paddle + actions.astype(np.int64) - 1, 0, GRID - 1)
        self._ball[:, 0] += 1
        done = self._ball[:, 0] == GRID - 1
        reward = np.where(done, np.where(self._paddle == self._ball[:, 1], 1.0, -1.0), 0.0)
        return self._finish(reward, done, done.copy())

    def _start(self, ids: np.ndarray) -> None:
        for i in ids:
            self._ball[i] = (0, self._rngs[i].integers(GRID))
            self._paddle[i] = self._rngs[i].integers(GRID)

    def _render(self, ids: np.ndarray) -> np.ndarray:
        """uint8[len(ids), 1, H, W]: the ball (255) and the paddle (128) as cells."""
        board = np.zeros((len(ids), GRID, GRID), np.uint8)
        rows = np.arange(len(ids))
        board[rows, GRID - 1, self._paddle[ids]] = 128
        board[rows, self._ball[ids, 0], self._ball[ids, 1]] = 255
        return np.kron(board, np.ones((self._cell, self._cell), np.uint8))[:, None]


class ReachVecEnv(_ToyVecEnv):
    """``num_envs`` episodes of ``toy_reach`` in lock-step (see the module docstring)."""

    def __init__(self, cfg: DMCConfig, num_envs: int, seed: int, evaluation: bool = False):
        del evaluation
        self._size = int(cfg.image_size)
        self._repeat = int(cfg.action_repeat)
        super().__init__(num_envs, seed, int(cfg.frame_stack), (3, self._size, self._size),
                         "repeat")
        self._position = np.zeros((self._num_envs, 2))
        self._elapsed = np.zeros(self._num_envs, np.int64)

    @property
    def action_dim(self) -> int:
        return 2

    @property
    def episode_length(self) -> int:
        """Agent steps per episode."""
        return math.ceil(REACH_STEPS / self._repeat)

    def step(self, actions: np.ndarray) -> Step:
        self._check_started()
        actions = np.asarray(actions, np.float64)
        if actions.shape != (self._num_envs, 2) or not np.all(np.abs(actions) <= 1 + 1e-6):
            raise ValueError(f"actions must lie in [-1, 1] with shape ({self._num_envs}, 2), "
                             f"got {actions.tolist()}")
        reward = np.zeros(self._num_envs)
        for _ in range(self._repeat):
            active = self._elapsed < REACH_STEPS
            moved = np.clip(self._position + STEP * actions, -1.0, 1.0)
            self._position = np.where(active[:, None], moved, self._position)
            reward += np.where(active, -np.linalg.norm(self._position, axis=1), 0.0)
            self._elapsed += active
        episode_end = self._elapsed >= REACH_STEPS
        return self._finish(reward, np.zeros(self._num_envs, bool), episode_end)

    def _start(self, ids: np.ndarray) -> None:
        for i in ids:
            self._position[i] = self._rngs[i].uniform(-1.0, 1.0, 2)
            self._elapsed[i] = 0

    def _render(self, ids: np.ndarray) -> np.ndarray:
        """uint8[len(ids), 3, H, W]: a green cross at the centre, the dot in red."""
        size = self._size
        frames = np.zeros((len(ids), 3, size, size), np.uint8)
        mid = size // 2
        frames[:, 1, mid, :] = frames[:, 1, :, mid] = 60
        half = max(1, round(DOT * size))
        centre = np.rint((self._position[ids] + 1.0) / 2.0 * (size - 1)).astype(np.int64)
        for k, (x, y) in enumerate(centre):
            frames[k, 0, max(0, y - half):y + half + 1, max(0, x - half):x + half + 1] = 255
        return frames
