"""Auxiliary objectives of the DMC agent, behind one interface: ``none`` and ``mlr``.

The SAC agent (:mod:`mlr_jax.agents.dmc`) owns the critic, actor and temperature; an
:class:`AuxObjective` owns what an objective adds and the agent only calls it:

- ``sequence_length``: frames per sequence of the batch it reads (0: no sequence batch);
- ``init(nets, keys, critic) -> (critic, aux, aux_target, aux_opt)``: its modules, momentum
  target and optimiser state from 7 keys (MLR also re-draws the critic encoder's head, as its
  code does);
- ``update(nets, state, seq, key, axis_name) -> (state, metrics)``: its own optimiser step,
  after the critic's (DMC's objectives have an optimiser of their own, stepping the critic's
  encoder with their modules);
- ``refresh(nets, state) -> aux_target``: its momentum EMA, with the critic target's.

The modules (decoder, action embedding, projection, predictor) and the optimiser
(``nets.aux_tx``) are built with the agent's networks (:func:`mlr_jax.agents.dmc.build_networks`).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from mlr_jax import ema, parallel
from mlr_jax.agents.common import clip_by_global_norm
from mlr_jax.config import DMCConfig
from mlr_jax.mlr import augment, loss as mlr_loss_lib, masking
from mlr_jax.nets import dmc as nets_lib

# The warm-up factor starts here and rises linearly to 1 (the code's InverseSquareRootSchedule).
WARMUP_INIT_FACTOR = 5e-4


class AuxObjective(NamedTuple):
    """One auxiliary objective of the DMC agent; see the module docstring for each member."""

    sequence_length: Callable[[DMCConfig], int]
    init: Callable[..., tuple[Any, Any, Any, Any]]
    update: Callable[..., tuple[Any, dict[str, jax.Array]]] | None
    refresh: Callable[[Any, Any], Any]


def inverse_sqrt_warmup(peak_lr: float, warmup_steps: int) -> optax.Schedule:
    """The authors' MLR learning-rate schedule (``InverseSquareRootSchedule`` in LambdaLR).

    ``peak_lr * f(count)`` with ``f = 5e-4 + (1 - 5e-4) * count / warmup_steps`` while
    ``count < warmup_steps``, then ``sqrt(warmup_steps / count)``; ``count`` = optimiser steps
    already taken (0 for the first).
    """
    if warmup_steps < 1:
        raise ValueError(f"aux_warmup_steps must be >= 1, got {warmup_steps}")

    def schedule(count: chex.Numeric) -> jax.Array:
        count = jnp.asarray(count, jnp.float32)
        rising = WARMUP_INIT_FACTOR + (1.0 - WARMUP_INIT_FACTOR) / warmup_steps * count
        decaying = jnp.sqrt(warmup_steps / jnp.maximum(count, 1.0))
        return peak_lr * jnp.where(count < warmup_steps, rising, decaying)

    return schedule


def _opt_params(state_critic: Any, mlr: Any) -> Any:
    """The parameters the MLR optimiser steps: the critic's encoder and the MLR modules."""
    return {"encoder": state_critic["encoder"], **mlr}


def update_mlr(nets: Any, state: Any, online_frames: jax.Array, target_frames: jax.Array,
               actions: jax.Array, axis_name: str | None = None) -> tuple[Any, dict[str, jax.Array]]:
    """One MLR Adam step (clipped) on augmented sequences.

    Args:
      online_frames: f32[B, K, C, crop, crop] masked, augmented frames (0-255 range).
      target_frames: f32[B, K, C, crop, crop] unmasked, separately augmented frames.
      actions: f32[B, K, A], ``actions[:, i]`` taken at frame i.
    """
    cfg = nets.cfg
    chex.assert_rank([online_frames, target_frames, actions], [5, 5, 3])
    chex.assert_equal_shape([online_frames, target_frames])
    batch, seq_len = online_frames.shape[:2]

    def encode(module_apply, params, frames):
        flat = frames.reshape((batch * seq_len,) + frames.shape[2:])
        return module_apply({"params": params}, flat).reshape(batch, seq_len, -1)

    target_latents = encode(nets.encoder.apply, state.aux_target["encoder"], target_frames)
    targets = nets.projection.apply({"params": state.aux_target["projection"]}, target_latents)

    def loss_fn(params):
        latents = encode(nets.encoder.apply, params["encoder"], online_frames)
        action_tokens = nets.action_embed.apply({"params": params["action_embed"]}, actions)
        decoded = nets.decoder.apply({"params": params["decoder"]}, latents, action_tokens)
        projected = nets.projection.apply({"params": params["projection"]}, decoded)
        predictions = nets.predictor.apply({"params": params["predictor"]}, projected)
        loss, _ = mlr_loss_lib.mlr_loss(predictions, targets)
        return cfg.mlr.weight * loss

    params = _opt_params(state.critic, state.aux)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    grads, grad_norm = clip_by_global_norm(parallel.pmean(grads, axis_name), cfg.aux_clip_norm)
    updates, aux_opt = nets.aux_tx.update(grads, state.aux_opt, params)
    new = optax.apply_updates(params, updates)
    schedule = inverse_sqrt_warmup(cfg.aux_lr * cfg.aux_lr_scale, cfg.aux_warmup_steps)
    metrics = {"mlr_loss": parallel.pmean(loss, axis_name), "mlr_grad_norm": grad_norm,
               "mlr_lr": schedule(state.step)}  # the MLR optimiser steps on every update
    state = state.replace(critic={**state.critic, "encoder": new["encoder"]},
                          aux={k: v for k, v in new.items() if k != "encoder"}, aux_opt=aux_opt)
    return state, metrics


def mlr_views(nets: Any, key: chex.PRNGKey, frames: jax.Array,
              axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
    """Masked online view and target view of a sequence batch.

    Args:
      frames: u8[B, K, C, H, W] at the rendered size.

    Returns:
      ``(online, target)`` f32[B, K, C, crop, crop]: the online view is cube-masked in pixel
      space first; each view then gets a random crop and an intensity factor per frame.
    """
    cfg, m = nets.cfg, nets.cfg.mlr
    batch = frames.shape[0]
    mask_key, online_key, target_key = jax.random.split(key, 3)
    draw = functools.partial(masking.cube_mask, seq_len=m.seq_len, image_size=cfg.image_size,
                             patch_size=m.patch_size, block_size=m.block_size,
                             mask_ratio=m.mask_ratio, rule=m.mask_count_rule)
    if m.mask_per_sample:
        mask = jax.vmap(draw)(parallel.sample_keys(mask_key, batch, axis_name))
    else:
        mask = draw(mask_key)

    def augment_sequence(k, sequence):
        crop_key, intensity_key = jax.random.split(k)
        cropped = augment.random_crop(crop_key, sequence, cfg.crop_size).astype(jnp.float32)
        return augment.intensity(intensity_key, cropped, cfg.intensity_scale)

    def augment_batch(k, x):
        return jax.vmap(augment_sequence)(parallel.sample_keys(k, batch, axis_name), x)

    online = augment_batch(online_key, masking.apply_cube_mask(frames, mask))
    return online, augment_batch(target_key, frames)


def _init_mlr(nets: Any, keys: jax.Array, critic: Any) -> tuple[Any, Any, Any, Any]:
    """MLR's modules and momentum target. The momentum encoder copies the critic's encoder,
    then (``cfg.reinit_encoder_linear``) the MLR module's re-initialisation re-draws the Linear
    and resets the LayerNorm of both, independently; the momentum projection has its own
    random init (not a copy of the projection)."""
    cfg = nets.cfg
    momentum_encoder = critic["encoder"]
    if cfg.reinit_encoder_linear:
        critic = {**critic, "encoder": nets_lib.reinit_feature_head(keys[0], critic["encoder"])}
        momentum_encoder = nets_lib.reinit_feature_head(keys[1], momentum_encoder)
    seq = jnp.zeros((1, cfg.mlr.seq_len, cfg.feature_dim), jnp.float32)
    action = jnp.zeros((1, nets.action_dim), jnp.float32)
    aux = {"action_embed": nets.action_embed.init(keys[2], action)["params"],
           "decoder": nets.decoder.init(keys[3], seq, seq)["params"],
           "projection": nets.projection.init(keys[4], seq)["params"],
           "predictor": nets.predictor.init(keys[5], seq)["params"]}
    target = {"encoder": momentum_encoder,
              "projection": nets.projection.init(keys[6], seq)["params"]}
    return critic, aux, target, nets.aux_tx.init(_opt_params(critic, aux))


def _update_mlr(nets: Any, state: Any, seq: Any, key: chex.PRNGKey,
                axis_name: str | None) -> tuple[Any, dict[str, jax.Array]]:
    online, target = mlr_views(nets, key, seq.obs, axis_name)
    return update_mlr(nets, state, online, target, seq.action, axis_name)


def _refresh_mlr(nets: Any, state: Any) -> Any:
    tau, target = nets.cfg.momentum_tau, state.aux_target
    return {"encoder": ema.ema_update(target["encoder"], state.critic["encoder"], tau),
            "projection": ema.ema_update(target["projection"], state.aux["projection"], tau)}


OBJECTIVES: dict[str, AuxObjective] = {
    "none": AuxObjective(sequence_length=lambda cfg: 0,
                         init=lambda nets, keys, critic: (critic, {}, {}, optax.EmptyState()),
                         update=None, refresh=lambda nets, state: state.aux_target),
    "mlr": AuxObjective(sequence_length=lambda cfg: cfg.mlr.seq_len, init=_init_mlr,
                        update=_update_mlr, refresh=_refresh_mlr),
}


def objective(cfg: DMCConfig) -> AuxObjective:
    """The objective ``cfg.aux`` names (validated by the config)."""
    return OBJECTIVES[cfg.aux]
