"""Auxiliary objectives of the Atari agent, behind one interface: ``none``, ``mlr``, ``spr``.

The agent (:mod:`mlr_jax.agents.atari`) owns the Q network, the RL loss and the optimiser;
an :class:`AuxObjective` owns everything else an objective adds, and the agent only calls it:

- ``init(key, params) -> (aux_params, aux_target)``: its online modules (merged into the
  agent's ``params`` and stepped by the same Adam) and its momentum target;
- ``prepare(state, batch, keys, axis_name) -> (inputs, targets)``: everything computed
  outside the gradient (masked / augmented frames, momentum targets);
- ``loss(params, inputs, targets, latent, batch, axis_name) -> (loss, per_sample)``:
  ``loss`` = ``mean(weights * per_sample)``; ``latent`` is the online encoder's output for the
  RL input ``s_t`` (SPR rolls its dynamics out from it);
- ``clip_groups``: top-level entries of ``params`` whose gradients are clipped as a group of
  their own (the encoder + head group is the agent's);
- ``refresh(aux_target, params) -> aux_target``: the momentum update from the PRE-update
  online weights, as both code bases do it inside the forward pass;
- ``weight``: its multiplier in the total loss; ``metric``: the name its (weighted-by-IS,
  unscaled) loss is reported under, or None.

:func:`window` is the number of frames per sample an objective reads from ``s_t`` on (the
replay window is that or the agent's own ``n_step + 1``, whichever is longer).

MLR and SPR share their target side: the momentum encoder + momentum projection (the head's
first value/advantage layers) on augmented frames ``s_t .. s_{t+T-1}``, the online projection
and the ``Linear(2h, 2h)`` predictor, and the normalised MSE ``2 - 2 cos`` per step.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import math

import chex
import jax
import jax.numpy as jnp

from mlr_jax import parallel
from mlr_jax.config import AtariConfig
from mlr_jax.ema import ema_update
from mlr_jax.mlr.loss import mlr_loss, normalized_mse
from mlr_jax.mlr.masking import apply_cube_mask, cube_mask
from mlr_jax.nets.atari import HeadProjection, TransitionModel, projection_params, torch_dense
from mlr_jax.nets.decoder import PredictiveLatentDecoder

NORMALISED_MSE_SCALE = 2.0  # the codes' ||n(p) - n(t)||^2 = 2 - 2 cos


class AtariParts(NamedTuple):
    """What the objectives share with the agent (built once by ``make_agent``).

    encode: ``(encoder_params, f32[..., C, H, W]) -> f32[..., D]``.
    augment: ``(key, f32[B, T, C, H, W], axis_name) -> f32[B, T, C, H, W]``, one shift +
      intensity draw per frame.
    latent_shape: ``(C, h, w)`` of the encoder output, ``D = C * h * w``.
    """

    cfg: AtariConfig
    num_actions: int
    latent_shape: tuple[int, int, int]
    dtype: Any
    conv_impl: str
    encode: Callable[..., jax.Array]
    augment: Callable[..., jax.Array]


class AuxObjective(NamedTuple):
    """One auxiliary objective; see the module docstring for each member."""

    metric: str | None
    weight: float
    clip_groups: tuple[str, ...]
    init: Callable[..., tuple[Any, Any]]
    prepare: Callable[..., tuple[Any, Any]]
    loss: Callable[..., tuple[jax.Array, jax.Array]]
    refresh: Callable[[Any, Any], Any]


def scaled(frames: jax.Array) -> jax.Array:
    """uint8 (or 0-255 float) frames -> float32 in [0, 1]."""
    return frames.astype(jnp.float32) / 255.0


def copy_tree(tree: Any) -> Any:
    """A copy of every leaf of ``tree`` (targets start as copies of the online weights)."""
    return jax.tree.map(jnp.copy, tree)


def _no_objective(parts: AtariParts) -> AuxObjective:
    """``aux="none"``: the paper's Baseline. It still reads ``mlr.seq_len`` frames per sample,
    as the authors' code samples the same windows with the MLR weight at 0."""
    return AuxObjective(
        metric=None, weight=0.0, clip_groups=(),
        init=lambda key, params: ({}, {}),
        prepare=lambda state, batch, keys, axis_name: (None, None),
        loss=lambda params, inputs, targets, latent, batch, axis_name: (
            jnp.zeros(()), jnp.zeros(batch.weights.shape)),
        refresh=lambda target, params: target)


def _momentum(parts: AtariParts, projection: HeadProjection):
    """The target side MLR and SPR share: ``(init_target, targets, refresh)``."""
    tau = parts.cfg.momentum_tau

    def online_view(params):
        return {"encoder": params["encoder"], "projection": projection_params(params["head"])}

    def targets(aux_target, frames, key, axis_name):
        """Momentum encoder + projection on augmented frames u8[B, T, C, H, W] -> f32[B, T, 2h]."""
        augmented = parts.augment(key, scaled(frames), axis_name)
        latents = parts.encode(aux_target["encoder"], augmented)
        return projection.apply({"params": aux_target["projection"]}, latents)

    def refresh(aux_target, params):
        return ema_update(aux_target, online_view(params), tau)

    return (lambda params: copy_tree(online_view(params))), targets, refresh


def _mlr_objective(parts: AtariParts) -> AuxObjective:
    """MLR: one cube mask per update (or per sample) applied in pixel space before
    augmentation, masked frames kept at 0-255 unless ``cfg.scale_masked_input``; encoder ->
    decoder with action tokens -> head projection -> predictor, against the momentum targets
    on the unmasked frames."""
    cfg, m = parts.cfg, parts.cfg.mlr
    dim = math.prod(parts.latent_shape)
    projection = HeadProjection(cfg.hidden_size, parts.dtype)
    decoder = PredictiveLatentDecoder(dim, m.num_layers, m.num_heads, m.mlp_ratio,
                                      "states_then_actions", "torch_default", parts.dtype)
    action_embedding = torch_dense(dim, parts.num_actions, parts.dtype)
    predictor = torch_dense(2 * cfg.hidden_size, 2 * cfg.hidden_size, parts.dtype)
    init_target, momentum_targets, refresh = _momentum(parts, projection)

    def init(key, params):
        keys = jax.random.split(key, 3)
        tokens = jnp.zeros((1, m.seq_len, dim))
        aux = {"decoder": decoder.init(keys[0], tokens, tokens)["params"],
               "action_embedding": action_embedding.init(
                   keys[1], jnp.zeros((1, parts.num_actions)))["params"],
               "predictor": predictor.init(keys[2], jnp.zeros((1, 2 * cfg.hidden_size)))["params"]}
        return aux, init_target(params)

    def draw_mask(key, local_batch, axis_name):
        """One cube mask f32[T, H, W] for the batch, or this device's f32[B, T, H, W]."""
        args = (m.seq_len, cfg.image_size, m.patch_size, m.block_size, m.mask_ratio,
                m.mask_count_rule)
        if not m.mask_per_sample:
            return cube_mask(key, *args)
        masks = cube_mask(key, *args, batch_size=local_batch * parallel.num_shards(axis_name))
        return parallel.shard_slice(masks, axis_name)

    def prepare(state, batch, keys, axis_name):
        """Masked augmented frames f32[B, K, C, H, W] and one-hot actions; targets f32[B, K, 2h]."""
        sequence = batch.obs[:, :m.seq_len]
        targets = momentum_targets(state.aux_target, sequence, keys[0], axis_name)
        masked = apply_cube_mask(sequence, draw_mask(keys[1], sequence.shape[0], axis_name))
        masked = scaled(masked) if cfg.scale_masked_input else masked.astype(jnp.float32)
        masked = parts.augment(keys[2], masked, axis_name)
        one_hot = jax.nn.one_hot(batch.actions[:, :m.seq_len], parts.num_actions)
        return (masked, one_hot), targets

    def loss(params, inputs, targets, latent, batch, axis_name):
        del latent, axis_name  # MLR encodes its own (masked) frames
        masked, one_hot = inputs
        tokens = action_embedding.apply({"params": params["action_embedding"]}, one_hot)
        decoded = decoder.apply({"params": params["decoder"]},
                                parts.encode(params["encoder"], masked), tokens)
        projected = projection.apply({"params": projection_params(params["head"])}, decoded)
        predictions = predictor.apply({"params": params["predictor"]}, projected)
        return mlr_loss(predictions.astype(jnp.float32), targets, batch.weights,
                        scale=NORMALISED_MSE_SCALE)

    return AuxObjective(metric="mlr_loss", weight=m.weight, clip_groups=("decoder",),
                        init=init, prepare=prepare, loss=loss, refresh=refresh)


def _spr_objective(parts: AtariParts) -> AuxObjective:
    """SPR as its authors' code runs it (mila-iqia/spr, inherited by the MLR code base).

    The transition model rolls the online latent of the augmented ``s_t`` (the RL input's)
    forward ``K = spr.jumps`` steps with the taken actions; each predicted latent goes through
    the online projection and the predictor, against the momentum encoder + projection on
    independently augmented ``s_{t+k}``. Per sample the loss is the mean over ``k = 1..K`` of
    ``nonterminal_k * (2 - 2 cos)``, where ``nonterminal_k`` is 0 once a done has occurred in
    steps ``0..k`` (the code's ``1 - sign(cumsum(done))``); the ``k = 0`` term has weight 0.
    The transition model is a clip group of its own, as the code clips ``dynamics_model``.
    """
    cfg, s = parts.cfg, parts.cfg.spr
    dim = math.prod(parts.latent_shape)
    projection = HeadProjection(cfg.hidden_size, parts.dtype)
    predictor = torch_dense(2 * cfg.hidden_size, 2 * cfg.hidden_size, parts.dtype)
    init_target, momentum_targets, refresh = _momentum(parts, projection)

    def dynamics(axis_name):
        return TransitionModel(parts.num_actions, parts.latent_shape, cfg.renormalize,
                               parts.dtype, parts.conv_impl, axis_name)

    def init(key, params):
        keys = jax.random.split(key, 2)
        aux = {"dynamics": dynamics(None).init(keys[0], jnp.zeros((1, dim)),
                                               jnp.zeros((1,), jnp.int32))["params"],
               "predictor": predictor.init(keys[1], jnp.zeros((1, 2 * cfg.hidden_size)))["params"]}
        return aux, init_target(params)

    def prepare(state, batch, keys, axis_name):
        """Taken actions int32[B, K] and nonterminal flags f32[B, K]; targets f32[B, K, 2h]
        of ``s_{t+1} .. s_{t+K}`` (the code also encodes ``s_t``, for its zero-weight term)."""
        targets = momentum_targets(state.aux_target, batch.obs[:, 1:s.jumps + 1], keys[0],
                                   axis_name)
        nonterminal = jnp.arange(1, s.jumps + 1)[None, :] < batch.first_done[:, None]
        return (batch.actions[:, :s.jumps], nonterminal.astype(jnp.float32)), targets

    def loss(params, inputs, targets, latent, batch, axis_name):
        actions, nonterminal = inputs
        model = dynamics(axis_name)
        latents = []
        for k in range(s.jumps):
            latent = model.apply({"params": params["dynamics"]}, latent, actions[:, k])
            latents.append(latent)
        projected = projection.apply({"params": projection_params(params["head"])},
                                     jnp.stack(latents, axis=1))
        predictions = predictor.apply({"params": params["predictor"]}, projected)
        per_step = normalized_mse(predictions.astype(jnp.float32), targets)  # [B, K]
        per_sample = jnp.mean(nonterminal * per_step, axis=1)
        chex.assert_shape(per_sample, batch.weights.shape)
        return jnp.mean(batch.weights * per_sample), per_sample

    return AuxObjective(metric="spr_loss", weight=s.weight, clip_groups=("dynamics",),
                        init=init, prepare=prepare, loss=loss, refresh=refresh)


def _sequence_window(cfg: AtariConfig) -> int:
    """MLR's ``mlr.seq_len``; also the Baseline's, as the authors' code samples the same
    windows with the MLR weight at 0."""
    return cfg.mlr.seq_len


def _rollout_window(cfg: AtariConfig) -> int:
    """SPR's ``batch_T = jumps + 1``."""
    return cfg.spr.jumps + 1


# name -> (the objective for the agent's parts, frames per sample it reads from s_t on)
OBJECTIVES: dict[str, tuple[Callable[[AtariParts], AuxObjective], Callable[[AtariConfig], int]]] = {
    "none": (_no_objective, _sequence_window),
    "mlr": (_mlr_objective, _sequence_window),
    "spr": (_spr_objective, _rollout_window)}


def make_objective(parts: AtariParts) -> AuxObjective:
    """The objective ``parts.cfg.aux`` names (validated by the config)."""
    return OBJECTIVES[parts.cfg.aux][0](parts)


def window(cfg: AtariConfig) -> int:
    """Frames per sample ``cfg.aux`` reads from ``s_t`` on (the replay window is this or
    ``n_step + 1``, whichever is longer)."""
    return OBJECTIVES[cfg.aux][1](cfg)
