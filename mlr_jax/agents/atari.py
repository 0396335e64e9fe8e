"""The Atari-100k agent: SPR-style data-efficient Rainbow with the MLR auxiliary loss.

One jitted ``train_step`` does the whole update (docs/design.md "Agents"), in the order of the
authors' code (spec "Behaviours of the authors' code"):

1. fresh head noise for this update (``noise_key``); augmentation (replicate-pad shift +
   intensity, drawn per frame) for every branch, each branch its own draw;
2. RL: C51 cross-entropy of the online prediction at s_t against the projected n-step
   double-DQN target (online net with this update's noise picks the action at s_{t+n}, the
   target net with its own noise evaluates it; both on their own augmentation of s_{t+n}),
   weighted by the importance weights; priorities = KL(target || prediction);
3. MLR (``cfg.aux == "mlr"``): one cube mask per update (or per sample) applied in pixel space
   before augmentation, masked frames kept at 0-255 unless ``cfg.scale_masked_input``;
   encoder -> decoder with action tokens -> head projection -> predictor, against the momentum
   encoder + projection on the unmasked frames, as they stand before this update;
4. the momentum copy is refreshed from the pre-update online weights; gradients are averaged
   over devices, clipped by global norm separately for encoder+head and for the decoder (the
   action embedding and the predictor are in neither group, as in the code), Adam step;
5. the RL target net is refreshed from the post-update online weights every
   ``cfg.target_update_period`` updates and takes over this update's noise.

Per-sample randomness is drawn for the global batch and sliced per device, so the update does
not depend on the number of devices.
"""

from __future__ import annotations

from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from mlr_jax import parallel
from mlr_jax.agents.common import FINITE, Agent, all_finite, clip_by_global_norm, count_params
from mlr_jax.config import AtariConfig
from mlr_jax.ema import ema_update
from mlr_jax.mlr.augment import intensity, random_shift
from mlr_jax.mlr.loss import mlr_loss
from mlr_jax.mlr.masking import apply_cube_mask, cube_mask
from mlr_jax.nets.atari import (DuelingC51Head, HeadProjection, NatureCNN, nature_cnn_output_dim,
                                projection_params, torch_dense)
from mlr_jax.nets.decoder import PredictiveLatentDecoder
from mlr_jax.rl.c51 import c51_loss, double_dqn_target, kl_priority, select_actions

MLR_LOSS_SCALE = 2.0  # the code's normalised MSE, 2 - 2 cos


@flax.struct.dataclass
class AtariState:
    """Everything an update changes.

    Attributes:
      params: online parameters ``{"encoder", "head"}`` plus, with MLR,
        ``{"decoder", "action_embedding", "predictor"}``.
      target_params: RL target network ``{"encoder", "head"}``.
      momentum_params: MLR target ``{"encoder", "projection"}`` (head first layers); empty
        without MLR.
      opt_state: Adam state of ``params``.
      step: int32 number of updates done.
      noise_key: key of the latest update's head noise (acting uses it).
      target_noise_key: key of the target network's head noise.
    """

    params: Any
    target_params: Any
    momentum_params: Any
    opt_state: Any
    step: jax.Array
    noise_key: jax.Array
    target_noise_key: jax.Array


def _scaled(frames: jax.Array) -> jax.Array:
    """uint8 (or 0-255 float) frames -> float32 in [0, 1]."""
    return frames.astype(jnp.float32) / 255.0


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def make_agent(cfg: AtariConfig, num_actions: int) -> Agent:
    """Build the Atari agent's pure functions for ``cfg`` and a game with ``num_actions``."""
    if num_actions < 1:
        raise ValueError(f"num_actions must be >= 1, got {num_actions}")
    use_mlr = cfg.aux == "mlr"
    m = cfg.mlr
    dtype = jnp.bfloat16 if cfg.run.precision == "bf16" else jnp.float32
    dim = nature_cnn_output_dim(cfg.image_size, cfg.channels, cfg.kernels, cfg.strides)
    encoder = NatureCNN(cfg.channels, cfg.kernels, cfg.strides, cfg.renormalize, dtype,
                        parallel.conv_impl(cfg.run.conv_impl))
    head = DuelingC51Head(num_actions, cfg.num_atoms, cfg.hidden_size, cfg.noisy_std,
                          cfg.head_grad_scale, dtype)
    projection = HeadProjection(cfg.hidden_size, dtype)
    decoder = PredictiveLatentDecoder(dim, m.num_layers, m.num_heads, m.mlp_ratio,
                                      "states_then_actions", "torch_default", dtype)
    action_embedding = torch_dense(dim, num_actions, dtype)
    predictor = torch_dense(2 * cfg.hidden_size, 2 * cfg.hidden_size, dtype)
    support = jnp.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)
    optimizer = optax.adam(cfg.lr, eps=cfg.adam_eps)
    min_length = max(m.seq_len, cfg.n_step + 1) if use_mlr else cfg.n_step + 1

    def encode(params, frames):
        """frames f32[..., C, H, W] -> f32[..., D]."""
        lead = frames.shape[:-3]
        latents = encoder.apply({"params": params}, frames.reshape((-1,) + frames.shape[-3:]))
        return latents.reshape(lead + (dim,))

    def q_log_probs(params, frames, noise_key):
        """``params`` with "encoder" and "head"; frames f32[B, C, H, W] -> f32[B, A, N]."""
        return head.apply({"params": params["head"]}, encode(params["encoder"], frames), noise_key)

    def augment(key, frames, axis_name):
        """Shift + intensity drawn for every frame of f32[B, T, C, H, W]."""

        def one_sample(sample_key, sample):
            shift_key, intensity_key = jax.random.split(sample_key)
            shifted = random_shift(shift_key, sample, cfg.shift_pad)
            return intensity(intensity_key, shifted, cfg.intensity_scale)

        return jax.vmap(one_sample)(parallel.sample_keys(key, frames.shape[0], axis_name), frames)

    def draw_mask(key, local_batch, axis_name):
        """One cube mask f32[T, H, W] for the batch, or this device's f32[B, T, H, W]."""
        args = (m.seq_len, cfg.image_size, m.patch_size, m.block_size, m.mask_ratio,
                m.mask_count_rule)
        if not m.mask_per_sample:
            return cube_mask(key, *args)
        masks = cube_mask(key, *args, batch_size=local_batch * parallel.num_shards(axis_name))
        return parallel.shard_slice(masks, axis_name)

    def init(key: chex.PRNGKey) -> AtariState:
        keys = jax.random.split(key, 6)
        frames = jnp.zeros((1, cfg.frame_stack, cfg.image_size, cfg.image_size), jnp.float32)
        params = {"encoder": encoder.init(keys[0], frames)["params"],
                  "head": head.init(keys[1], jnp.zeros((1, dim)))["params"]}
        momentum = {}
        if use_mlr:
            tokens = jnp.zeros((1, m.seq_len, dim))
            params["decoder"] = decoder.init(keys[2], tokens, tokens)["params"]
            params["action_embedding"] = action_embedding.init(
                keys[3], jnp.zeros((1, num_actions)))["params"]
            params["predictor"] = predictor.init(
                keys[4], jnp.zeros((1, 2 * cfg.hidden_size)))["params"]
            momentum = _copy({"encoder": params["encoder"],
                              "projection": projection_params(params["head"])})
        return AtariState(
            params=params,
            target_params=_copy({"encoder": params["encoder"], "head": params["head"]}),
            momentum_params=momentum,
            opt_state=optimizer.init(params),
            step=jnp.zeros((), jnp.int32),
            noise_key=keys[5],
            target_noise_key=keys[5])

    def check_batch(batch):
        obs = batch.obs
        frame_shape = (cfg.frame_stack, cfg.image_size, cfg.image_size)
        if obs.ndim != 5 or obs.shape[1] < min_length or obs.shape[2:] != frame_shape:
            raise ValueError(
                f"batch.obs must be uint8[B, L>={min_length}, {cfg.frame_stack}, "
                f"{cfg.image_size}, {cfg.image_size}], got shape {obs.shape}")
        chex.assert_shape(batch.actions, obs.shape[:2])
        chex.assert_shape([batch.returns, batch.discounts, batch.weights], obs.shape[:1])

    def rl_inputs(state, batch, keys, noise_key, axis_name):
        """Augmented s_t f32[B, C, H, W] and the projected double-DQN target f32[B, N]."""
        n = cfg.n_step
        next_frames = _scaled(batch.obs[:, n:n + 1])
        online_next = q_log_probs(state.params, augment(keys[0], next_frames, axis_name)[:, 0],
                                  noise_key)
        target_next = q_log_probs(state.target_params,
                                  augment(keys[1], next_frames, axis_name)[:, 0],
                                  state.target_noise_key)
        target = double_dqn_target(jnp.exp(online_next), jnp.exp(target_next), batch.returns,
                                   batch.discounts, support)
        return augment(keys[2], _scaled(batch.obs[:, :1]), axis_name)[:, 0], target

    def mlr_inputs(state, batch, keys, axis_name):
        """Masked augmented frames f32[B, K, C, H, W], one-hot actions, targets f32[B, K, 2h]."""
        sequence = batch.obs[:, :m.seq_len]
        momentum = state.momentum_params
        target_frames = augment(keys[0], _scaled(sequence), axis_name)
        target = projection.apply({"params": momentum["projection"]},
                                  encode(momentum["encoder"], target_frames))
        masked = apply_cube_mask(sequence, draw_mask(keys[1], sequence.shape[0], axis_name))
        masked = _scaled(masked) if cfg.scale_masked_input else masked.astype(jnp.float32)
        masked = augment(keys[2], masked, axis_name)
        return masked, jax.nn.one_hot(batch.actions[:, :m.seq_len], num_actions), target

    def predict_latents(params, masked, one_hot_actions):
        """Decoder outputs at the state tokens -> projection -> predictor, f32[B, K, 2h]."""
        tokens = action_embedding.apply({"params": params["action_embedding"]}, one_hot_actions)
        decoded = decoder.apply({"params": params["decoder"]}, encode(params["encoder"], masked),
                                tokens)
        projected = projection.apply({"params": projection_params(params["head"])}, decoded)
        return predictor.apply({"params": params["predictor"]}, projected).astype(jnp.float32)

    def refresh_targets(state, params, noise_key):
        """Momentum from the pre-update weights; RL target from the post-update weights."""
        momentum = state.momentum_params
        if use_mlr:
            momentum = ema_update(momentum, {"encoder": state.params["encoder"],
                                             "projection": projection_params(state.params["head"])},
                                  cfg.momentum_tau)
        step = state.step + 1
        refresh = step % cfg.target_update_period == 0
        refreshed = ema_update(state.target_params,
                               {"encoder": params["encoder"], "head": params["head"]},
                               cfg.target_tau)
        return state.replace(
            params=params, momentum_params=momentum, step=step, noise_key=noise_key,
            target_params=jax.tree.map(lambda new, old: jnp.where(refresh, new, old),
                                       refreshed, state.target_params),
            target_noise_key=jnp.where(refresh, noise_key, state.target_noise_key))

    def train_step(state: AtariState, batch: Any, key: chex.PRNGKey,
                   axis_name: str | None = None) -> tuple[AtariState, dict[str, jax.Array]]:
        """One update on this device's shard of ``batch`` (an AtariBatch); see module doc."""
        check_batch(batch)
        keys = jax.random.split(key, 7)
        noise_key = keys[0]  # this update's head noise
        rl_input, rl_target = rl_inputs(state, batch, keys[1:4], noise_key, axis_name)
        if use_mlr:
            masked, one_hot_actions, mlr_target = mlr_inputs(state, batch, keys[4:7], axis_name)

        def loss_fn(params):
            log_probs = q_log_probs(params, rl_input, noise_key)
            chosen = select_actions(log_probs, batch.actions[:, 0])
            rl_loss = jnp.mean(batch.weights * c51_loss(chosen, rl_target))
            aux = {"rl_loss": rl_loss, "chosen_log_probs": chosen,
                   "q_mean": jnp.mean(jnp.exp(log_probs) @ support)}
            if not use_mlr:
                return rl_loss, aux | {"mlr_loss": jnp.zeros(())}
            loss_mlr, _ = mlr_loss(predict_latents(params, masked, one_hot_actions), mlr_target,
                                   batch.weights, scale=MLR_LOSS_SCALE)
            return rl_loss + m.weight * loss_mlr, aux | {"mlr_loss": loss_mlr}

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = parallel.pmean(grads, axis_name)
        # Clip groups of the code: encoder + head, and the transformer; the action embedding
        # and the predictor are in neither.
        stem, stem_norm = clip_by_global_norm({"encoder": grads["encoder"], "head": grads["head"]},
                                              cfg.clip_norm)
        grads = grads | stem
        metrics = {"loss": loss, "rl_loss": aux["rl_loss"], "mlr_loss": aux["mlr_loss"],
                   "q_mean": aux["q_mean"], "grad_norm": stem_norm}
        if use_mlr:
            grads["decoder"], metrics["decoder_grad_norm"] = clip_by_global_norm(
                grads["decoder"], cfg.clip_norm)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        new_state = refresh_targets(state.replace(opt_state=opt_state),
                                    optax.apply_updates(state.params, updates), noise_key)
        metrics = parallel.pmean(metrics, axis_name)
        metrics[FINITE] = all_finite(metrics)
        metrics["priorities"] = kl_priority(aux["chosen_log_probs"], rl_target)
        return new_state, metrics

    def select(state, obs, key, epsilon, noisy):
        """Epsilon-greedy on the expected Q of the online net; obs uint8[N, C, H, W]."""
        chex.assert_rank(obs, 4)
        log_probs = q_log_probs(state.params, _scaled(obs),
                                state.noise_key if noisy else None)
        greedy = jnp.argmax(jnp.exp(log_probs) @ support, axis=-1)
        explore_key, random_key = jax.random.split(key)
        explore = jax.random.uniform(explore_key, greedy.shape) < epsilon
        random_actions = jax.random.randint(random_key, greedy.shape, 0, num_actions)
        return jnp.where(explore, random_actions, greedy).astype(jnp.int32)

    def act(state: AtariState, obs: jax.Array, key: chex.PRNGKey,
            epsilon: float | jax.Array) -> jax.Array:
        """Training behaviour: the latest update's head noise, epsilon-greedy. -> int32[N]."""
        return select(state, obs, key, epsilon, noisy=True)

    def eval_act(state: AtariState, obs: jax.Array, key: chex.PRNGKey) -> jax.Array:
        """Evaluation behaviour: no noise, epsilon ``cfg.eval_epsilon``. -> int32[N]."""
        return select(state, obs, key, cfg.eval_epsilon, noisy=False)

    def param_counts(state: AtariState) -> dict[str, int]:
        """Online parameter counts per component plus ``"total"`` (works on eval_shape output)."""
        counts = {name: count_params(tree) for name, tree in state.params.items()}
        return counts | {"total": sum(counts.values())}

    return Agent(init=jax.jit(init),
                 train_step=jax.jit(train_step, static_argnames="axis_name"),
                 act=jax.jit(act),
                 eval_act=jax.jit(eval_act),
                 param_counts=param_counts)
