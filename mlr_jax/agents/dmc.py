"""The DMControl agent: CURL-style SAC from pixels with the MLR auxiliary objective.

One update (:func:`train_step`) reproduces the order of the authors' ``MTMSacAgent.update``:

1. critic: random 100 -> 84 crops of ``obs`` and ``next_obs`` (independent; offsets 0..15 as
   the code's numpy crop, ``cfg.sac_crop_rule``), soft Bellman
   target from the current actor, target critic and temperature; critic Adam step (trains
   the encoder's convs, Linear and LayerNorm and both Q MLPs);
2. the auxiliary objective (:mod:`mlr_jax.agents.dmc_aux`); MLR (``aux="mlr"``): cube mask
   on the 100x100 sequence frames (all 9 channels), then random crop + intensity per frame for the masked online view and, separately, for the
   unmasked target view; masked latents from the critic's encoder (as updated by step 1),
   interleaved with action tokens through the decoder, projection and predictor, against the
   momentum encoder + momentum projection; its own Adam (lr ``aux_lr * aux_lr_scale`` with the
   code's inverse-square-root warm-up), gradients clipped at ``aux_clip_norm`` over all MLR
   parameters (critic encoder included);
3. every ``actor_update_freq`` updates: actor and temperature on the step-1 crop of ``obs``,
   with the critic as updated by steps 1-2 and the conv features detached;
4. every ``target_update_freq`` updates: critic target (Q MLPs with ``critic_tau``, encoder
   with ``encoder_tau``), momentum encoder and momentum projection (``momentum_tau``).

Counting: ``state.step`` is the number of updates done so far, and steps 3-4 run when
``state.step % freq == 0``. The authors gate on the agent step (``step % freq`` in env steps
with both scaled by the action repeat) and start updating at agent step ``seed_steps``
(1,000), so the two agree whenever ``seed_steps`` is a multiple of the frequencies (1,000
and the smoke preset's 100 with frequency 2): the first update updates the actor.

Randomness: ``train_step`` takes a key that is the same on every device, draws per-sample
randomness (crops, intensities, policy noise, per-sample masks) for the global batch and keeps
this device's slice (:func:`mlr_jax.parallel.shard_slice`), so 1 and D devices compute the same
update. Gradients and metrics are averaged with :func:`mlr_jax.parallel.pmean`.

Initialisation follows the code: the critic target copies the critic; with MLR the momentum
encoder copies the critic's encoder, and the MLR module's re-initialisation then re-draws
the Linear (truncated normal, std 0.02) and resets the LayerNorm of both the critic's encoder
and the momentum encoder, independently (``cfg.reinit_encoder_linear``; False keeps the
orthogonal Linear and makes the momentum encoder an exact copy). The momentum projection has
its own random init (not a copy of the projection).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from mlr_jax import ema, parallel
from mlr_jax.agents.common import FINITE, Agent, all_finite, at_precision, compute_dtype, count_params
from mlr_jax.agents.dmc_aux import AuxObjective, inverse_sqrt_warmup, objective
from mlr_jax.config import DMCConfig
from mlr_jax.mlr import augment
from mlr_jax.nets import dmc as nets_lib
from mlr_jax.nets.decoder import PredictiveLatentDecoder, linear_init
from mlr_jax.rl import sac

# Hidden width of the MLR projection and predictor MLPs (the official ``latent_dim: 100``).
MLR_HIDDEN_DIM = 100

Params = Any


class DMCBatch(NamedTuple):
    """One update's data: ``sac`` a SACBatch (``obs u8[B,C,H,W]``, ``action f32[B,A]``,
    ``reward f32[B]``, ``discount f32[B]`` = 1 unless terminal, ``next_obs u8[B,C,H,W]``, all
    at the rendered size, e.g. 9x100x100) and ``seq`` a SeqBatch (``obs u8[Bm,K,C,H,W]``,
    ``action f32[Bm,K,A]``), or None when the objective reads no sequences. Any ``(sac, seq)`` pair with
    those fields works."""

    sac: Any
    seq: Any


@flax.struct.dataclass
class DMCState:
    """Everything one update reads and writes (a pytree).

    critic: ``{"encoder": {"convs", "head"}, "q1", "q2"}`` (the encoder's convs are also the
      actor's); critic_target: same tree; actor: ``{"head", "trunk"}``; log_alpha: f32[];
    aux: the auxiliary objective's modules, MLR's ``{"action_embed", "decoder",
      "projection", "predictor"}`` (empty for the Baseline);
    aux_target: its momentum target, MLR's ``{"encoder", "projection"}`` (empty for the
      Baseline);
    *_opt: optax states (``aux_opt`` over ``{"encoder": critic encoder, **aux}``);
    step: int32[] number of updates done.
    """

    critic: Params
    critic_target: Params
    actor: Params
    log_alpha: jax.Array
    aux: Params
    aux_target: Params
    critic_opt: optax.OptState
    actor_opt: optax.OptState
    alpha_opt: optax.OptState
    aux_opt: optax.OptState
    step: jax.Array


class DMCNetworks(NamedTuple):
    """Static pieces built from the config: Flax modules and optax transformations."""

    cfg: DMCConfig
    action_dim: int
    convs: nets_lib.ConvStack
    encoder: nets_lib.PixelEncoder
    critic: nets_lib.Critic
    actor: nets_lib.Actor
    action_embed: nn.Dense
    decoder: PredictiveLatentDecoder
    projection: nets_lib.MLP
    predictor: nets_lib.MLP
    critic_tx: optax.GradientTransformation
    actor_tx: optax.GradientTransformation
    alpha_tx: optax.GradientTransformation
    aux_tx: optax.GradientTransformation
    objective: AuxObjective


def build_networks(cfg: DMCConfig, action_dim: int) -> DMCNetworks:
    """Modules and optimisers of the agent for ``action_dim``-dimensional actions in [-1, 1]."""
    if action_dim < 1:
        raise ValueError(f"action_dim must be >= 1, got {action_dim}")
    dtype = compute_dtype(cfg.run.precision)
    conv = parallel.conv_impl(cfg.run.conv_impl)
    m = cfg.mlr
    return DMCNetworks(
        cfg=cfg,
        action_dim=action_dim,
        convs=nets_lib.ConvStack(cfg.num_filters, cfg.num_conv_layers, dtype, conv),
        encoder=nets_lib.PixelEncoder(cfg.feature_dim, cfg.num_filters, cfg.num_conv_layers, dtype,
                                      conv),
        critic=nets_lib.Critic(cfg.feature_dim, cfg.num_filters, cfg.num_conv_layers, cfg.hidden_dim,
                               dtype, conv),
        actor=nets_lib.Actor(action_dim, cfg.feature_dim, cfg.hidden_dim, cfg.log_std_min,
                             cfg.log_std_max, dtype),
        action_embed=nn.Dense(cfg.feature_dim, **linear_init("trunc_normal", action_dim)),
        decoder=PredictiveLatentDecoder(cfg.feature_dim, m.num_layers, m.num_heads, m.mlp_ratio,
                                        layout="interleaved", init_scheme="trunc_normal", dtype=dtype),
        projection=nets_lib.MLP((MLR_HIDDEN_DIM, cfg.feature_dim), nets_lib.mlr_init, dtype),
        predictor=nets_lib.MLP((MLR_HIDDEN_DIM, cfg.feature_dim), nets_lib.mlr_init, dtype),
        critic_tx=optax.adam(cfg.critic_lr, b1=cfg.critic_beta1, b2=0.999),
        actor_tx=optax.adam(cfg.actor_lr, b1=cfg.actor_beta1, b2=0.999),
        alpha_tx=optax.adam(cfg.alpha_lr, b1=cfg.alpha_beta1, b2=0.999),
        aux_tx=optax.adam(inverse_sqrt_warmup(cfg.aux_lr * cfg.aux_lr_scale, cfg.aux_warmup_steps),
                          b1=0.9, b2=0.999),
        objective=objective(cfg),
    )


def init(nets: DMCNetworks, key: chex.PRNGKey) -> DMCState:
    """Fresh agent state (see the module docstring for the initialisation details)."""
    cfg = nets.cfg
    channels = 3 * cfg.frame_stack
    obs = jnp.zeros((1, channels, cfg.crop_size, cfg.crop_size), jnp.uint8)
    action = jnp.zeros((1, nets.action_dim), jnp.float32)
    keys = jax.random.split(key, 9)  # 0-1 critic and actor, 2-8 the auxiliary objective
    critic = nets.critic.init(keys[0], obs, action)["params"]
    conv_features = nets.convs.apply({"params": critic["encoder"]["convs"]}, obs)
    actor = nets.actor.init(keys[1], conv_features)["params"]
    critic_target = critic
    critic, aux, aux_target, aux_opt = nets.objective.init(nets, keys[2:], critic)
    log_alpha = jnp.asarray(math.log(cfg.init_temperature), jnp.float32)
    return DMCState(
        critic=critic, critic_target=critic_target, actor=actor, log_alpha=log_alpha,
        aux=aux, aux_target=aux_target,
        critic_opt=nets.critic_tx.init(critic), actor_opt=nets.actor_tx.init(actor),
        alpha_opt=nets.alpha_tx.init(log_alpha), aux_opt=aux_opt,
        step=jnp.zeros((), jnp.int32))


def _conv_features(nets: DMCNetworks, critic: Params, obs: jax.Array) -> jax.Array:
    """The critic's (shared) conv features of ``obs [B, C, H, W]``: f32[B, F]."""
    return nets.convs.apply({"params": critic["encoder"]["convs"]}, obs)


def _policy(nets: DMCNetworks, state: DMCState, conv_features: jax.Array) -> tuple[jax.Array, jax.Array]:
    return nets.actor.apply({"params": state.actor}, conv_features)


def update_critic(nets: DMCNetworks, state: DMCState, obs: jax.Array, action: jax.Array,
                  reward: jax.Array, not_done: jax.Array, next_obs: jax.Array, next_noise: jax.Array,
                  axis_name: str | None = None) -> tuple[DMCState, dict[str, jax.Array]]:
    """One critic Adam step on cropped observations.

    Args:
      obs, next_obs: [B, C, crop, crop] (uint8 or 0-255 floats).
      action: f32[B, A]; reward: f32[B]; not_done: f32[B] (0 at a terminal).
      next_noise: f32[B, A] standard normal noise of the policy sample at ``next_obs``.
    """
    cfg = nets.cfg
    alpha = jnp.exp(state.log_alpha)
    mean, log_std = _policy(nets, state, _conv_features(nets, state.critic, next_obs))
    next_action, next_log_prob = sac.tanh_gaussian_sample_and_logprob(mean, log_std, next_noise)
    next_q1, next_q2 = nets.critic.apply({"params": state.critic_target}, next_obs, next_action)
    target = sac.soft_q_target(reward, cfg.gamma * not_done, next_q1, next_q2, next_log_prob, alpha)

    def loss_fn(params):
        q1, q2 = nets.critic.apply({"params": params}, obs, action)
        return sac.critic_loss(q1, q2, target), q1

    (loss, q1), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.critic)
    grads = parallel.pmean(grads, axis_name)
    updates, critic_opt = nets.critic_tx.update(grads, state.critic_opt, state.critic)
    state = state.replace(critic=optax.apply_updates(state.critic, updates), critic_opt=critic_opt)
    metrics = {"critic_loss": loss, "q1": jnp.mean(q1), "batch_reward": jnp.mean(reward), "alpha": alpha}
    metrics = parallel.pmean(metrics, axis_name)
    return state, metrics | {"critic_grad_norm": optax.tree.norm(grads)}


def update_actor_and_alpha(nets: DMCNetworks, state: DMCState, obs: jax.Array, noise: jax.Array,
                           axis_name: str | None = None) -> tuple[DMCState, dict[str, jax.Array]]:
    """One actor Adam step and one temperature Adam step.

    The conv features come from the critic's current convs under stop-gradient (the actor's
    own parameters hold no convs), so this update never changes the convolutions.

    Args:
      obs: [B, C, crop, crop] the critic update's crops.
      noise: f32[B, A] standard normal noise of the policy sample.
    """
    conv_features = jax.lax.stop_gradient(_conv_features(nets, state.critic, obs))
    alpha = jnp.exp(state.log_alpha)

    def actor_loss_fn(params):
        mean, log_std = nets.actor.apply({"params": params}, conv_features)
        action, log_prob = sac.tanh_gaussian_sample_and_logprob(mean, log_std, noise)
        q1, q2 = nets.critic.apply({"params": state.critic}, conv_features, action,
                                   method=nets_lib.Critic.from_conv)
        return sac.actor_loss(log_prob, q1, q2, alpha), log_prob

    (actor_loss, log_prob), grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(state.actor)
    grads = parallel.pmean(grads, axis_name)
    updates, actor_opt = nets.actor_tx.update(grads, state.actor_opt, state.actor)
    actor = optax.apply_updates(state.actor, updates)

    target_entropy = -float(nets.action_dim)
    alpha_loss, alpha_grad = jax.value_and_grad(sac.temperature_loss)(state.log_alpha, log_prob,
                                                                       target_entropy)
    alpha_grad = parallel.pmean(alpha_grad, axis_name)
    alpha_updates, alpha_opt = nets.alpha_tx.update(alpha_grad, state.alpha_opt, state.log_alpha)
    state = state.replace(actor=actor, actor_opt=actor_opt,
                          log_alpha=optax.apply_updates(state.log_alpha, alpha_updates),
                          alpha_opt=alpha_opt)
    metrics = {"actor_loss": actor_loss, "alpha_loss": alpha_loss, "entropy": -jnp.mean(log_prob)}
    return state, parallel.pmean(metrics, axis_name)


ACTOR_METRICS = ("actor_loss", "alpha_loss", "entropy")


def update_targets(nets: DMCNetworks, state: DMCState) -> DMCState:
    """Soft updates: critic target (Qs ``critic_tau``, encoder ``encoder_tau``) and the
    auxiliary objective's momentum target (MLR: encoder and projection, ``momentum_tau``)."""
    cfg = nets.cfg
    critic_target = {
        name: ema.ema_update(target, state.critic[name],
                             cfg.encoder_tau if name == "encoder" else cfg.critic_tau)
        for name, target in state.critic_target.items()}
    return state.replace(critic_target=critic_target,
                         aux_target=nets.objective.refresh(nets, state))


def _global_normal(key: chex.PRNGKey, shape: tuple[int, ...], axis_name: str | None) -> jax.Array:
    """Standard normal noise drawn for the global batch; this device's rows."""
    rows = shape[0] * parallel.num_shards(axis_name)
    return parallel.shard_slice(jax.random.normal(key, (rows,) + shape[1:]), axis_name)


def _random_crops(key: chex.PRNGKey, obs: jax.Array, cfg: DMCConfig, axis_name: str | None) -> jax.Array:
    """Independent random crop of every ``obs[i] [C, H, W]`` to ``cfg.crop_size``, with
    offsets by ``cfg.sac_crop_rule``."""
    keys = parallel.sample_keys(key, obs.shape[0], axis_name)
    inclusive = cfg.sac_crop_rule == "inclusive"
    return jax.vmap(lambda k, x: augment.random_crop(k, x[None], cfg.crop_size, inclusive)[0])(
        keys, obs)


def _check_batch(nets: DMCNetworks, sac_batch: Any, seq: Any) -> None:
    cfg = nets.cfg
    obs_shape = (3 * cfg.frame_stack, cfg.image_size, cfg.image_size)
    for name, x in (("sac.obs", sac_batch.obs), ("sac.next_obs", sac_batch.next_obs)):
        if x.shape[1:] != obs_shape:
            raise ValueError(f"{name} has shape {x.shape}; expected [B, *{obs_shape}]")
    if sac_batch.action.shape[1:] != (nets.action_dim,):
        raise ValueError(f"sac.action has shape {sac_batch.action.shape}; expected [B, {nets.action_dim}]")
    seq_len = nets.objective.sequence_length(cfg)
    if seq_len:
        if seq is None:
            raise ValueError(f"cfg.aux={cfg.aux!r} needs a sequence batch (batch.seq is None)")
        expected = (seq_len,) + obs_shape
        if seq.obs.shape[1:] != expected:
            raise ValueError(f"seq.obs has shape {seq.obs.shape}; expected [B, *{expected}]")
        if seq.action.shape[1:] != (seq_len, nets.action_dim):
            raise ValueError(f"seq.action has shape {seq.action.shape}; "
                             f"expected [B, {seq_len}, {nets.action_dim}]")


def train_step(nets: DMCNetworks, state: DMCState, batch: Any, key: chex.PRNGKey,
               axis_name: str | None = None) -> tuple[DMCState, dict[str, jax.Array]]:
    """One full update (critic, MLR, gated actor/temperature, gated target EMAs).

    Args:
      state: the agent state (the same on every device of a data-parallel step).
      batch: a :class:`DMCBatch` ``(sac, seq)``, this device's shard.
      key: PRNG key, the same on every device.
      axis_name: the mesh axis the batch is split over, or None on one device.

    Returns:
      ``(state, metrics)``: scalar metrics averaged over devices; ``actor_loss``,
      ``alpha_loss`` and ``entropy`` are NaN on updates without an actor step;
      ``metrics[FINITE]``: every loss and gradient norm of this update was finite.
    """
    cfg = nets.cfg
    sac_batch, seq = batch
    _check_batch(nets, sac_batch, seq)
    chex.assert_rank([sac_batch.reward, sac_batch.discount], 1)
    keys = jax.random.split(key, 5)
    obs = _random_crops(keys[0], sac_batch.obs, cfg, axis_name)
    next_obs = _random_crops(keys[1], sac_batch.next_obs, cfg, axis_name)
    noise_shape = sac_batch.action.shape
    state, metrics = update_critic(nets, state, obs, sac_batch.action, sac_batch.reward,
                                   sac_batch.discount, next_obs,
                                   _global_normal(keys[2], noise_shape, axis_name), axis_name)
    if nets.objective.update is not None:
        state, aux_metrics = nets.objective.update(nets, state, seq, keys[3], axis_name)
        metrics.update(aux_metrics)

    actor_noise = _global_normal(keys[4], noise_shape, axis_name)
    skipped = {name: jnp.full((), jnp.nan, jnp.float32) for name in ACTOR_METRICS}
    actor_step = state.step % cfg.actor_update_freq == 0
    state, actor_metrics = jax.lax.cond(
        actor_step, lambda s: update_actor_and_alpha(nets, s, obs, actor_noise, axis_name),
        lambda s: (s, skipped), state)
    metrics[FINITE] = all_finite(metrics) & (all_finite(actor_metrics) | ~actor_step)
    metrics.update(actor_metrics)
    state = jax.lax.cond(state.step % cfg.target_update_freq == 0,
                         functools.partial(update_targets, nets), lambda s: s, state)
    return state.replace(step=state.step + 1), metrics


def _policy_outputs(nets: DMCNetworks, state: DMCState, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Pre-squash mean and log-std for ``obs u8[N, C, H, W]`` (centre-cropped to the input size)."""
    chex.assert_rank(obs, 4)
    if obs.shape[-1] != nets.cfg.crop_size:
        obs = augment.center_crop(obs, nets.cfg.crop_size)
    return _policy(nets, state, _conv_features(nets, state.critic, obs))


def act(nets: DMCNetworks, state: DMCState, obs: jax.Array, key: chex.PRNGKey) -> jax.Array:
    """Training behaviour: a sample of the squashed Gaussian policy, f32[N, A] in (-1, 1).

    ``obs`` u8[N, C, H, W] at the rendered size (centre-cropped here, as the code's
    ``sample_action`` does) or already at the crop size.
    """
    mean, log_std = _policy_outputs(nets, state, obs)
    return jnp.tanh(mean + jax.random.normal(key, mean.shape) * jnp.exp(log_std))


def eval_act(nets: DMCNetworks, state: DMCState, obs: jax.Array, key: chex.PRNGKey) -> jax.Array:
    """Evaluation behaviour: the squashed mean ``tanh(mu)`` (``key`` unused), f32[N, A]."""
    del key
    return jnp.tanh(_policy_outputs(nets, state, obs)[0])


def param_counts(state: DMCState) -> dict[str, int]:
    """Parameter counts per component (the shared convs are counted once, in ``encoder``)."""
    counts = {
        "encoder": count_params(state.critic["encoder"]),
        "critic_q": count_params({k: v for k, v in state.critic.items() if k != "encoder"}),
        "actor": count_params(state.actor),
        "decoder": count_params(state.aux.get("decoder", {})),
        "mlr_heads": count_params({k: v for k, v in state.aux.items() if k != "decoder"}),
    }
    counts["trained_total"] = sum(counts.values()) + 1  # + log_alpha
    counts["momentum"] = count_params(state.aux_target)
    return counts


def make_agent(cfg: DMCConfig, action_dim: int) -> Agent:
    """The DMC agent's pure functions for ``action_dim``-dimensional actions.

    ``init(key) -> DMCState``; ``train_step(state, DMCBatch, key, axis_name=None) ->
    (state, metrics)``; ``act(state, obs u8[N,C,H,W], key) -> f32[N,A]`` (stochastic);
    ``eval_act(state, obs, key) -> f32[N,A]`` (deterministic); ``param_counts(state)``.
    Both batch sizes (``batch_size``, ``aux_batch_size``) must split evenly over the devices.
    """
    nets = build_networks(cfg, action_dim)

    def traced(fn):
        return at_precision(functools.partial(fn, nets), cfg.run.precision)

    return Agent(init=functools.partial(init, nets), train_step=traced(train_step),
                 act=traced(act), eval_act=traced(eval_act), param_counts=param_counts)
