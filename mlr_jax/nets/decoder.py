"""The predictive latent decoder: a small bidirectional transformer over state and action tokens.

Both domains of the authors' code use the same pre-LayerNorm ViT block (one head, MLP ratio 2,
exact-erf GELU, no qkv bias, LayerNorm eps 1e-5, no dropout) and the same sinusoidal position
table indexed by the time step, added to the state tokens and to the action tokens alike.
Neither applies a final LayerNorm after the blocks (the DMC code has one commented out).
What differs between the domains:

* token order: Atari concatenates ``[s_0..s_{T-1}, a_0..a_{T-1}]``
  (``layout="states_then_actions"``), DMC interleaves ``s_0, a_0, s_1, a_1, ...``
  (``layout="interleaved"``). Because the positions are added to the tokens and attention is
  bidirectional, the two orders compute the same function up to float summation order; the
  layout is kept so each domain matches its code exactly.
* initialisation: the Atari code leaves the transformer at PyTorch's default ``nn.Linear``
  init (``init_scheme="torch_default"``: weights and biases uniform in +-1/sqrt(fan_in)); the DMC
  code re-initialises every Linear with a normal of std 0.02 truncated at +-1 std and zero
  bias (``init_scheme="trunc_normal"``). LayerNorms start at (1, 0) in both.
* the DMC code also creates two mask-token parameters that its forward pass never uses; they
  are left out here (they receive no gradient and change nothing).

The action embedding (Atari: ``Linear(one_hot(a), D)``; DMC: ``Linear(a, D)``) belongs to the
caller, which may build it with :func:`linear_init` to match the domain's initialisation.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LAYOUTS = ("states_then_actions", "interleaved")
INITS = ("torch_default", "trunc_normal")
LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default (flax defaults to 1e-6)


def sinusoidal_embedding(length: int, dim: int) -> jax.Array:
    """Fixed sinusoidal position table.

    ``pe[p, 2i] = sin(p * w_i)``, ``pe[p, 2i + 1] = cos(p * w_i)`` with
    ``w_i = exp(-2i * log(10000) / dim)``, computed in float32 like the authors' code.

    Args:
      length: number of positions (time steps).
      dim: embedding width; must be even.

    Returns:
      f32[length, dim].
    """
    if length < 1 or dim < 2 or dim % 2:
        raise ValueError(f"need length >= 1 and an even dim >= 2, got length={length}, dim={dim}")
    position = np.arange(length, dtype=np.float32)[:, None]
    freq = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim))
    table = np.zeros((length, dim), np.float32)
    table[:, 0::2] = np.sin(position * freq)
    table[:, 1::2] = np.cos(position * freq)
    return jnp.asarray(table)


def _symmetric_uniform(bound: float) -> Callable[..., jax.Array]:
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear_init(scheme: str, fan_in: int) -> dict[str, Any]:
    """``kernel_init``/``bias_init`` keyword arguments of ``nn.Dense`` for one init scheme.

    Args:
      scheme: ``"torch_default"`` (PyTorch ``nn.Linear``: kaiming-uniform with a = sqrt(5),
        i.e. weights and biases uniform in +-1/sqrt(fan_in)) or ``"trunc_normal"`` (weights
        from N(0, 0.02^2) truncated at +-0.02, zero bias; the DMC code's MLR module).
      fan_in: number of input features of the layer.
    """
    if scheme == "torch_default":
        return {"kernel_init": nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
                "bias_init": _symmetric_uniform(1.0 / math.sqrt(fan_in))}
    if scheme == "trunc_normal":
        return {"kernel_init": nn.initializers.truncated_normal(0.02, lower=-1.0, upper=1.0),
                "bias_init": nn.initializers.zeros}
    raise ValueError(f"init must be one of {INITS}, got {scheme!r}")


class SelfAttention(nn.Module):
    """Multi-head self-attention without mask, qkv without bias, output projection with bias.

    Params: ``qkv`` kernel [D, 3D] (output features ordered q, k, v, each heads x head_dim),
    ``proj`` kernel [D, D] and bias [D].
    """

    dim: int
    num_heads: int = 1
    init_scheme: str = "torch_default"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, N, D] -> [B, N, D] in ``dtype``."""
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        batch, tokens, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, use_bias=False, dtype=self.dtype, name="qkv",
                       **linear_init(self.init_scheme, self.dim))(x)
        qkv = qkv.reshape(batch, tokens, 3, self.num_heads, head_dim)
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", query * head_dim ** -0.5, key)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, value).reshape(batch, tokens, self.dim)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj", **linear_init(self.init_scheme, self.dim))(out)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``.

    The MLP is ``Dense(int(mlp_ratio * D)) -> GELU (exact erf) -> Dense(D)``. Parameters are
    float32; ``dtype`` is the computation dtype of the dense layers (e.g. bfloat16).
    """

    dim: int
    num_heads: int = 1
    mlp_ratio: float = 2.0
    init_scheme: str = "torch_default"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, N, D] -> [B, N, D] (the residual stream keeps the dtype of ``x``)."""
        hidden = int(self.dim * self.mlp_ratio)
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm1")(x)
        x = x + SelfAttention(self.dim, self.num_heads, self.init_scheme, self.dtype, name="attn")(h)
        h = nn.LayerNorm(epsilon=LAYER_NORM_EPS, dtype=self.dtype, name="norm2")(x)
        h = nn.Dense(hidden, dtype=self.dtype, name="fc1", **linear_init(self.init_scheme, self.dim))(h)
        h = nn.gelu(h, approximate=False)
        h = nn.Dense(self.dim, dtype=self.dtype, name="fc2", **linear_init(self.init_scheme, hidden))(h)
        return x + h


class PredictiveLatentDecoder(nn.Module):
    """Bidirectional transformer over masked state latents and action tokens.

    Attributes:
      dim: D, token width (Atari 3136, DMC 50).
      num_layers: number of transformer blocks.
      num_heads: attention heads.
      mlp_ratio: MLP hidden width / D.
      layout: ``"states_then_actions"`` (Atari) or ``"interleaved"`` (DMC).
      init_scheme: ``"torch_default"`` (Atari code) or ``"trunc_normal"`` (DMC code); see
        :func:`linear_init`.
      dtype: computation dtype of the dense layers; parameters stay float32.
    """

    dim: int
    num_layers: int = 2
    num_heads: int = 1
    mlp_ratio: float = 2.0
    layout: str = "states_then_actions"
    init_scheme: str = "torch_default"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, state_tokens: jax.Array, action_tokens: jax.Array) -> jax.Array:
        """Decode the state tokens in the context of the whole sequence.

        Args:
          state_tokens: [B, T, D] latents of the (masked) observations s_0..s_{T-1}.
          action_tokens: [B, T, D] embeddings of a_0..a_{T-1} (a_i taken at s_i), without
            position; the decoder adds the same position embedding to both streams.

        Returns:
          f32[B, T, D], the outputs at the state positions.
        """
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        chex.assert_rank([state_tokens, action_tokens], 3)
        chex.assert_equal_shape([state_tokens, action_tokens])
        batch, seq_len, dim = state_tokens.shape
        if dim != self.dim:
            raise ValueError(f"token width {dim} does not match decoder dim={self.dim}")
        position = sinusoidal_embedding(seq_len, self.dim)
        states = state_tokens.astype(jnp.float32) + position
        actions = action_tokens.astype(jnp.float32) + position
        if self.layout == "states_then_actions":
            x = jnp.concatenate([states, actions], axis=1)
        else:
            x = jnp.stack([states, actions], axis=2).reshape(batch, 2 * seq_len, dim)
        for i in range(self.num_layers):
            x = TransformerBlock(self.dim, self.num_heads, self.mlp_ratio, self.init_scheme, self.dtype,
                                 name=f"block_{i}")(x)
        return x[:, :seq_len] if self.layout == "states_then_actions" else x[:, 0::2]
