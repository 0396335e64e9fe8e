"""What the training loop needs to know about each domain, in one small adapter per domain.

The loop (``mlr_jax.loop``) is shared by Atari and DMControl. Everything that differs --
the agent, the replay, how exploration works, how a batch is drawn and what happens after an
update -- is bound here, from the config type, into a :class:`Domain`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import numpy as np

from mlr_jax import parallel
from mlr_jax.agents import atari as atari_agent
from mlr_jax.agents import atari_aux
from mlr_jax.agents import dmc as dmc_agent
from mlr_jax.agents import dmc_aux
from mlr_jax.agents.common import Agent, seed_axes
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig
from mlr_jax.replay.atari import AtariReplay
from mlr_jax.replay.dmc import DMCReplay
from mlr_jax.replay.frames import FrameMirror

if TYPE_CHECKING:  # envs imports envpool; replays and batches (the benchmark) need neither
    from mlr_jax.envs import VecEnv


@dataclasses.dataclass(frozen=True)
class Domain:
    """One domain's pieces, bound to a config.

    Attributes:
      kind: ``"atari"`` or ``"dmc"``.
      name: game or task.
      total_steps: agent steps of the run.
      learning_starts: updates happen once this many agent steps are stored (Atari:
        rlpyt's first updates come at step index ``cfg.learning_starts``, after that step's
        transition is stored, i.e. at ``cfg.learning_starts + 1`` stored steps; DMC: CURL's
        loop updates at step index ``seed_steps`` before that step's transition is stored,
        i.e. at ``seed_steps`` stored steps).
      learn_before_env_step: the order of an agent step (:class:`mlr_jax.loop._Group`):
        DMC as the authors' ``DMControl/src/train.py`` -- pick the action, update, then step
        the environment and store -- so an update never samples the transition just taken
        and a run makes ``agent_steps - seed_steps`` updates; Atari as rlpyt -- act, step and
        store, then update.
      updates_per_step: gradient updates per agent step once learning.
      env_steps_per_step: environment frames / physics steps per agent step (reporting).
      unit: agent steps -> the unit of ``cfg.run.*_every`` (Atari 1: agent steps; DMC the
        action repeat: environment steps).
      budget: label of the benchmark the run belongs to (``"100k"``, ``"500k"``).
      agent: the agent's pure functions.
      axes: the seed axis of each leaf of a group's stacked state
        (:func:`mlr_jax.agents.common.seed_axes`).
      make_replay: ``(mirror, eager_tree=True) -> replay``, a new, empty replay buffer
        keeping a copy of its frames in ``mirror`` (a :class:`~mlr_jax.replay.frames.FrameMirror`
        factory, e.g. :meth:`mlr_jax.device_frames.FrameTables.mirror`) or, with None, on the
        host only; ``eager_tree=False`` where the devices draw the batches.
      explore: ``(stacked_state, obs[S, N, ...], keys[S], step, rngs) -> actions[S, N, ...]``
        (numpy: one device-to-host copy), every seed's training behaviour at once (``rngs``:
        each seed's host generator); ``step`` is the 0-based index of the agent step about
        to be taken.
      policy_args: ``step -> args``, what the agent's ``act(state, obs, key, *args)`` takes
        besides (Atari: the epsilon of the step).
      random_steps: agent steps of uniform random actions before the policy acts (DMC's
        ``seed_steps``; Atari 0: its epsilon schedule does it).
      random_actions: ``(obs[S, N, ...], rngs) -> actions`` of those steps (host generators).
      eval_act: ``(state, obs, key) -> actions``, the evaluation policy of one seed's state,
        jitted once per run.
      eval_policy: what ``eval_act`` does, for the evaluation protocol (Atari: epsilon,
        noisy nets off; DMC: the policy's mean action on a centre crop).
      store: ``(replay, obs, actions, step_record)`` stores one agent step.
      sample: ``(replay, step, rng) -> batch`` for the train step.
      after_update: ``(replay, batch, metrics)`` (Atari: priority update).
    """

    kind: str
    name: str
    total_steps: int
    learning_starts: int
    learn_before_env_step: bool
    updates_per_step: int
    env_steps_per_step: int
    unit: int
    budget: str
    agent: Agent
    axes: Any
    make_replay: Callable[..., Any]
    explore: Callable[..., np.ndarray]
    policy_args: Callable[[int], tuple]
    random_steps: int
    random_actions: Callable[..., np.ndarray] | None
    eval_act: Callable[..., Any]
    eval_policy: dict[str, Any]
    store: Callable[..., None]
    sample: Callable[..., Any]
    after_update: Callable[..., None]


RGB = 3  # channels of one DMC frame


def frame_shape(cfg: AtariConfig | DMCConfig) -> tuple[int, ...]:
    """The shape of one stored frame: Atari ``(H, W)`` grayscale, DMC ``(3, H, W)`` RGB."""
    side = (cfg.image_size, cfg.image_size)
    return side if isinstance(cfg, AtariConfig) else (RGB,) + side


def memory_needed(cfg: AtariConfig | DMCConfig) -> dict[str, tuple[int, str]]:
    """Lower bounds of the bytes one run holds at once, each with how it was counted:
    ``replay``, the host replay's frames (uint8; its table is allocated whole but only the
    frames the run stores are ever written, so only they take memory); ``device_frames``, the
    replay's frame table on the devices with ``run.replay_frames=device``, allocated whole
    (``replay_capacity + 1`` rows, the last all zeros); ``batch``, one batch's frames (uint8;
    the network's float32 copies and activations come on top)."""
    frame = int(np.prod(frame_shape(cfg)))
    size = "x".join(map(str, frame_shape(cfg)))
    if isinstance(cfg, AtariConfig):
        stored = min(cfg.replay_capacity, cfg.steps)
        steps = max(atari_aux.window(cfg), cfg.n_step + 1)
        batch = (cfg.batch_size * steps * cfg.frame_stack * frame,
                 f"batch_size={cfg.batch_size} x {steps} steps x {cfg.frame_stack} frames of {size}")
    else:
        stored = min(cfg.replay_capacity, cfg.agent_steps)
        seq_len = dmc_aux.objective(cfg).sequence_length(cfg)
        seqs = cfg.aux_batch_size * seq_len
        batch = ((2 * cfg.batch_size + seqs) * cfg.frame_stack * frame,
                 f"(2 x batch_size={cfg.batch_size}" + (f" + aux_batch_size={cfg.aux_batch_size} "
                                                        f"x {seq_len} steps" if seqs else "")
                 + f") x {cfg.frame_stack} frames of {size}")
    rows = cfg.replay_capacity + 1
    return {"replay": (stored * frame, f"{stored} stored frames of {size} "
                                       f"(replay_capacity={cfg.replay_capacity})"),
            "device_frames": (rows * frame, f"a table of replay_capacity + 1 = {rows} frames of {size}"),
            "batch": batch}


def make_replay(cfg: AtariConfig | DMCConfig, action_dim: int = 1,
                mirror: Callable[..., FrameMirror] | None = None,
                eager_tree: bool = True) -> AtariReplay | DMCReplay:
    """An empty replay for ``cfg`` (``action_dim``: DMC's action size; unused for Atari),
    keeping a copy of its frames in ``mirror`` (a :class:`~mlr_jax.replay.frames.FrameMirror`
    factory; :func:`mlr_jax.parallel.replay_frames` says whether the loop passes one);
    ``eager_tree=False`` for a replay whose batches the devices draw (``run.sampler=device``:
    the host replay then only stores)."""
    if isinstance(cfg, AtariConfig):
        zero = cfg.stack_reset == "zero"  # the stacks the env shows the agent (envs/atari.py)
        return AtariReplay(
            cfg.replay_capacity, cfg.frame_stack, atari_aux.window(cfg), cfg.n_step, cfg.gamma,
            cfg.priority_exponent, frame_shape=frame_shape(cfg),
            stack_fill="zero" if zero else "repeat", reset_stack_on_terminal=zero,
            initial_priority=1.0,  # rlpyt's default priority for new data, as the authors ran it
            mirror=mirror, done_n_rule=cfg.done_n_rule, start_rule=cfg.replay_start_rule,
            eager_tree=eager_tree)
    return DMCReplay(cfg.replay_capacity, action_dim, cfg.frame_stack, cfg.mlr.seq_len,
                     frame_shape=frame_shape(cfg), mirror=mirror, sequence_rule=cfg.sequence_rule,
                     eager_tree=eager_tree)


def _linear(x: int, x0: int, x1: int, y0: float, y1: float) -> float:
    """``y0`` up to ``x0``, linear to ``y1`` at ``x1``, ``y1`` after (rlpyt's schedules)."""
    frac = min(1.0, max(0, x - x0) / max(1, x1 - x0))
    return y0 + frac * (y1 - y0)


def epsilon(cfg: AtariConfig, step: int) -> float:
    """Training epsilon for the action at 0-based agent step index ``step``, as rlpyt's
    ``EpsilonGreedyAgentMixin.sample_mode(itr)``: ``eps_start`` up to and including
    ``eps_ramp_start``, linear to ``eps_end`` at ``eps_steps``, ``eps_end`` after."""
    return _linear(step, cfg.eps_ramp_start, cfg.eps_steps, cfg.eps_start, cfg.eps_end)


def importance_beta(cfg: AtariConfig, step: int) -> float:
    """The importance-sampling exponent of the updates made after ``step`` agent steps are
    stored, as rlpyt's ``DQN.update_itr_hyperparams``: the updates at step index ``itr =
    step - 1`` use the beta set after the updates of ``itr - 1``, linear from ``beta_start``
    at ``learning_starts`` to ``beta_end`` at ``beta_steps`` (the authors'
    ``pri_beta_steps``, 100k whatever the run's length; 0: the run's ``steps``)."""
    itr = step - 1
    end = cfg.beta_steps or cfg.steps
    return _linear(itr - 1, cfg.learning_starts, end, cfg.beta_start, cfg.beta_end)


def sample_batch(cfg: AtariConfig | DMCConfig, replay: AtariReplay | DMCReplay, step: int,
                 rng: np.random.Generator) -> Any:
    """The train step's batch once ``step`` agent steps are stored: Atari an ``AtariBatch``
    (importance exponent :func:`importance_beta`), DMC a ``DMCBatch`` (transitions, and
    sequences with MLR)."""
    if isinstance(cfg, AtariConfig):
        return replay.sample(cfg.batch_size, importance_beta(cfg, step), rng)
    sac = replay.sample(cfg.batch_size, rng)
    uses_sequences = dmc_aux.objective(cfg).sequence_length(cfg) > 0
    seq = replay.sample_sequences(cfg.aux_batch_size, rng) if uses_sequences else None
    return dmc_agent.DMCBatch(sac=sac, seq=seq)


def _axes(agent: Agent) -> Any:
    return seed_axes(jax.eval_shape(agent.init, jax.random.PRNGKey(0)))


def _no_args(step: int) -> tuple:
    return ()


def _explorer(layout: parallel.Layout, agent: Agent, axes: Any, policy_args: Callable[[int], tuple],
              random_steps: int, random_actions: Callable[..., np.ndarray] | None) -> Callable[..., np.ndarray]:
    """:attr:`Domain.explore`: ``random_actions`` for the first ``random_steps`` agent steps,
    then the agent's training behaviour of every seed at once (one device program)."""
    act = layout.map_seeds(agent.act, axes, 0, 0, *(None,) * len(policy_args(0)))

    def explore(state, obs, keys, step, rngs):
        if step < random_steps:
            return random_actions(obs, rngs)
        return jax.device_get(act(state, obs, keys, *policy_args(step)))

    return explore


def _atari(cfg: AtariConfig, env: VecEnv, layout: parallel.Layout) -> Domain:
    agent = atari_agent.make_agent(cfg, env.num_actions)
    axes = _axes(agent)
    policy_args = lambda step: (epsilon(cfg, step),)  # noqa: E731

    def store(replay, obs, actions, rec):
        replay.add(obs[0, -1], int(actions[0]), float(rec.reward[0]), bool(rec.terminal[0]),
                   bool(rec.episode_end[0]))

    def after_update(replay, batch, metrics):
        replay.update_priorities(batch.indices, np.asarray(metrics["priorities"]))

    return Domain(
        kind="atari", name=cfg.game, total_steps=cfg.steps, learning_starts=cfg.learning_starts + 1,
        learn_before_env_step=False, updates_per_step=cfg.updates_per_step,
        env_steps_per_step=cfg.frame_skip, unit=1,
        budget="100k" if cfg.steps == 100_000 else str(cfg.steps),
        agent=agent, axes=axes, make_replay=functools.partial(make_replay, cfg, 1),
        explore=_explorer(layout, agent, axes, policy_args, 0, None), policy_args=policy_args,
        random_steps=0, random_actions=None, eval_act=jax.jit(agent.eval_act),
        eval_policy={"epsilon": cfg.eval_epsilon, "noisy_nets": "off"}, store=store,
        sample=functools.partial(sample_batch, cfg), after_update=after_update)


def _dmc(cfg: DMCConfig, env: VecEnv, layout: parallel.Layout) -> Domain:
    agent = dmc_agent.make_agent(cfg, env.action_dim)
    axes = _axes(agent)
    if env.obs_shape[0] != RGB * cfg.frame_stack:
        raise ValueError(f"DMC observations of shape {env.obs_shape}: expected {RGB * cfg.frame_stack} "
                         f"channels ({cfg.frame_stack} stacked RGB frames)")

    def random_actions(obs, rngs):
        return np.stack([rng.uniform(-1.0, 1.0, (obs.shape[1], env.action_dim)).astype(np.float32)
                         for rng in rngs])

    def store(replay, obs, actions, rec):
        replay.add(obs[0, -RGB:], actions[0], float(rec.reward[0]), bool(rec.terminal[0]),
                   bool(rec.episode_end[0]))

    budget = next((k for k, v in (("100k", 100_000), ("500k", 500_000)) if v == cfg.env_steps),
                  f"{cfg.env_steps}")
    return Domain(
        kind="dmc", name=cfg.task, total_steps=cfg.agent_steps, learning_starts=cfg.seed_steps,
        learn_before_env_step=True, updates_per_step=1, env_steps_per_step=cfg.action_repeat,
        unit=cfg.action_repeat,
        budget=budget, agent=agent, axes=axes,
        make_replay=functools.partial(make_replay, cfg, env.action_dim),
        explore=_explorer(layout, agent, axes, _no_args, cfg.seed_steps, random_actions),
        policy_args=_no_args, random_steps=cfg.seed_steps, random_actions=random_actions,
        eval_act=jax.jit(agent.eval_act), eval_policy={"actions": "mean of the policy",
                     "crop": f"centre {cfg.crop_size}x{cfg.crop_size} of {cfg.image_size}"},
        store=store, sample=functools.partial(sample_batch, cfg), after_update=lambda *_: None)


def make_domain(cfg: AtariConfig | DMCConfig, env: VecEnv,
                layout: parallel.Layout | None = None) -> Domain:
    """The :class:`Domain` of ``cfg`` for the training environment ``env`` (one seed's; it
    tells the action space) and a group of runs on ``layout`` (default: one run)."""
    layout = layout or parallel.layout()
    if cfg.num_envs != 1:
        raise ConfigError(f"num_envs={cfg.num_envs}: training uses one environment stream "
                          "(the replay buffers store a single stream, as in the paper)")
    if isinstance(cfg, AtariConfig):
        return _atari(cfg, env, layout)
    if isinstance(cfg, DMCConfig):
        return _dmc(cfg, env, layout)
    raise TypeError(f"expected an AtariConfig or DMCConfig, got {type(cfg).__name__}")
