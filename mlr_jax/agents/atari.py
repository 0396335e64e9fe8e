"""The Atari-100k agent: SPR-style data-efficient Rainbow with an auxiliary objective.

One jitted ``train_step`` does the whole update (docs/design.md "Agents"), in the order of the
authors' code (spec "Behaviours of the authors' code"):

1. fresh head noise for this update (``noise_key``); augmentation (replicate-pad shift +
   intensity, drawn per frame) for every branch, each branch its own draw;
2. RL: C51 cross-entropy of the online prediction at s_t against the projected n-step
   double-DQN target (online net with this update's noise picks the action at s_{t+n}, the
   target net with its own noise evaluates it; both on their own augmentation of s_{t+n}),
   weighted by the importance weights; priorities = KL(target || prediction);
3. the auxiliary objective ``cfg.aux`` (:mod:`mlr_jax.agents.atari_aux`: ``mlr``, ``spr`` or
   ``none``): its inputs and momentum targets outside the gradient, its loss inside, added
   with its weight;
4. the objective's momentum target is refreshed from the pre-update online weights;
   gradients are averaged over devices, clipped by global norm separately for encoder+head
   and for each of the objective's clip groups (MLR's decoder, SPR's transition model; the
   action embedding and the predictor are in no group, as in the code), Adam step;
5. the RL target net is refreshed from the post-update online weights every
   ``cfg.target_update_period`` updates and takes over this update's noise.

Per-sample randomness is drawn for the global batch and sliced per device, so the update does
not depend on the number of devices.
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from mlr_jax import parallel
from mlr_jax.agents.atari_aux import (AtariParts, AuxObjective, copy_tree, make_objective, scaled,
                                      window)
from mlr_jax.agents.common import (FINITE, Agent, all_finite, at_precision, clip_by_global_norm,
                                    compute_dtype, count_params)
from mlr_jax.config import AtariConfig
from mlr_jax.ema import ema_update
from mlr_jax.mlr.augment import intensity, random_shift
from mlr_jax.nets.atari import DuelingC51Head, NatureCNN, conv_output_size
from mlr_jax.rl.c51 import c51_loss, double_dqn_target, kl_priority, select_actions

STEM = ("encoder", "head")  # the Q network: one clip group, and what the RL target copies


@flax.struct.dataclass
class AtariState:
    """Everything an update changes.

    Attributes:
      params: online parameters ``{"encoder", "head"}`` plus the auxiliary objective's
        modules (MLR: ``"decoder", "action_embedding", "predictor"``; SPR: ``"dynamics",
        "predictor"``; none for the Baseline).
      target_params: RL target network ``{"encoder", "head"}``.
      aux_target: the objective's momentum target ``{"encoder", "projection"}`` (the head's
        first layers); empty for the Baseline.
      opt_state: Adam state of ``params``.
      step: int32 number of updates done.
      noise_key: key of the latest update's head noise (acting uses it).
      target_noise_key: key of the target network's head noise.
    """

    params: Any
    target_params: Any
    aux_target: Any
    opt_state: Any
    step: jax.Array
    noise_key: jax.Array
    target_noise_key: jax.Array


class AtariNetworks(NamedTuple):
    """Static pieces built from the config (:func:`build_networks`): Flax modules, the C51
    support, the optimiser and the auxiliary objective. Every stage of an update below is a
    function of ``(nets, ...)``, so each can be called and tested on its own."""

    cfg: AtariConfig
    num_actions: int
    latent_shape: tuple[int, int, int]
    encoder: NatureCNN
    head: DuelingC51Head
    support: jax.Array
    optimizer: optax.GradientTransformation
    objective: AuxObjective | None


def build_networks(cfg: AtariConfig, num_actions: int) -> AtariNetworks:
    """Modules, optimiser and objective of the agent for a game with ``num_actions``."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    dtype = compute_dtype(cfg.run.precision)
    side = conv_output_size(cfg.image_size, cfg.kernels, cfg.strides)
    conv = parallel.conv_impl(cfg.run.conv_impl)
    nets = AtariNetworks(
        cfg=cfg, num_actions=num_actions, latent_shape=(cfg.channels[-1], side, side),
        encoder=NatureCNN(cfg.channels, cfg.kernels, cfg.strides, cfg.renormalize, dtype, conv),
        head=DuelingC51Head(num_actions, cfg.num_atoms, cfg.hidden_size, cfg.noisy_std,
                            cfg.head_grad_scale, dtype),
        support=jnp.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms),
        optimizer=optax.adam(cfg.lr, eps=cfg.adam_eps),
        objective=None)
    parts = AtariParts(cfg, num_actions, nets.latent_shape, dtype, conv,
                       functools.partial(encode, nets), functools.partial(augment, nets))
    return nets._replace(objective=make_objective(parts))


def encode(nets: AtariNetworks, params: Any, frames: jax.Array) -> jax.Array:
    """``params`` of the encoder; frames f32[..., C, H, W] -> latents f32[..., D]."""
    lead = frames.shape[:-3]
    latents = nets.encoder.apply({"params": params}, frames.reshape((-1,) + frames.shape[-3:]))
    return latents.reshape(lead + (math.prod(nets.latent_shape),))


def q_log_probs(nets: AtariNetworks, params: Any, latent: jax.Array,
                noise_key: chex.PRNGKey | None) -> jax.Array:
    """``params`` with "head"; latent f32[B, D] -> log-probabilities f32[B, A, N]."""
    return nets.head.apply({"params": params["head"]}, latent, noise_key)


def augment(nets: AtariNetworks, key: chex.PRNGKey, frames: jax.Array,
            axis_name: str | None) -> jax.Array:
    """Shift + intensity drawn for every frame of f32[B, T, C, H, W] (global-batch draws)."""
    cfg = nets.cfg

    def one_sample(sample_key, sample):
        shift_key, intensity_key = jax.random.split(sample_key)
        shifted = random_shift(shift_key, sample, cfg.shift_pad)
        return intensity(intensity_key, shifted, cfg.intensity_scale)

    return jax.vmap(one_sample)(parallel.sample_keys(key, frames.shape[0], axis_name), frames)


def init(nets: AtariNetworks, key: chex.PRNGKey) -> AtariState:
    """Fresh agent state: online params, the RL target and the objective's target as copies."""
    cfg = nets.cfg
    keys = jax.random.split(key, 6)
    frames = jnp.zeros((1, cfg.frame_stack, cfg.image_size, cfg.image_size), jnp.float32)
    params = {"encoder": nets.encoder.init(keys[0], frames)["params"],
              "head": nets.head.init(keys[1], jnp.zeros((1, math.prod(nets.latent_shape))))["params"]}
    aux_params, aux_target = nets.objective.init(keys[2], params)
    params = params | aux_params
    return AtariState(
        params=params,
        target_params=copy_tree({name: params[name] for name in STEM}),
        aux_target=aux_target,
        opt_state=nets.optimizer.init(params),
        step=jnp.zeros((), jnp.int32),
        noise_key=keys[5],
        target_noise_key=keys[5])


def check_batch(nets: AtariNetworks, batch: Any) -> None:
    """A clear error for a batch of the wrong shapes (see :class:`mlr_jax.replay.atari.AtariBatch`)."""
    cfg = nets.cfg
    min_length = max(window(cfg), cfg.n_step + 1)
    obs = batch.obs
    frame_shape = (cfg.frame_stack, cfg.image_size, cfg.image_size)
    if obs.ndim != 5 or obs.shape[1] < min_length or obs.shape[2:] != frame_shape:
        raise ValueError(
            f"batch.obs must be uint8[B, L>={min_length}, {cfg.frame_stack}, "
            f"{cfg.image_size}, {cfg.image_size}], got shape {obs.shape}")
    chex.assert_shape(batch.actions, obs.shape[:2])
    chex.assert_shape([batch.returns, batch.discounts, batch.weights], obs.shape[:1])


def rl_inputs(nets: AtariNetworks, state: AtariState, batch: Any, keys: jax.Array,
              noise_key: chex.PRNGKey, axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Augmented s_t f32[B, C, H, W] and the projected double-DQN target f32[B, N].

    ``keys``: three keys (online and target augmentation of s_{t+n}, augmentation of s_t).
    """
    n = nets.cfg.n_step
    next_frames = scaled(batch.obs[:, n:n + 1])

    def next_log_probs(params, key, noise):
        frames = augment(nets, key, next_frames, axis_name)[:, 0]
        return q_log_probs(nets, params, encode(nets, params["encoder"], frames), noise)

    online_next = next_log_probs(state.params, keys[0], noise_key)
    target_next = next_log_probs(state.target_params, keys[1], state.target_noise_key)
    target = double_dqn_target(jnp.exp(online_next), jnp.exp(target_next), batch.returns,
                               batch.discounts, nets.support)
    return augment(nets, keys[2], scaled(batch.obs[:, :1]), axis_name)[:, 0], target


def refresh_targets(nets: AtariNetworks, state: AtariState, params: Any,
                    noise_key: chex.PRNGKey) -> AtariState:
    """The state after an update to ``params``: the objective's target from the PRE-update
    weights (``state.params``), the RL target from the post-update ``params`` every
    ``cfg.target_update_period`` updates (taking over ``noise_key``), step + 1."""
    cfg = nets.cfg
    step = state.step + 1
    refresh = step % cfg.target_update_period == 0
    refreshed = ema_update(state.target_params, {name: params[name] for name in STEM},
                           cfg.target_tau)
    return state.replace(
        params=params, aux_target=nets.objective.refresh(state.aux_target, state.params),
        step=step, noise_key=noise_key,
        target_params=jax.tree.map(lambda new, old: jnp.where(refresh, new, old),
                                   refreshed, state.target_params),
        target_noise_key=jnp.where(refresh, noise_key, state.target_noise_key))


def train_step(nets: AtariNetworks, state: AtariState, batch: Any, key: chex.PRNGKey,
               axis_name: str | None = None) -> tuple[AtariState, dict[str, jax.Array]]:
    """One update on this device's shard of ``batch`` (an AtariBatch); see the module doc."""
    cfg, objective = nets.cfg, nets.objective
    check_batch(nets, batch)
    keys = jax.random.split(key, 7)
    noise_key = keys[0]  # this update's head noise
    rl_input, rl_target = rl_inputs(nets, state, batch, keys[1:4], noise_key, axis_name)
    aux_inputs, aux_targets = objective.prepare(state, batch, keys[4:7], axis_name)

    def loss_fn(params):
        latent = encode(nets, params["encoder"], rl_input)
        log_probs = q_log_probs(nets, params, latent, noise_key)
        chosen = select_actions(log_probs, batch.actions[:, 0])
        rl_loss = jnp.mean(batch.weights * c51_loss(chosen, rl_target))
        aux_loss, _ = objective.loss(params, aux_inputs, aux_targets, latent, batch, axis_name)
        return rl_loss + objective.weight * aux_loss, {
            "rl_loss": rl_loss, "aux_loss": aux_loss, "chosen_log_probs": chosen,
            "q_mean": jnp.mean(jnp.exp(log_probs) @ nets.support)}

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean(grads, axis_name)
    # Clip groups of the code: encoder + head, and each of the objective's own; the
    # action embedding and the predictor are in none.
    stem, stem_norm = clip_by_global_norm({name: grads[name] for name in STEM}, cfg.clip_norm)
    grads = grads | stem
    metrics = {"loss": loss, "rl_loss": aux["rl_loss"], "q_mean": aux["q_mean"],
               "grad_norm": stem_norm}
    if objective.metric:
        metrics[objective.metric] = aux["aux_loss"]
    for group in objective.clip_groups:
        grads[group], metrics[f"{group}_grad_norm"] = clip_by_global_norm(grads[group],
                                                                          cfg.clip_norm)
    updates, opt_state = nets.optimizer.update(grads, state.opt_state, state.params)
    new_state = refresh_targets(nets, state.replace(opt_state=opt_state),
                                optax.apply_updates(state.params, updates), noise_key)
    metrics = parallel.pmean(metrics, axis_name)
    metrics[FINITE] = all_finite(metrics)
    metrics["priorities"] = kl_priority(aux["chosen_log_probs"], rl_target)
    return new_state, metrics


def _select(nets: AtariNetworks, state: AtariState, obs: jax.Array, key: chex.PRNGKey,
            epsilon: float | jax.Array, noisy: bool) -> jax.Array:
    """Epsilon-greedy on the expected Q of the online net; obs uint8[N, C, H, W] -> int32[N]."""
    chex.assert_rank(obs, 4)
    latent = encode(nets, state.params["encoder"], scaled(obs))
    log_probs = q_log_probs(nets, state.params, latent, state.noise_key if noisy else None)
    greedy = jnp.argmax(jnp.exp(log_probs) @ nets.support, axis=-1)
    explore_key, random_key = jax.random.split(key)
    explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
    random_actions = jax.random.randint(random_key, greedy.shape, 0, nets.num_actions)
    return jnp.where(explore, random_actions, greedy).astype(jnp.int32)


def act(nets: AtariNetworks, state: AtariState, obs: jax.Array, key: chex.PRNGKey,
        epsilon: float | jax.Array) -> jax.Array:
    """Training behaviour: the latest update's head noise, epsilon-greedy. -> int32[N]."""
    return _select(nets, state, obs, key, epsilon, noisy=True)


def eval_act(nets: AtariNetworks, state: AtariState, obs: jax.Array,
             key: chex.PRNGKey) -> jax.Array:
    """Evaluation behaviour: no noise, epsilon ``cfg.eval_epsilon``. -> int32[N]."""
    return _select(nets, state, obs, key, nets.cfg.eval_epsilon, noisy=False)


def param_counts(state: AtariState) -> dict[str, int]:
    """Online parameter counts per component plus ``"total"`` (works on eval_shape output)."""
    counts = {name: count_params(tree) for name, tree in state.params.items()}
    return counts | {"total": sum(counts.values())}


def make_agent(cfg: AtariConfig, num_actions: int) -> Agent:
    """The Atari agent's jitted functions for ``cfg`` and a game with ``num_actions``."""
    nets = build_networks(cfg, num_actions)

    def compiled(fn, **kwargs):
        return jax.jit(at_precision(functools.partial(fn, nets), cfg.run.precision), **kwargs)

    return Agent(init=jax.jit(functools.partial(init, nets)),
                 train_step=compiled(train_step, static_argnames="axis_name"),
                 act=compiled(act), eval_act=compiled(eval_act), param_counts=param_counts)
