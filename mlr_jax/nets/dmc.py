"""Flax modules of the DMControl agent: CURL's pixel encoder, SAC actor and twin critic, and
the small MLPs of the MLR branch.

Images are channels-first ``[B, C, H, W]`` (uint8 0-255 or float in the same range); the
encoder divides by 255, runs the convolutions in NHWC and flattens in C,H,W order.

Parameter sharing follows the authors' code: the critic owns the encoder (convs + Linear +
LayerNorm); the actor owns only its own Linear + LayerNorm and MLP and reads the critic's
conv features (:class:`ConvStack` applied with the critic's conv parameters, under
stop-gradient), so the actor's loss never trains the convolutions.

Initialisation (CURL's ``weight_init``): Linear layers orthogonal with zero bias; convolutions
delta-orthogonal (only the kernel centre is non-zero, an orthogonal matrix with ReLU gain
sqrt(2)) with zero bias. The MLR modules use truncated normal (std 0.02, cut at +-1 std) with
zero bias, like the authors' MLR module.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mlr_jax.nets.conv import Conv
from mlr_jax.nets.decoder import linear_init
from mlr_jax.rl import sac

Dtype = Any

dense_init = nn.initializers.orthogonal()
# The authors' MLR init: normal std 0.02 truncated at +-1 std (the fan-in plays no role).
mlr_init = linear_init("trunc_normal", fan_in=1)["kernel_init"]


def delta_orthogonal(gain: float = math.sqrt(2.0)) -> nn.initializers.Initializer:
    """Conv kernel init ``[kh, kw, in, out]``: zeros except an orthogonal centre tap."""

    def init(key: chex.PRNGKey, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        if len(shape) != 4 or shape[0] != shape[1] or shape[0] % 2 == 0:
            raise ValueError(f"delta_orthogonal needs a square odd [k, k, in, out] kernel, got {shape}")
        centre = nn.initializers.orthogonal(scale=gain)(key, shape[2:], dtype)
        mid = shape[0] // 2
        return jnp.zeros(shape, dtype).at[mid, mid].set(centre)

    return init


class ConvStack(nn.Module):
    """``num_layers`` 3x3 convolutions with ReLU (first stride 2, others 1, no padding).

    ``__call__(obs [B, C, H, W]) -> f32[B, F]`` with ``F = num_filters * H' * W'`` flattened in
    C,H,W order (84x84 input, 4 layers: 64 x 35 x 35).
    """

    num_filters: int
    num_layers: int
    dtype: Dtype = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        chex.assert_rank(obs, 4)
        x = jnp.transpose(obs.astype(jnp.float32) / 255.0, (0, 2, 3, 1)).astype(self.dtype)
        for i in range(self.num_layers):
            x = Conv(self.num_filters, 3, stride=1 if i else 2, impl=self.conv_impl,
                     kernel_init=delta_orthogonal(), bias_init=nn.initializers.zeros,
                     dtype=self.dtype, name=f"conv{i}")(x)
            x = nn.relu(x)
        x = jnp.transpose(x, (0, 3, 1, 2))
        return x.reshape(x.shape[0], -1).astype(jnp.float32)


class FeatureHead(nn.Module):
    """Linear to ``feature_dim`` then LayerNorm (no tanh): ``f32[B, F] -> f32[B, feature_dim]``."""

    feature_dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        x = nn.Dense(self.feature_dim, kernel_init=dense_init, dtype=self.dtype, name="fc")(h)
        return nn.LayerNorm(epsilon=1e-5, name="ln")(x.astype(jnp.float32))


class PixelEncoder(nn.Module):
    """CURL's pixel encoder: :class:`ConvStack` then :class:`FeatureHead`.

    ``__call__(obs [B, C, H, W]) -> f32[B, feature_dim]``; ``from_conv(h)`` applies only the
    Linear + LayerNorm to conv features ``h [B, F]``.
    """

    feature_dim: int
    num_filters: int
    num_layers: int
    dtype: Dtype = jnp.float32
    conv_impl: str = "xla"

    def setup(self):
        self.convs = ConvStack(self.num_filters, self.num_layers, self.dtype, self.conv_impl)
        self.head = FeatureHead(self.feature_dim, self.dtype)

    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.head(self.convs(obs))

    def from_conv(self, h: jax.Array) -> jax.Array:
        return self.head(h)


class MLP(nn.Module):
    """Dense layers with ReLU between them: ``features=(h1, ..., out)``."""

    features: tuple[int, ...]
    kernel_init: nn.initializers.Initializer = dense_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.features):
            if i:
                x = nn.relu(x)
            x = nn.Dense(width, kernel_init=self.kernel_init, dtype=self.dtype, name=f"fc{i}")(x)
        return x.astype(jnp.float32)


class Critic(nn.Module):
    """Encoder + two Q MLPs on ``concat(feature, action)`` (hidden ``hidden_dim`` x 2).

    ``__call__(obs [B, C, H, W], action [B, A]) -> (q1 f32[B], q2 f32[B])``;
    ``from_conv(h [B, F], action)`` is the same from precomputed conv features.
    """

    feature_dim: int
    num_filters: int
    num_layers: int
    hidden_dim: int
    dtype: Dtype = jnp.float32
    conv_impl: str = "xla"

    def setup(self):
        self.encoder = PixelEncoder(self.feature_dim, self.num_filters, self.num_layers, self.dtype,
                                    self.conv_impl)
        self.q1 = MLP((self.hidden_dim, self.hidden_dim, 1), dtype=self.dtype)
        self.q2 = MLP((self.hidden_dim, self.hidden_dim, 1), dtype=self.dtype)

    def _q_values(self, feature: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        chex.assert_equal_shape_prefix([feature, action], 1)
        x = jnp.concatenate([feature, action.astype(feature.dtype)], axis=-1)
        return self.q1(x)[:, 0], self.q2(x)[:, 0]

    def __call__(self, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self._q_values(self.encoder(obs), action)

    def from_conv(self, h: jax.Array, action: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self._q_values(self.encoder.from_conv(h), action)


class Actor(nn.Module):
    """Policy head on (shared, detached) conv features.

    ``__call__(h f32[B, F]) -> (mean f32[B, A], log_std f32[B, A])``: own Linear + LayerNorm,
    MLP ``hidden_dim`` x 2, then mean and log-std; the log-std is squashed into
    ``[log_std_min, log_std_max]`` with tanh. The action is ``tanh`` of a Gaussian sample
    (:func:`mlr_jax.rl.sac.tanh_gaussian_sample_and_logprob`).
    """

    action_dim: int
    feature_dim: int
    hidden_dim: int
    log_std_min: float
    log_std_max: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        feature = FeatureHead(self.feature_dim, self.dtype, name="head")(jax.lax.stop_gradient(h))
        out = MLP((self.hidden_dim, self.hidden_dim, 2 * self.action_dim), dtype=self.dtype,
                  name="trunk")(feature)
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        return mean, sac.squash_log_std(raw_log_std, self.log_std_min, self.log_std_max)


def reinit_feature_head(key: chex.PRNGKey, encoder_params: Any) -> Any:
    """The authors' MLR re-initialisation of an encoder's Linear + LayerNorm.

    Args:
      key: PRNG key for the new Linear kernel.
      encoder_params: :class:`PixelEncoder` parameters ``{"convs": ..., "head": ...}``.

    Returns:
      The same tree with ``head/fc`` kernel ~ truncated normal (std 0.02, +-1 std), zero
      bias, and ``head/ln`` scale 1, bias 0; the convolutions untouched.
    """
    head = encoder_params["head"]
    kernel = head["fc"]["kernel"]
    new_head = {
        "fc": {"kernel": mlr_init(key, kernel.shape, kernel.dtype),
               "bias": jnp.zeros_like(head["fc"]["bias"])},
        "ln": {"scale": jnp.ones_like(head["ln"]["scale"]), "bias": jnp.zeros_like(head["ln"]["bias"])},
    }
    return {**encoder_params, "head": new_head}
