"""Spatio-temporal "cube" masks for mask-based latent reconstruction.

An image of side ``image_size`` is cut into a ``grid x grid`` lattice of square patches
(``grid = image_size // patch_size``). A sequence of ``seq_len`` frames is split into
temporal blocks of ``block_size`` consecutive frames; every block draws one spatial mask that
hides exactly :func:`num_masked_patches` cells, and all frames of the block share it.

Masks are pixel masks in float32: 1 = kept pixel, 0 = masked pixel, constant inside every
patch. They cover all channels of a frame (the stacked frames of an observation).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

MASK_COUNT_RULES = ("keep_floor", "mask_floor")


def num_masked_patches(cells: int, ratio: float, rule: str) -> int:
    """Number of grid cells to mask in one temporal block.

    Args:
      cells: number of grid cells (``grid * grid``).
      ratio: mask ratio in [0, 1].
      rule: ``"keep_floor"`` keeps ``floor(ratio * cells)`` cells and masks the rest (the
        Atari code marks kept cells: 25 of 49 masked at ratio 0.5); ``"mask_floor"`` masks
        ``floor(ratio * cells)`` cells (the DMC code: 50 of 100).

    Returns:
      The number of masked cells, an int in [0, cells].
    """
    if cells < 1:
        raise ValueError(f"cells must be >= 1, got {cells}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    floor = math.floor(ratio * cells)
    if rule == "keep_floor":
        return cells - floor
    if rule == "mask_floor":
        return floor
    raise ValueError(f"mask count rule must be one of {MASK_COUNT_RULES}, got {rule!r}")


def _check_sizes(seq_len: int, image_size: int, patch_size: int, block_size: int) -> None:
    for name, value in (("seq_len", seq_len), ("image_size", image_size),
                        ("patch_size", patch_size), ("block_size", block_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if seq_len % block_size:
        raise ValueError(
            f"seq_len={seq_len} is not divisible by block_size={block_size}")
    if image_size % patch_size:
        raise ValueError(
            f"image_size={image_size} is not divisible by patch_size={patch_size}")


def cube_mask(key: chex.PRNGKey, seq_len: int, image_size: int, patch_size: int,
              block_size: int, mask_ratio: float, rule: str,
              batch_size: int | None = None) -> jax.Array:
    """Draw a cube mask.

    All size arguments are static Python ints (jit with ``static_argnames`` or
    ``functools.partial``).

    Args:
      key: PRNG key.
      seq_len: T, number of frames; a multiple of ``block_size``.
      image_size: H = W, image side in pixels; a multiple of ``patch_size``.
      patch_size: patch side in pixels.
      block_size: number of consecutive frames sharing one spatial mask.
      mask_ratio: fraction of cells to mask, turned into a count by ``rule``.
      rule: see :func:`num_masked_patches`.
      batch_size: None draws one mask shared by the whole batch (the official code);
        an int draws an independent mask for each of ``batch_size`` sequences.

    Returns:
      f32[T, H, W] (``batch_size=None``) or f32[B, T, H, W]; 1 = kept, 0 = masked.
    """
    _check_sizes(seq_len, image_size, patch_size, block_size)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
    grid = image_size // patch_size
    cells = grid * grid
    num_masked = num_masked_patches(cells, mask_ratio, rule)
    num_blocks = seq_len // block_size
    lead = 1 if batch_size is None else batch_size

    # The rank of uniform noise is a uniformly random permutation of the cells; the
    # ``num_masked`` lowest-ranked cells are masked, so the count is exact.
    noise = jax.random.uniform(key, (lead, num_blocks, cells))
    ranks = jnp.argsort(jnp.argsort(noise, axis=-1), axis=-1)
    keep = (ranks >= num_masked).astype(jnp.float32).reshape(lead, num_blocks, grid, grid)
    pixels = jnp.repeat(jnp.repeat(keep, patch_size, axis=-2), patch_size, axis=-1)
    mask = jnp.repeat(pixels, block_size, axis=1)  # [lead, T, H, W]
    return mask[0] if batch_size is None else mask


def apply_cube_mask(frames: jax.Array, mask: jax.Array) -> jax.Array:
    """Zero the masked pixels of every channel.

    Args:
      frames: [B, T, C, H, W] images (any dtype; uint8 stays uint8).
      mask: f32[T, H, W] (shared by the batch) or f32[B, T, H, W] from :func:`cube_mask`.

    Returns:
      ``frames * mask`` broadcast over channels, in ``frames.dtype``.
    """
    chex.assert_rank(frames, 5)
    chex.assert_rank(mask, {3, 4})
    batch, seq_len, _, height, width = frames.shape
    expected = (seq_len, height, width) if mask.ndim == 3 else (batch, seq_len, height, width)
    chex.assert_shape(mask, expected)
    return frames * mask[..., None, :, :].astype(frames.dtype)
