"""A VALID 2-D convolution with two interchangeable implementations.

:class:`Conv` has exactly the parameters of ``flax.linen.Conv`` (``kernel`` HWIO, ``bias``),
so checkpoints and weight ports do not depend on the implementation:

* ``"xla"``: ``lax.conv_general_dilated`` -- cuDNN on GPUs, the TPU convolution units.
* ``"im2col"``: the ``k * k`` strided windows concatenated along channels and one matmul.
  XLA:CPU's own convolutions are several times slower than its matmuls for these shapes
  (measured in benchmarks/README.md), so the im2col form is the faster one on CPUs. The patch
  matrix is ``k * k`` times the input; where it would exceed :data:`IM2COL_MAX_BYTES` (e.g.
  the DMC MLR branch: 2,048 frames of 39x39x576 floats = 7 GB per layer) the layer falls back
  to the XLA convolution.

Which one suits the device is decided outside the pure modules
(:func:`mlr_jax.parallel.conv_impl`, from ``run.conv_impl``).
"""

from __future__ import annotations

from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("xla", "im2col")
IM2COL_MAX_BYTES = 1 << 30


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution as one matmul.

    Args:
      x: [N, H, W, C] input.
      kernel: [k, k, C, F] weights (HWIO).
      stride: the same in both spatial dimensions.

    Returns:
      [N, H', W', F] with ``H' = (H - k) // stride + 1`` (likewise W').
    """
    chex.assert_rank([x, kernel], 4)
    k, _, c, f = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    windows = [x[:, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride, :]
               for a in range(k) for b in range(k)]
    patches = jnp.concatenate(windows, axis=-1)  # [N, H', W', k*k*C] in (a, b, c) order
    return patches @ kernel.reshape(k * k * c, f)


class Conv(nn.Module):
    """``nn.Conv(features, (k, k), (s, s), padding="VALID")`` on NHWC inputs, see module doc.

    Attributes:
      features: output channels.
      kernel_size: square kernel side ``k``.
      stride: spatial stride.
      impl: ``"xla"`` or ``"im2col"``.
      dtype: computation dtype (parameters stay float32).
    """

    features: int
    kernel_size: int
    stride: int = 1
    impl: str = "xla"
    dtype: Any = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    bias_init: Any = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if self.impl not in IMPLS:
            raise ValueError(f"conv impl must be one of {IMPLS}, got {self.impl!r}")
        n, h, w, c = x.shape
        patch_bytes = (n * ((h - k) // self.stride + 1) * ((w - k) // self.stride + 1) * k * k * c
                       * jnp.dtype(self.dtype).itemsize)
        if self.impl == "im2col" and patch_bytes <= IM2COL_MAX_BYTES:
            y = im2col_conv(x, kernel, self.stride)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), "VALID",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)
