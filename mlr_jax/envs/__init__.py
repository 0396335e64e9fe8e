"""Vector environments on envpool: Atari-100k and DMControl from pixels.

``make_env(cfg, num_envs, seed, evaluation)`` picks the domain from the config type; both
environments satisfy :class:`VecEnv` and return :class:`Step` records.
"""

from __future__ import annotations

from mlr_jax.config import AtariConfig, DMCConfig
from mlr_jax.envs.atari import AtariVecEnv, atari_task_id, atari_tasks
from mlr_jax.envs.base import Step, VecEnv
from mlr_jax.envs.dmc import DMCVecEnv, dmc_task_id, dmc_tasks
from mlr_jax.envs.gl import ensure_gl

__all__ = [
    "AtariVecEnv", "DMCVecEnv", "Step", "VecEnv", "atari_task_id", "atari_tasks",
    "dmc_task_id", "dmc_tasks", "ensure_gl", "make_env",
]


def make_env(cfg: AtariConfig | DMCConfig, num_envs: int, seed: int,
             evaluation: bool = False) -> AtariVecEnv | DMCVecEnv:
    """Vector environment for ``cfg``'s game or task.

    Args:
      cfg: :class:`AtariConfig` (game, Atari-100k settings) or :class:`DMCConfig` (task,
        action repeat, image size, frame stack, camera).
      num_envs: number of environments stepped together.
      seed: envpool seed; environment ``i`` uses ``seed + i``.
      evaluation: Atari: terminals only on game over (no life-loss terminals); DMC: no effect.
    """
    if isinstance(cfg, AtariConfig):
        return AtariVecEnv(cfg, num_envs, seed, evaluation)
    if isinstance(cfg, DMCConfig):
        return DMCVecEnv(cfg, num_envs, seed, evaluation)
    raise TypeError(f"make_env expects an AtariConfig or DMCConfig, got {type(cfg).__name__}")
