"""A VALID 2-D convolution with two interchangeable implementations.

:class:`Conv` has exactly the parameters of ``flax.linen.Conv`` (``kernel`` HWIO, ``bias``),
so checkpoints and weight ports do not depend on the implementation:

* ``"xla"``: ``lax.conv_general_dilated`` -- cuDNN on GPUs, the TPU convolution units.
* ``"im2col"``: :func:`im2col_conv`, the convolution as matmuls over a few frames at a time.
  XLA:CPU's convolutions, and above all their gradients, are several times slower than its
  matmuls for these shapes (measured in benchmarks/README.md), so this form is the faster one
  on CPUs. The patch matrix (``k * k`` times the input) is built for :func:`chunk_size`
  frames at a time inside a loop, never for the whole batch, so memory stays bounded (the DMC
  MLR branch would otherwise need 7 GB of patches per layer) and the patches stay in cache.

Which one suits the device is decided outside the pure modules
(:func:`mlr_jax.parallel.conv_impl`, from ``run.conv_impl``).
"""

from __future__ import annotations

import functools
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

IMPLS = ("xla", "im2col")
# Patch bytes per loop iteration of im2col_conv. On a 2-core EPYC (2 MB L2, 32 MB L3) one or
# two DMC frames (3.5 MB of 39x39x576 float32 patches each) per iteration ran the encoder
# gradient fastest: 0.58 s at batch 128, against 0.77 s with 4 frames and 1.17 s for XLA.
CHUNK_BYTES = 8 << 20


def _out_size(size: int, k: int, stride: int) -> int:
    return (size - k) // stride + 1


def _patches(x: jax.Array, k: int, stride: int) -> jax.Array:
    """``[N, H, W, C] -> [N, H', W', k*k*C]``: the k*k strided windows, in (row, col, channel)
    order, i.e. the order of an HWIO kernel reshaped to ``[k*k*C, F]``."""
    _, h, w, _ = x.shape
    oh, ow = _out_size(h, k, stride), _out_size(w, k, stride)
    return jnp.concatenate(
        [x[:, a:a + stride * (oh - 1) + 1:stride, b:b + stride * (ow - 1) + 1:stride, :]
         for a in range(k) for b in range(k)], axis=-1)


def chunk_size(x_shape: tuple[int, ...], k: int, stride: int, itemsize: int) -> int:
    """Frames per loop iteration: the largest divisor of the batch whose patches fit in
    :data:`CHUNK_BYTES` (at least 1)."""
    n, h, w, c = x_shape
    per_frame = _out_size(h, k, stride) * _out_size(w, k, stride) * k * k * c * itemsize
    limit = max(1, CHUNK_BYTES // per_frame)
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _chunks(x: jax.Array, chunk: int) -> jax.Array:
    return x.reshape(x.shape[0] // chunk, chunk, *x.shape[1:])


def _unchunk(y: jax.Array) -> jax.Array:
    return y.reshape(y.shape[0] * y.shape[1], *y.shape[2:])


def xla_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_general_dilated``, VALID, NHWC x HWIO -> NHWC."""
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _chunked_matmul_conv(x, kernel, stride, chunk):
    k, _, c, f = kernel.shape
    matrix = kernel.reshape(k * k * c, f)
    return _unchunk(jax.lax.map(lambda xc: _patches(xc, k, stride) @ matrix, _chunks(x, chunk)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _im2col(x: jax.Array, kernel: jax.Array, stride: int, chunk: int) -> jax.Array:
    return _chunked_matmul_conv(x, kernel, stride, chunk)


def _im2col_fwd(x, kernel, stride, chunk):
    # Only the inputs are saved: the backward pass rebuilds each chunk's patches, so the
    # patch matrix of the whole batch never exists. Whether x needs a gradient at all (not for
    # the first layer, whose input is pixels) travels as the residuals' tree structure.
    x_needs_grad = () if x.perturbed else None
    return (_chunked_matmul_conv(x.value, kernel.value, stride, chunk),
            (x.value, kernel.value, x_needs_grad))


def _im2col_bwd(stride, chunk, residuals, dy):
    x, kernel, x_needs_grad = residuals
    k, _, c, f = kernel.shape
    _, h, w, _ = x.shape
    oh, ow = dy.shape[1:3]
    matrix = kernel.reshape(k * k * c, f)
    zero = jnp.zeros((), x.dtype)

    def body(dkernel, inputs):
        xc, dyc = inputs
        dkernel = dkernel + jnp.einsum("nhwp,nhwf->pf", _patches(xc, k, stride), dyc,
                                       preferred_element_type=jnp.float32)
        if x_needs_grad is None:
            return dkernel, None
        dpatches = dyc @ matrix.T  # [chunk, H', W', k*k*C]
        dx = zero
        for i in range(k * k):  # scatter each window back: the transpose of its strided slice
            a, b = divmod(i, k)
            dx = dx + jax.lax.pad(dpatches[..., i * c:(i + 1) * c], zero, [
                (0, 0, 0),
                (a, h - a - stride * (oh - 1) - 1, stride - 1),
                (b, w - b - stride * (ow - 1) - 1, stride - 1),
                (0, 0, 0)])
        return dkernel, dx

    dkernel, dx = jax.lax.scan(body, jnp.zeros(matrix.shape, jnp.float32),
                               (_chunks(x, chunk), _chunks(dy, chunk)))
    dkernel = dkernel.reshape(kernel.shape).astype(kernel.dtype)
    return (None if dx is None else _unchunk(dx)), dkernel


_im2col.defvjp(_im2col_fwd, _im2col_bwd, symbolic_zeros=True)


def im2col_conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """VALID convolution as matmuls over :func:`chunk_size` frames at a time.

    Forward: per chunk, ``patches [n, H', W', k*k*C] @ kernel [k*k*C, F]``. Backward (a custom
    VJP, so no patch matrix is stored for it): per chunk, the patches are rebuilt,
    ``dkernel += patches^T @ dy`` (accumulated in float32) and ``dx`` is ``dy @ kernel^T``
    scattered back window by window.

    Args:
      x: [N, H, W, C] input.
      kernel: [k, k, C, F] weights (HWIO).
      stride: the same in both spatial dimensions.

    Returns:
      [N, H', W', F] with ``H' = (H - k) // stride + 1`` (likewise W').
    """
    chex.assert_rank([x, kernel], 4)
    chex.assert_equal(x.shape[-1], kernel.shape[2])
    chunk = chunk_size(x.shape, kernel.shape[0], stride, jnp.dtype(x.dtype).itemsize)
    return _im2col(x, kernel.astype(x.dtype), stride, chunk)


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
        if self.impl == "im2col":
            y = im2col_conv(x, kernel, self.stride)
        else:
            y = xla_conv(x, kernel, self.stride)
        return y + bias.astype(self.dtype)
