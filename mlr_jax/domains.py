"""What the training loop needs to know about each domain, in one small adapter per domain.

The loop (``mlr_jax.loop``) is shared by Atari and DMControl. Everything that differs --
the agent, the replay, how exploration works, how a batch is drawn and what happens after an
update -- is bound here, from the config type, into a :class:`Domain`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from mlr_jax import parallel
from mlr_jax.agents import atari as atari_agent
from mlr_jax.agents import dmc as dmc_agent
from mlr_jax.agents.common import Agent
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig
from mlr_jax.replay.atari import AtariReplay
from mlr_jax.replay.dmc import DMCReplay

if TYPE_CHECKING:  # envs imports envpool; replays and batches (the benchmark) need neither
    from mlr_jax.envs import VecEnv


@dataclasses.dataclass(frozen=True)
class Domain:
    """One domain's pieces, bound to a config.

    Attributes:
      kind: ``"atari"`` or ``"dmc"``.
      name: game or task.
      total_steps: agent steps of the run.
      learning_starts: first agent step at which updates happen.
      updates_per_step: gradient updates per agent step once learning.
      env_steps_per_step: environment frames / physics steps per agent step (reporting).
      unit: agent steps -> the unit of ``cfg.run.*_every`` (Atari 1: agent steps; DMC the
        action repeat: environment steps).
      budget: label of the benchmark the run belongs to (``"100k"``, ``"500k"``).
      agent: the agent's pure functions.
      make_replay: a new, empty replay buffer.
      explore: ``(replicated_state, obs, key, step, rng) -> actions`` (numpy) for training.
      store: ``(replay, obs, actions, step_record)`` stores one agent step.
      sample: ``(replay, step, rng) -> batch`` for the train step.
      after_update: ``(replay, batch, metrics)`` (Atari: priority update).
    """

    kind: str
    name: str
    total_steps: int
    learning_starts: int
    updates_per_step: int
    env_steps_per_step: int
    unit: int
    budget: str
    agent: Agent
    make_replay: Callable[[], Any]
    explore: Callable[..., np.ndarray]
    store: Callable[..., None]
    sample: Callable[..., Any]
    after_update: Callable[..., None]


RGB = 3  # channels of one DMC frame


def frame_shape(cfg: AtariConfig | DMCConfig) -> tuple[int, ...]:
    """The shape of one stored frame: Atari ``(H, W)`` grayscale, DMC ``(3, H, W)`` RGB."""
    side = (cfg.image_size, cfg.image_size)
    return side if isinstance(cfg, AtariConfig) else (RGB,) + side


def make_replay(cfg: AtariConfig | DMCConfig, action_dim: int = 1) -> AtariReplay | DMCReplay:
    """An empty replay for ``cfg`` (``action_dim``: DMC's action size; unused for Atari),
    keeping its frames where ``run.replay_frames`` says (:func:`mlr_jax.parallel.replay_frames`)."""
    on_device = parallel.replay_frames(cfg.run.replay_frames) == "device"
    if isinstance(cfg, AtariConfig):
        return AtariReplay(
            cfg.replay_capacity, cfg.frame_stack, cfg.mlr.seq_len, cfg.n_step, cfg.gamma,
            cfg.priority_exponent, frame_shape=frame_shape(cfg),
            initial_priority=1.0,  # rlpyt's default priority for new data, as the authors ran it
            frames_on_device=on_device)
    return DMCReplay(cfg.replay_capacity, action_dim, cfg.frame_stack, cfg.mlr.seq_len,
                     frame_shape=frame_shape(cfg), frames_on_device=on_device)


def sample_batch(cfg: AtariConfig | DMCConfig, replay: AtariReplay | DMCReplay, step: int,
                 rng: np.random.Generator) -> Any:
    """The train step's batch at agent step ``step``: Atari an ``AtariBatch`` (importance
    exponent annealed linearly from ``beta_start`` to ``beta_end`` over the run), DMC a
    ``DMCBatch`` (transitions, and sequences with MLR)."""
    if isinstance(cfg, AtariConfig):
        frac = min(1.0, step / cfg.steps)
        return replay.sample(cfg.batch_size, cfg.beta_start + frac * (cfg.beta_end - cfg.beta_start), rng)
    sac = replay.sample(cfg.batch_size, rng)
    seq = replay.sample_sequences(cfg.aux_batch_size, rng) if cfg.aux == "mlr" else None
    return dmc_agent.DMCBatch(sac=sac, seq=seq)


def _atari(cfg: AtariConfig, env: VecEnv) -> Domain:
    agent = atari_agent.make_agent(cfg, env.num_actions)
    act = parallel.on_first_replica(agent.act)

    def epsilon(step: int) -> float:
        frac = min(1.0, step / max(1, cfg.eps_steps - 1))
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)

    def explore(state, obs, key, step, rng):
        return np.asarray(act(state, obs, key, epsilon(step)))

    def store(replay, obs, actions, rec):
        replay.add(obs[0, -1], int(actions[0]), float(rec.reward[0]), bool(rec.terminal[0]),
                   bool(rec.episode_end[0]))

    def after_update(replay, batch, metrics):
        replay.update_priorities(batch.indices, np.asarray(metrics["priorities"]))

    return Domain(
        kind="atari", name=cfg.game, total_steps=cfg.steps, learning_starts=cfg.learning_starts,
        updates_per_step=cfg.updates_per_step, env_steps_per_step=cfg.frame_skip, unit=1,
        budget="100k" if cfg.steps == 100_000 else str(cfg.steps),
        agent=agent, make_replay=lambda: make_replay(cfg),
        explore=explore, store=store, sample=functools.partial(sample_batch, cfg),
        after_update=after_update)


def _dmc(cfg: DMCConfig, env: VecEnv) -> Domain:
    agent = dmc_agent.make_agent(cfg, env.action_dim)
    act = parallel.on_first_replica(agent.act)
    if env.obs_shape[0] != RGB * cfg.frame_stack:
        raise ValueError(f"DMC observations of shape {env.obs_shape}: expected {RGB * cfg.frame_stack} "
                         f"channels ({cfg.frame_stack} stacked RGB frames)")

    def explore(state, obs, key, step, rng):
        if step < cfg.seed_steps:
            return rng.uniform(-1.0, 1.0, (obs.shape[0], env.action_dim)).astype(np.float32)
        return np.asarray(act(state, obs, key))

    def store(replay, obs, actions, rec):
        replay.add(obs[0, -RGB:], actions[0], float(rec.reward[0]), bool(rec.terminal[0]),
                   bool(rec.episode_end[0]))

    budget = next((k for k, v in (("100k", 100_000), ("500k", 500_000)) if v == cfg.env_steps),
                  f"{cfg.env_steps}")
    return Domain(
        kind="dmc", name=cfg.task, total_steps=cfg.agent_steps, learning_starts=cfg.seed_steps,
        updates_per_step=1, env_steps_per_step=cfg.action_repeat, unit=cfg.action_repeat,
        budget=budget, agent=agent, make_replay=lambda: make_replay(cfg, env.action_dim),
        explore=explore, store=store, sample=functools.partial(sample_batch, cfg),
        after_update=lambda *_: None)


def make_domain(cfg: AtariConfig | DMCConfig, env: VecEnv) -> Domain:
    """The :class:`Domain` of ``cfg`` for the training environment ``env``."""
    if cfg.num_envs != 1:
        raise ConfigError(f"num_envs={cfg.num_envs}: training uses one environment stream "
                          "(the replay buffers store a single stream, as in the paper)")
    if isinstance(cfg, AtariConfig):
        return _atari(cfg, env)
    if isinstance(cfg, DMCConfig):
        return _dmc(cfg, env)
    raise TypeError(f"expected an AtariConfig or DMCConfig, got {type(cfg).__name__}")
