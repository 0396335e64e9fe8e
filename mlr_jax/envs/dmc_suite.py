"""DeepMind Control Suite from pixels through dm_control itself (``env_backend="dm_control"``),
as the authors ran it: ``dmc2gym.make(domain, task, seed, visualize_reward=False,
from_pixels=True, height=100, width=100, frame_skip=action_repeat, camera_id=0)`` under
CURL's ``FrameStack(k=3)``.

What dmc2gym does, and so what this does (one ``suite.load`` per environment, stepped in a
plain loop: correct, not fast):

* ``task_kwargs={"random": seed}`` seeds the task's initial states (environment ``i`` of a
  vector gets ``seed + i``); ``visualize_reward=False``;
* the agent's actions in [-1, 1] are mapped linearly onto the task's action bounds (which
  are [-1, 1] for the whole suite, so the map is the identity there);
* an agent step repeats the action for ``action_repeat`` control steps, sums the rewards
  (``time_step.reward or 0``) and stops early when the episode ends (``time_step.last()``);
* the observation is ``physics.render(height, width, camera_id)`` after the last of them;
* an episode ends at the task's time limit (1,000 control steps), which is not a terminal
  (dm_control's discount stays 1 there); a true termination (discount 0) is.

MuJoCo renders through the GL platform :func:`mlr_jax.envs.gl.ensure_gl` sets up
(``MUJOCO_GL``), which must happen before dm_control is imported: this module imports it
only when an environment is made.
"""

from __future__ import annotations

import functools

import numpy as np

from mlr_jax.config import DMCConfig
from mlr_jax.envs.base import resolve_task
from mlr_jax.envs.dmc import PixelControlVecEnv
from mlr_jax.envs.gl import ensure_gl


@functools.cache
def suite_tasks() -> dict[str, str]:
    """snake_case ``<domain>_<task>`` (``"ball_in_cup_catch"``) -> ``"<domain>/<task>"`` for
    every task of dm_control's suite."""
    ensure_gl()
    from dm_control import suite

    return {f"{domain}_{task}": f"{domain}/{task}" for domain, task in suite.ALL_TASKS}


def versions() -> dict[str, str]:
    """dm_control's and its MuJoCo's versions."""
    import importlib.metadata

    import mujoco

    return {"dm_control": importlib.metadata.version("dm_control"), "mujoco": mujoco.__version__}


class SuiteVecEnv(PixelControlVecEnv):
    """``num_envs`` DMC tasks from pixels on dm_control, stepped one after another; the same
    interface and protocol as :class:`~mlr_jax.envs.dmc.DMCVecEnv` (see the module docstring
    for what follows dmc2gym)."""

    backend = "dm_control"

    def __init__(self, cfg: DMCConfig, num_envs: int, seed: int, evaluation: bool = False):
        del evaluation
        domain, task = resolve_task(cfg.task, suite_tasks(), "DMC task").split("/")
        super().__init__(cfg, num_envs)
        from dm_control import suite

        self._envs = [suite.load(domain, task, task_kwargs={"random": int(seed) + i},
                                 visualize_reward=False) for i in range(self._num_envs)]
        spec = self._envs[0].action_spec()
        self._true_low = np.asarray(spec.minimum, np.float64)
        self._true_high = np.asarray(spec.maximum, np.float64)
        self._low = -np.ones(spec.shape, np.float32)  # dmc2gym's normalised action space
        self._high = np.ones(spec.shape, np.float32)
        self._limit = int(self._envs[0]._step_limit)
        self._size, self._camera = int(cfg.image_size), int(cfg.camera_id)

    def _control(self, actions):
        n = self._num_envs
        reward = np.zeros(n, np.float64)
        terminal = np.zeros(n, bool)
        episode_end = np.zeros(n, bool)
        true = ((actions + 1.0) / 2.0 * (self._true_high - self._true_low)
                + self._true_low).astype(np.float32)
        for i, env in enumerate(self._envs):
            for _ in range(self._repeat):
                time_step = env.step(true[i])
                reward[i] += time_step.reward or 0.0
                if time_step.last():
                    episode_end[i] = True
                    terminal[i] = time_step.discount == 0.0
                    break
        return reward, terminal, episode_end

    def _restart(self, env_ids):
        for i in env_ids:
            self._envs[i].reset()

    def _render(self):
        return np.stack([env.physics.render(height=self._size, width=self._size,
                                            camera_id=self._camera) for env in self._envs])

    def close(self) -> None:
        for env in self._envs:
            env.physics.free()  # its GL context, before the interpreter shuts its renderer down
        self._envs = []
