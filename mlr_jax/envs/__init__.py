"""Vector environments on envpool: Atari-100k and DMControl from pixels, plus two synthetic
tasks for learning tests (:mod:`mlr_jax.envs.toy`).

``make_env(cfg, num_envs, seed, evaluation)`` picks the domain from the config type and the
game or task name; every environment satisfies :class:`VecEnv` and returns :class:`Step`
records.
"""

from __future__ import annotations

from mlr_jax.config import AtariConfig, DMCConfig
from mlr_jax.envs.atari import AtariVecEnv, atari_task_id, atari_tasks
from mlr_jax.envs.base import Step, VecEnv, resolve_task
from mlr_jax.envs.dmc import DMCVecEnv, dmc_task_id, dmc_tasks
from mlr_jax.envs.gl import ensure_gl
from mlr_jax.envs.toy import TOY_GAMES, TOY_TASKS, CatchVecEnv, ReachVecEnv

__all__ = [
    "AtariVecEnv", "CatchVecEnv", "DMCVecEnv", "ReachVecEnv", "Step", "TOY_GAMES", "TOY_TASKS",
    "VecEnv", "atari_task_id", "atari_tasks", "check_name", "dmc_task_id", "dmc_tasks",
    "ensure_gl", "make_env",
]


def check_name(cfg: AtariConfig | DMCConfig) -> None:
    """Raise ValueError (with close matches) unless ``cfg``'s game or task exists: an envpool
    game or task, or one of the toy tasks."""
    if isinstance(cfg, AtariConfig):
        resolve_task(cfg.game, atari_tasks() | {g: g for g in TOY_GAMES}, "Atari game")
    else:
        resolve_task(cfg.task, dmc_tasks() | {t: t for t in TOY_TASKS}, "DMC task")


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
        toy = cfg.task in TOY_TASKS
        return (ReachVecEnv if toy else DMCVecEnv)(cfg, num_envs, seed, evaluation)
    raise TypeError(f"make_env expects an AtariConfig or DMCConfig, got {type(cfg).__name__}")
