"""Image augmentations with one random draw per image (the leading axis).

All functions take channels-first images ``x[N, C, H, W]``; callers flatten batch and time
into ``N`` first (the authors draw augmentation independently for every frame of every
sequence). Crops and shifts keep the dtype; :func:`intensity` needs floating images.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def _crop_at(x: jax.Array, tops: jax.Array, lefts: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Crop ``x[N, C, H, W]`` at per-image offsets ``tops[N]``, ``lefts[N]`` to ``size``."""
    channels = x.shape[1]

    def crop_one(image, top, left):
        return jax.lax.dynamic_slice(image, (0, top, left), (channels, *size))

    return jax.vmap(crop_one)(x, tops, lefts)


def _random_offsets(key: chex.PRNGKey, n: int, max_top: int, max_left: int) -> tuple[jax.Array, jax.Array]:
    """Uniform integer offsets in [0, max_top] and [0, max_left], one pair per image."""
    key_top, key_left = jax.random.split(key)
    tops = jax.random.randint(key_top, (n,), 0, max_top + 1)
    lefts = jax.random.randint(key_left, (n,), 0, max_left + 1)
    return tops, lefts


def random_shift(key: chex.PRNGKey, x: jax.Array, pad: int) -> jax.Array:
    """Replicate-pad by ``pad`` pixels, then crop back to H x W at a random offset per image.

    Args:
      key: PRNG key.
      x: [N, C, H, W] images.
      pad: padding on each side (static int); offsets are uniform in [0, 2 * pad].

    Returns:
      [N, C, H, W], same dtype as ``x``.
    """
    chex.assert_rank(x, 4)
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    n, _, height, width = x.shape
    padded = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    tops, lefts = _random_offsets(key, n, 2 * pad, 2 * pad)
    return _crop_at(padded, tops, lefts, (height, width))


def _check_crop(x: jax.Array, size: int) -> None:
    chex.assert_rank(x, 4)
    height, width = x.shape[-2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"crop size={size} must be in [1, min(H, W)] for images of {height}x{width}")


def random_crop(key: chex.PRNGKey, x: jax.Array, size: int, inclusive: bool = True) -> jax.Array:
    """Random ``size x size`` crop with offsets uniform in [0, H - size] x [0, W - size].

    Args:
      key: PRNG key.
      x: [N, C, H, W] images.
      size: side of the crop (static int), e.g. 84 from 100.
      inclusive: False leaves out the last offset, ``H - size`` (``W - size``), as the DMC
        code's ``np.random.randint(0, H - size)`` does for the SAC batch (0..15 for 100 -> 84;
        kornia's crop in the MLR branch draws 0..16). Offsets are 0 when ``H == size``.

    Returns:
      [N, C, size, size], same dtype as ``x``.
    """
    _check_crop(x, size)
    n, _, height, width = x.shape
    last = 0 if inclusive else 1
    tops, lefts = _random_offsets(key, n, max(0, height - size - last), max(0, width - size - last))
    return _crop_at(x, tops, lefts, (size, size))


def center_crop(x: jax.Array, size: int) -> jax.Array:
    """Central ``size x size`` crop; offset ``(H - size) // 2`` like the DMC code's eval crop.

    Args:
      x: [N, C, H, W] images.
      size: side of the crop (static int).

    Returns:
      [N, C, size, size], same dtype as ``x``.
    """
    _check_crop(x, size)
    top = (x.shape[-2] - size) // 2
    left = (x.shape[-1] - size) // 2
    return x[..., top:top + size, left:left + size]


def intensity(key: chex.PRNGKey, x: jax.Array, scale: float) -> jax.Array:
    """Multiply each image by ``1 + scale * clip(eps, -2, 2)``, ``eps ~ N(0, 1)`` per image.

    Args:
      key: PRNG key.
      x: [N, ...] floating images.
      scale: noise scale (0.05 in MLR); the factor lies in [1 - 2 scale, 1 + 2 scale].

    Returns:
      [N, ...], same dtype as ``x``.
    """
    chex.assert_type(x, float)
    noise = jnp.clip(jax.random.normal(key, (x.shape[0],)), -2.0, 2.0)
    factor = (1.0 + scale * noise).astype(x.dtype)
    return x * factor.reshape((-1,) + (1,) * (x.ndim - 1))
