"""A group's training environments (``--seeds``): every seed's environment stream, stepped
together.

Environment ``i`` of ``make_env(cfg, n, seed)`` behaves as the environment of ``seed + i``
alone (every backend seeds it so: envpool, dm_control, the toy tasks; checked by
``tests/envs/test_group_env.py``), so the seeds of a group that follow each other share one
vector environment: envpool steps them on its threads in one call, and Python handles the
group once a step instead of once a seed. Seeds that do not follow each other get vector
environments of their own.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from mlr_jax.envs.base import Step, VecEnv


def consecutive_runs(seeds: Sequence[int]) -> list[tuple[int, int]]:
    """``(first seed, count)`` of each run of consecutive seeds, in order:
    ``[0, 1, 2, 7, 8]`` -> ``[(0, 3), (7, 2)]``."""
    runs: list[tuple[int, int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][0] + runs[-1][1]:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((int(seed), 1))
    return runs


class GroupEnv:
    """One training environment stream per seed of ``seeds``, stepped together.

    Args:
      make: ``(num_envs, seed) -> VecEnv`` (e.g. :func:`mlr_jax.envs.make_env` of the run's
        config); called once per run of consecutive seeds.
      seeds: the group's seeds, in its order.

    Observations, actions and :class:`Step` fields carry a leading seed axis ``S`` followed by
    each seed's one environment: ``obs uint8[S, 1, C, H, W]``, ``actions [S, 1, ...]``.
    """

    def __init__(self, make: Callable[[int, int], VecEnv], seeds: Sequence[int]):
        self.envs = [make(count, first) for first, count in consecutive_runs(seeds)]
        self.num_seeds = len(seeds)

    @property
    def first(self) -> VecEnv:
        """The first vector environment (its action and observation spaces are everyone's)."""
        return self.envs[0]

    def reset(self) -> np.ndarray:
        """Start every seed's first episode; ``obs uint8[S, 1, C, H, W]``."""
        return np.concatenate([env.reset() for env in self.envs])[:, None]

    def step(self, actions: np.ndarray) -> Step:
        """Every seed acts with its ``actions[S, 1, ...]``; the seeds' steps, ``[S, 1, ...]``."""
        actions = np.asarray(actions)
        if actions.shape[:2] != (self.num_seeds, 1):
            raise ValueError(f"actions of shape {actions.shape}: expected [seeds={self.num_seeds}, 1, ...]")
        steps, start = [], 0
        for env in self.envs:
            steps.append(env.step(actions[start:start + env.num_envs, 0]))
            start += env.num_envs
        return Step(*((np.concatenate(parts) if len(parts) > 1 else parts[0])[:, None]
                      for parts in zip(*steps)))

    def close(self) -> None:
        for env in self.envs:
            env.close()
