"""Vector environments on envpool: Atari-100k and DMControl from pixels (also on dm_control
itself, :mod:`mlr_jax.envs.dmc_suite`), plus two synthetic tasks for learning tests
(:mod:`mlr_jax.envs.toy`).

``make_env(cfg, num_envs, seed, evaluation)`` picks the domain from the config type and the
game or task name; every environment satisfies :class:`VecEnv` and returns :class:`Step`
records.
"""

from __future__ import annotations

import numpy as np

from mlr_jax.config import AtariConfig, ConfigError, DMCConfig
from mlr_jax.envs.atari import AtariVecEnv, atari_task_id, atari_tasks
from mlr_jax.envs.base import Step, VecEnv, resolve_task
from mlr_jax.envs.dmc import DMCVecEnv, dmc_task_id, dmc_tasks
from mlr_jax.envs.dmc_suite import SuiteVecEnv, suite_tasks
from mlr_jax.envs.gl import ensure_gl
from mlr_jax.envs.toy import TOY_GAMES, TOY_TASKS, CatchVecEnv, ReachVecEnv

__all__ = [
    "AtariVecEnv", "CatchVecEnv", "DMCVecEnv", "ReachVecEnv", "Step", "SuiteVecEnv", "TOY_GAMES",
    "TOY_TASKS", "suite_tasks",
    "VecEnv", "atari_task_id", "atari_tasks", "check_name", "dmc_task_id", "dmc_tasks",
    "constant_action_scores", "ensure_gl", "make_env", "random_policy_scores",
]


def check_name(cfg: AtariConfig | DMCConfig) -> None:
    """Raise :class:`~mlr_jax.config.ConfigError` (with close matches) unless ``cfg``'s game or
    task exists: an envpool game or task (a dm_control one with ``env_backend="dm_control"``),
    or one of the toy tasks."""
    try:
        if isinstance(cfg, AtariConfig):
            resolve_task(cfg.game, atari_tasks() | {g: g for g in TOY_GAMES}, "Atari game")
        elif cfg.env_backend == "dm_control":
            resolve_task(cfg.task, suite_tasks() | {t: t for t in TOY_TASKS}, "DMC task")
        else:
            resolve_task(cfg.task, dmc_tasks() | {t: t for t in TOY_TASKS}, "DMC task")
    except ValueError as e:
        raise ConfigError(str(e)) from None


def make_env(cfg: AtariConfig | DMCConfig, num_envs: int, seed: int,
             evaluation: bool = False) -> VecEnv:
    """Vector environment for ``cfg``'s game or task.

    Args:
      cfg: :class:`AtariConfig` (game, Atari-100k settings) or :class:`DMCConfig` (task,
        action repeat, image size, frame stack, camera).
      num_envs: number of environments stepped together.
      seed: envpool seed; environment ``i`` uses ``seed + i``.
      evaluation: Atari: terminals only on game over (no life-loss terminals); DMC: no effect.
    """
    if isinstance(cfg, AtariConfig):
        toy = cfg.game in TOY_GAMES
        return (CatchVecEnv if toy else AtariVecEnv)(cfg, num_envs, seed, evaluation)
    if isinstance(cfg, DMCConfig):
        if cfg.task in TOY_TASKS:
            return ReachVecEnv(cfg, num_envs, seed, evaluation)
        backend = SuiteVecEnv if cfg.env_backend == "dm_control" else DMCVecEnv
        return backend(cfg, num_envs, seed, evaluation)
    raise TypeError(f"make_env expects an AtariConfig or DMCConfig, got {type(cfg).__name__}")


def _policy_scores(cfg: AtariConfig | DMCConfig, episodes: int, num_envs: int, seed: int,
                   choose) -> np.ndarray:
    """Scores of ``episodes`` evaluation episodes of ``choose(rng, env) -> actions``. Each of
    the ``num_envs`` environments contributes its first ``ceil(episodes / num_envs)``
    episodes, so short episodes are not over-represented."""
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    per_env = -(-episodes // num_envs)
    env = make_env(cfg, num_envs, seed=seed, evaluation=True)
    rng = np.random.default_rng(seed)
    scores: list[list[float]] = [[] for _ in range(num_envs)]
    try:
        env.reset()
        while min(len(s) for s in scores) < per_env:
            step = env.step(choose(rng, env))
            for i in np.flatnonzero(step.episode_end):
                scores[i].append(float(step.score[i]))
    finally:
        env.close()
    return np.array([s for env_scores in scores for s in env_scores[:per_env]][:episodes])


def random_actions(rng: np.random.Generator, env) -> np.ndarray:
    """One uniform random action per environment of ``env``: int32[num_envs] over the
    actions (Atari) or float32[num_envs, A] over ``[-1, 1]^A`` (DMC)."""
    if hasattr(env, "num_actions"):
        return rng.integers(0, env.num_actions, env.num_envs).astype(np.int32)
    return rng.uniform(-1.0, 1.0, (env.num_envs, env.action_dim)).astype(np.float32)


def random_policy_scores(cfg: AtariConfig | DMCConfig, episodes: int, num_envs: int = 8,
                         seed: int = 123) -> np.ndarray:
    """float64[episodes]: the uniform random policy's (:func:`random_actions`) scores on
    ``cfg``'s evaluation env."""
    return _policy_scores(cfg, episodes, num_envs, seed, random_actions)


def constant_action_scores(cfg: AtariConfig, episodes: int, num_envs: int = 8,
                           seed: int = 123) -> dict[int, np.ndarray]:
    """``{action: float64[episodes]}``: the scores of pressing one action for whole episodes,
    for every action of ``cfg``'s game. The best of them is the bar a learned Atari policy
    must clear to show more than the choice of one good button (in Road Runner, UPLEFT
    alone scores about 1,000)."""
    if not isinstance(cfg, AtariConfig):
        raise TypeError("constant_action_scores needs a discrete-action (Atari) config")
    probe = make_env(cfg, 1, seed=seed, evaluation=True)
    num_actions = probe.num_actions
    probe.close()
    return {a: _policy_scores(cfg, episodes, num_envs, seed,
                              lambda rng, env, a=a: np.full(env.num_envs, a))
            for a in range(num_actions)}
