"""Cube masking: exact counts, temporal blocks, patch alignment, batch modes, errors."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.mlr.masking import apply_cube_mask, cube_mask, num_masked_patches


def _grid_cells(mask, patch):
    """Pixel mask [..., H, W] -> cell values [..., g, g] (top-left pixel of every patch)."""
    return np.asarray(mask)[..., ::patch, ::patch]


@pytest.mark.parametrize("cells,ratio,rule,expected", [
    (49, 0.5, "keep_floor", 25),   # Atari code: keeps 24, masks 25
    (100, 0.5, "mask_floor", 50),  # DMC code
    (49, 0.5, "mask_floor", 24),
    (100, 0.5, "keep_floor", 50),
    (49, 0.0, "mask_floor", 0),
    (49, 0.0, "keep_floor", 49),
    (10, 0.25, "keep_floor", 8),
])
def test_num_masked_patches(cells, ratio, rule, expected):
    assert num_masked_patches(cells, ratio, rule) == expected


@pytest.mark.parametrize("cells,ratio,rule", [(49, 0.5, "bogus"), (49, 1.5, "mask_floor"), (0, 0.5, "mask_floor")])
def test_num_masked_patches_errors(cells, ratio, rule):
    with pytest.raises(ValueError):
        num_masked_patches(cells, ratio, rule)


@pytest.mark.parametrize("image,patch,rule,masked", [(84, 12, "keep_floor", 25), (100, 10, "mask_floor", 50)])
def test_paper_grids_exact_count_per_block_and_sample(image, patch, rule, masked):
    seq_len, block, batch = 16, 8, 3
    mask = cube_mask(jax.random.key(0), seq_len, image, patch, block, 0.5, rule, batch_size=batch)
    chex.assert_shape(mask, (batch, seq_len, image, image))
    chex.assert_type(mask, jnp.float32)
    cells = _grid_cells(mask, patch)
    np.testing.assert_array_equal((cells == 0).sum(axis=(-2, -1)), np.full((batch, seq_len), masked))
    np.testing.assert_array_equal(np.asarray(mask).sum(axis=(-2, -1)),
                                  np.full((batch, seq_len), (cells.shape[-1] ** 2 - masked) * patch * patch))


def test_binary_and_patch_aligned():
    patch, grid = 3, 4
    mask = np.asarray(cube_mask(jax.random.key(1), 4, patch * grid, patch, 2, 0.5, "mask_floor", batch_size=2))
    assert set(np.unique(mask)) == {0.0, 1.0}
    blocks = mask.reshape(2, 4, grid, patch, grid, patch)
    np.testing.assert_array_equal(blocks, np.broadcast_to(blocks[:, :, :, :1, :, :1], blocks.shape))


def test_temporal_sharing_within_block_and_fresh_mask_per_block():
    seq_len, block = 12, 4
    mask = np.asarray(cube_mask(jax.random.key(2), seq_len, 84, 12, block, 0.5, "keep_floor", batch_size=4))
    for start in range(0, seq_len, block):
        for t in range(start, start + block):
            np.testing.assert_array_equal(mask[:, t], mask[:, start])
    # Two draws of 25 out of 49 cells coincide with probability 1 / C(49, 25) ~ 1e-14.
    for b in range(4):
        firsts = [mask[b, s] for s in range(0, seq_len, block)]
        for i in range(len(firsts)):
            for j in range(i + 1, len(firsts)):
                assert not np.array_equal(firsts[i], firsts[j])


def test_shared_vs_per_sample():
    key = jax.random.key(3)
    shared = cube_mask(key, 8, 84, 12, 8, 0.5, "keep_floor")
    chex.assert_shape(shared, (8, 84, 84))
    per_sample = np.asarray(cube_mask(key, 8, 84, 12, 8, 0.5, "keep_floor", batch_size=5))
    chex.assert_shape(per_sample, (5, 8, 84, 84))
    assert all(not np.array_equal(per_sample[0], per_sample[i]) for i in range(1, 5))


def test_keys_change_the_mask_and_cells_are_uniform():
    a = cube_mask(jax.random.key(4), 2, 8, 2, 2, 0.5, "mask_floor")
    b = cube_mask(jax.random.key(5), 2, 8, 2, 2, 0.5, "mask_floor")
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    # Every cell of a 4x4 grid is masked with probability 8/16 under a uniform choice.
    many = cube_mask(jax.random.key(6), 1, 8, 2, 1, 0.5, "mask_floor", batch_size=400)
    freq = (_grid_cells(many, 2) == 0).mean(axis=(0, 1))
    np.testing.assert_allclose(freq, 0.5, atol=0.12)


@pytest.mark.parametrize("kwargs,names", [
    (dict(seq_len=10, block_size=4), ("seq_len=10", "block_size=4")),
    (dict(image_size=84, patch_size=10), ("image_size=84", "patch_size=10")),
    (dict(batch_size=0), ("batch_size",)),
])
def test_bad_sizes_raise_with_values(kwargs, names):
    args = dict(seq_len=8, image_size=84, patch_size=12, block_size=4, mask_ratio=0.5, rule="keep_floor")
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        cube_mask(jax.random.key(0), **args)
    for name in names:
        assert name in str(err.value)


def test_apply_cube_mask_shared_and_per_sample():
    rng = np.random.default_rng(0)
    frames = rng.integers(1, 256, size=(3, 4, 2, 6, 6), dtype=np.uint8)
    shared = cube_mask(jax.random.key(7), 4, 6, 3, 2, 0.5, "mask_floor")
    out = apply_cube_mask(jnp.asarray(frames), shared)
    chex.assert_type(out, jnp.uint8)
    expected = frames * np.asarray(shared)[None, :, None].astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(out), expected)
    # Every channel is zero exactly where the mask is zero.
    np.testing.assert_array_equal(np.asarray(out) == 0, np.broadcast_to(
        np.asarray(shared)[None, :, None] == 0, frames.shape))

    per_sample = cube_mask(jax.random.key(8), 4, 6, 3, 2, 0.5, "mask_floor", batch_size=3)
    out = apply_cube_mask(jnp.asarray(frames, jnp.float32), per_sample)
    chex.assert_type(out, jnp.float32)
    np.testing.assert_array_equal(np.asarray(out), frames * np.asarray(per_sample)[:, :, None])


def test_apply_cube_mask_shape_mismatch():
    frames = jnp.ones((2, 4, 1, 6, 6))
    with pytest.raises(AssertionError):
        apply_cube_mask(frames, jnp.ones((4, 8, 8)))
    with pytest.raises(AssertionError):
        apply_cube_mask(frames, jnp.ones((3, 4, 6, 6)))


def test_jit_vmap_no_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def fn(key):
        return cube_mask(key, 4, 12, 3, 2, 0.5, "keep_floor", batch_size=2)

    first = fn(jax.random.key(0))
    second = fn(jax.random.key(1))
    chex.assert_shape([first, second], (2, 4, 12, 12))
    assert not np.array_equal(np.asarray(first), np.asarray(second))
    keys = jax.random.split(jax.random.key(2), 3)
    batched = jax.vmap(functools.partial(
        cube_mask, seq_len=4, image_size=12, patch_size=3, block_size=2, mask_ratio=0.5,
        rule="keep_floor"))(keys)
    chex.assert_shape(batched, (3, 4, 12, 12))
    np.testing.assert_array_equal((_grid_cells(batched, 3) == 0).sum(axis=(-2, -1)), 8)
