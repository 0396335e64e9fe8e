"""Networks of the Atari agent: Nature CNN encoder, noisy dueling C51 head, MLR projection.

Layouts follow the authors' code (SPR's ``PVCatDqnModel``): images are ``[B, C, H, W]``
floats, the conv stack runs in NHWC and its output is flattened in C, H, W order (3136 =
64 x 7 x 7 for 84 x 84 inputs). Initialisations follow PyTorch's defaults (uniform in
+-1/sqrt(fan_in)) and ``NoisyLinear``'s own init. Parameters are float32; ``dtype`` is the
computation dtype of convolutions and matmuls (bfloat16 for mixed precision).

The MLR projection is the first layer of the value stream and of the advantage stream of the
head, concatenated value first (the code's ``QL1Head`` with type ``["value", "advantage"]``),
without noise and without ReLU. :class:`HeadProjection` holds exactly those two layers under the
same names as in :class:`DuelingC51Head`, so ``projection_params(head_params)`` is a
sub-tree of the head's parameters (online) or a separate copy (momentum target).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from mlr_jax.nets.conv import Conv
from mlr_jax.nets.decoder import linear_init

PROJECTION_LAYERS = ("value_hidden", "advantage_hidden")


def conv_output_size(image_size: int, kernels: Sequence[int], strides: Sequence[int]) -> int:
    """Spatial side after a stack of VALID convolutions."""
    size = image_size
    for kernel, stride in zip(kernels, strides):
        size = (size - kernel) // stride + 1
    if size < 1:
        raise ValueError(f"image_size={image_size} is too small for kernels={tuple(kernels)}, "
                         f"strides={tuple(strides)}")
    return size


def nature_cnn_output_dim(image_size: int, channels: Sequence[int], kernels: Sequence[int],
                          strides: Sequence[int]) -> int:
    """Flattened width of :class:`NatureCNN`'s output (3136 for the paper's network)."""
    return channels[-1] * conv_output_size(image_size, kernels, strides) ** 2


def renormalize(x: jax.Array) -> jax.Array:
    """Per-sample min-max scaling ``(x - min) / (max - min)`` over the last axis.

    Args:
      x: [..., F] flattened latents.

    Returns:
      float32 [..., F] in [0, 1] (no epsilon, as in the code).
    """
    x = x.astype(jnp.float32)
    low = jnp.min(x, axis=-1, keepdims=True)
    high = jnp.max(x, axis=-1, keepdims=True)
    return (x - low) / (high - low)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def scale_grad(x: jax.Array, scale: float) -> jax.Array:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale``."""
    return x


def _scale_grad_fwd(x, scale):
    return x, None


def _scale_grad_bwd(scale, _, grad):
    return (grad * scale,)


scale_grad.defvjp(_scale_grad_fwd, _scale_grad_bwd)


class NatureCNN(nn.Module):
    """Conv-ReLU stack with VALID padding, optionally renormalised.

    Attributes:
      channels, kernels, strides: per-layer settings (paper: 32/64/64, 8/4/3, 4/2/1).
      renormalize: apply :func:`renormalize` to the flattened output.
      dtype: computation dtype.
      conv_impl: ``"xla"`` or ``"im2col"`` (:mod:`mlr_jax.nets.conv`).
    """

    channels: Sequence[int] = (32, 64, 64)
    kernels: Sequence[int] = (8, 4, 3)
    strides: Sequence[int] = (4, 2, 1)
    renormalize: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: f32[B, C, H, W] -> f32[B, C' * H' * W'] (C, H, W order)."""
        chex.assert_rank(x, 4)
        if not len(self.channels) == len(self.kernels) == len(self.strides):
            raise ValueError(f"channels={self.channels}, kernels={self.kernels} and "
                             f"strides={self.strides} must have the same length")
        h = jnp.transpose(x, (0, 2, 3, 1)).astype(self.dtype)
        layers = zip(self.channels, self.kernels, self.strides)
        for i, (features, kernel, stride) in enumerate(layers):
            init = linear_init("torch_default", h.shape[-1] * kernel * kernel)
            h = Conv(features, kernel, stride, impl=self.conv_impl, dtype=self.dtype,
                     name=f"conv_{i}", **init)(h)
            h = nn.relu(h)
        h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1).astype(jnp.float32)
        return renormalize(h) if self.renormalize else h


def factorised_noise(key: chex.PRNGKey, num_in: int, num_out: int) -> tuple[jax.Array, jax.Array]:
    """``f(eps_in), f(eps_out)`` with ``eps ~ N(0, 1)`` and ``f(x) = sign(x) sqrt(|x|)``."""
    key_in, key_out = jax.random.split(key)

    def f(x):
        return jnp.sign(x) * jnp.sqrt(jnp.abs(x))

    return f(jax.random.normal(key_in, (num_in,))), f(jax.random.normal(key_out, (num_out,)))


class NoisyDense(nn.Module):
    """Factorised-Gaussian noisy linear layer (Fortunato et al., 2018).

    ``y = x (mu_W + sigma_W * eps_in eps_out^T) + mu_b + sigma_b * eps_out``; with
    ``noise_key=None`` the noise is off (``y = x mu_W + mu_b``). Init as the code's
    ``NoisyLinear``: ``mu ~ U(+-1/sqrt(in))``, ``sigma_W = std / sqrt(in)``,
    ``sigma_b = std / sqrt(out)``.

    Attributes:
      features: output width.
      std_init: sigma0 (0.1 in SPR/MLR).
      dtype: computation dtype of the matmul.
    """

    features: int
    std_init: float = 0.1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, noise_key: chex.PRNGKey | None = None) -> jax.Array:
        """x: [..., in] -> [..., features] in ``dtype``."""
        num_in = x.shape[-1]
        bound = 1.0 / math.sqrt(num_in)

        def uniform(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound)

        kernel = self.param("kernel_mu", uniform, (num_in, self.features))
        bias = self.param("bias_mu", uniform, (self.features,))
        kernel_sigma = self.param("kernel_sigma", nn.initializers.constant(self.std_init * bound),
                                  (num_in, self.features))
        bias_sigma = self.param("bias_sigma",
                                nn.initializers.constant(self.std_init / math.sqrt(self.features)),
                                (self.features,))
        if noise_key is not None:
            eps_in, eps_out = factorised_noise(noise_key, num_in, self.features)
            kernel = kernel + kernel_sigma * jnp.outer(eps_in, eps_out)
            bias = bias + bias_sigma * eps_out
        return x.astype(self.dtype) @ kernel.astype(self.dtype) + bias.astype(self.dtype)


class DuelingC51Head(nn.Module):
    """Noisy dueling distributional head: log-probabilities over atoms for every action.

    ``value = NoisyDense(N)(relu(NoisyDense(hidden)(x)))``, ``adv`` likewise with ``A * N``
    outputs plus a learned per-atom bias; ``logits = value + adv - mean_a(adv)``. The gradient
    into the input is scaled by ``grad_scale`` (1/sqrt(2)).

    Attributes:
      num_actions: A.
      num_atoms: N.
      hidden_size: width of the first layer of each stream.
      noisy_std: sigma0 of the noisy layers.
      grad_scale: factor on the gradient flowing back into the latent.
      dtype: computation dtype of the matmuls (the log-softmax is float32).
    """

    num_actions: int
    num_atoms: int = 51
    hidden_size: int = 256
    noisy_std: float = 0.1
    grad_scale: float = 2 ** -0.5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latent: jax.Array, noise_key: chex.PRNGKey | None = None) -> jax.Array:
        """latent: f32[B, D]; noise_key: None = no noise. Returns f32[B, A, N] log-probs."""
        chex.assert_rank(latent, 2)
        keys = [None] * 4 if noise_key is None else list(jax.random.split(noise_key, 4))

        def layer(features, name):
            return NoisyDense(features, self.noisy_std, self.dtype, name=name)

        x = scale_grad(latent, self.grad_scale)
        value = layer(self.num_atoms, "value_out")(
            nn.relu(layer(self.hidden_size, "value_hidden")(x, keys[0])), keys[1])
        advantage = layer(self.num_actions * self.num_atoms, "advantage_out")(
            nn.relu(layer(self.hidden_size, "advantage_hidden")(x, keys[2])), keys[3])
        bias = self.param("advantage_bias", nn.initializers.zeros, (self.num_atoms,))
        advantage = advantage.reshape(-1, self.num_actions, self.num_atoms).astype(jnp.float32)
        advantage = advantage + bias
        value = value.astype(jnp.float32)[:, None, :]
        logits = value + advantage - advantage.mean(axis=1, keepdims=True)
        return jax.nn.log_softmax(logits, axis=-1)


class HeadProjection(nn.Module):
    """The MLR projection: ``concat(value_hidden(x), advantage_hidden(x))`` without noise/ReLU.

    Its parameters carry the names of :class:`DuelingC51Head`'s first layers; apply it to
    ``projection_params(head_params)``.

    Attributes:
      hidden_size: width of each first layer (output is ``2 * hidden_size``).
      dtype: computation dtype.
    """

    hidden_size: int = 256
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, latent: jax.Array) -> jax.Array:
        """latent: [..., D] -> f32[..., 2 * hidden_size]."""
        outputs = [NoisyDense(self.hidden_size, dtype=self.dtype, name=name)(latent)
                   for name in PROJECTION_LAYERS]
        return jnp.concatenate(outputs, axis=-1).astype(jnp.float32)


def projection_params(head_params: chex.ArrayTree) -> dict[str, chex.ArrayTree]:
    """The sub-tree of a head's parameters used by :class:`HeadProjection`."""
    return {name: head_params[name] for name in PROJECTION_LAYERS}


def torch_dense(features: int, fan_in: int, dtype: Any = jnp.float32,
                name: str | None = None) -> nn.Dense:
    """``nn.Dense`` with PyTorch's default ``nn.Linear`` init (predictor, action embedding)."""
    return nn.Dense(features, dtype=dtype, name=name, **linear_init("torch_default", fan_in))


class BatchNorm2d(nn.Module):
    """PyTorch's ``BatchNorm2d`` in training mode on NHWC inputs: batch statistics only.

    SPR's transition model runs only inside updates, where torch normalises with the batch's
    mean and biased variance over (N, H, W); its running averages are never read, so none are
    kept. With ``axis_name`` the statistics are those of the global batch (devices averaged),
    so D devices normalise as one does.

    Attributes:
      eps: added to the variance (torch: 1e-5).
      axis_name: the data-parallel axis, or None on one device.
    """

    eps: float = 1e-5
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [N, H, W, C] -> f32[N, H, W, C]."""
        chex.assert_rank(x, 4)
        x = x.astype(jnp.float32)
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        moments = (jnp.mean(x, axis=(0, 1, 2)), jnp.mean(jnp.square(x), axis=(0, 1, 2)))
        if self.axis_name is not None:
            moments = jax.lax.pmean(moments, self.axis_name)
        mean, mean_sq = moments
        var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * scale + bias


class TransitionModel(nn.Module):
    """SPR's latent dynamics (``TransitionModel`` with ``blocks=0``, ``residual=False``).

    ``z' = renorm(relu(conv3x3(bn(relu(conv3x3([z, onehot(a)]))))))``: the action is one-hot
    broadcast over the feature map and appended after the latent channels; both 3x3
    convolutions are zero-padded to keep the map size (``Conv2dSame``), with PyTorch's default
    init; the hidden width equals the latent channels, as in the code.

    Attributes:
      num_actions: A.
      latent_shape: (C, h, w) of the encoder's output (64, 7, 7 for the paper's network).
      renormalize: min-max renormalise the output as the encoder does.
      dtype: computation dtype of the convolutions.
      conv_impl: ``"xla"`` or ``"im2col"``.
      axis_name: the data-parallel axis for the batch statistics (see :class:`BatchNorm2d`).
    """

    num_actions: int
    latent_shape: tuple[int, int, int]
    renormalize: bool = True
    dtype: Any = jnp.float32
    conv_impl: str = "xla"
    axis_name: str | None = None

    @nn.compact
    def __call__(self, latent: jax.Array, action: jax.Array) -> jax.Array:
        """latent: f32[B, C*h*w] (C, h, w order); action: int32[B] -> f32[B, C*h*w]."""
        chex.assert_rank([latent, action], [2, 1])
        channels, height, width = self.latent_shape
        x = latent.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
        one_hot = jax.nn.one_hot(action, self.num_actions, dtype=x.dtype)
        x = jnp.concatenate([x, jnp.broadcast_to(one_hot[:, None, None, :],
                                                 x.shape[:3] + (self.num_actions,))], axis=-1)

        def conv(h, name):
            init = linear_init("torch_default", h.shape[-1] * 9)
            padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
            return Conv(channels, 3, 1, impl=self.conv_impl, dtype=self.dtype, name=name,
                        **init)(padded)

        h = BatchNorm2d(axis_name=self.axis_name, name="norm")(nn.relu(conv(x, "conv_0")))
        h = nn.relu(conv(h, "conv_1")).astype(jnp.float32)
        out = h.transpose(0, 3, 1, 2).reshape(latent.shape[0], -1)
        return renormalize(out) if self.renormalize else out
