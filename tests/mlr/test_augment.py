"""Augmentations: shift = window of the edge-padded image, crops, intensity, no retracing."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.mlr.augment import center_crop, intensity, random_crop, random_shift


def _images(n=16, c=2, h=10, w=10, seed=0):
    return np.random.default_rng(seed).random((n, c, h, w), dtype=np.float32)


def _matching_offsets(out, source, size):
    """All (top, left) with source[:, top:top+h, left:left+w] == out (one image)."""
    h, w = size
    return [(top, left)
            for top in range(source.shape[-2] - h + 1)
            for left in range(source.shape[-1] - w + 1)
            if np.array_equal(source[:, top:top + h, left:left + w], out)]


def test_random_shift_is_a_window_of_the_edge_padded_image():
    pad = 2
    x = _images(n=64)
    out = np.asarray(random_shift(jax.random.key(0), jnp.asarray(x), pad))
    chex.assert_shape(out, x.shape)
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    tops, lefts = set(), set()
    for i in range(len(x)):
        offsets = _matching_offsets(out[i], padded[i], x.shape[-2:])
        assert offsets, f"image {i} is not a window of its edge-padded source"
        tops.update(t for t, _ in offsets)
        lefts.update(l for _, l in offsets)
    # Offsets cover the whole range [0, 2 * pad] (each missing value has p ~ (4/5)^64).
    assert tops == set(range(2 * pad + 1)) and lefts == set(range(2 * pad + 1))


def test_random_shift_zero_pad_is_identity_and_dtype_kept():
    x = jnp.asarray(_images(n=3))
    np.testing.assert_array_equal(np.asarray(random_shift(jax.random.key(1), x, 0)), np.asarray(x))
    u8 = jnp.arange(2 * 1 * 5 * 5, dtype=jnp.uint8).reshape(2, 1, 5, 5)
    chex.assert_type(random_shift(jax.random.key(1), u8, 1), jnp.uint8)


@pytest.mark.parametrize("inclusive", [True, False])
def test_random_crop_inside_image_and_covers_offsets(inclusive):
    """Every offset in [0, H - size] (kornia's crop, the MLR branch), or in [0, H - size)
    (``inclusive=False``: the DMC code's ``np.random.randint(0, H - size)``, the SAC batch)."""
    x = _images(n=64, h=12, w=11)
    size = 8
    out = np.asarray(random_crop(jax.random.key(2), jnp.asarray(x), size, inclusive))
    chex.assert_shape(out, (64, 2, size, size))
    tops, lefts = set(), set()
    for i in range(len(x)):
        offsets = _matching_offsets(out[i], x[i], (size, size))
        assert len(offsets) == 1  # random float pixels: the window is unique
        tops.add(offsets[0][0])
        lefts.add(offsets[0][1])
    last = 1 if inclusive else 0
    assert tops == set(range(12 - size + last)) and lefts == set(range(11 - size + last))


def test_different_keys_give_different_crops():
    x = jnp.asarray(_images(n=8))
    a = random_crop(jax.random.key(3), x, 6)
    b = random_crop(jax.random.key(4), x, 6)
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    c = random_shift(jax.random.key(3), x, 2)
    d = random_shift(jax.random.key(4), x, 2)
    assert not np.array_equal(np.asarray(c), np.asarray(d))


@pytest.mark.parametrize("h,size,top", [(100, 84, 8), (11, 8, 1), (8, 8, 0)])
def test_center_crop(h, size, top):
    x = _images(n=2, h=h, w=h)
    out = np.asarray(center_crop(jnp.asarray(x), size))
    np.testing.assert_array_equal(out, x[..., top:top + size, top:top + size])


@pytest.mark.parametrize("fn", [
    lambda x, s: random_crop(jax.random.key(0), x, s),
    lambda x, s: center_crop(x, s),
])
def test_crop_size_errors(fn):
    x = jnp.zeros((1, 1, 8, 8))
    for size in (0, 9):
        with pytest.raises(ValueError, match=f"size={size}"):
            fn(x, size)


def test_intensity_factor_per_image_within_bounds():
    scale = 0.05
    x = np.abs(_images(n=256, h=4, w=4)) + 0.5
    out = np.asarray(intensity(jax.random.key(5), jnp.asarray(x), scale))
    ratio = out / x
    factor = ratio[:, :1, :1, :1]
    np.testing.assert_allclose(ratio, np.broadcast_to(factor, ratio.shape), rtol=1e-6)
    factor = factor.ravel()
    assert factor.min() >= 1 - 2 * scale - 1e-6 and factor.max() <= 1 + 2 * scale + 1e-6
    # Normal noise: not constant, and the clip at +-2 is hit by ~4.6% of 256 draws.
    assert factor.std() > 0.5 * scale
    assert np.isclose(np.abs(factor - 1), 2 * scale, atol=1e-6).sum() >= 1


def test_intensity_any_trailing_shape_and_float_only():
    x = jnp.ones((5, 3))
    out = intensity(jax.random.key(6), x, 0.1)
    chex.assert_shape(out, (5, 3))
    with pytest.raises(AssertionError):
        intensity(jax.random.key(6), jnp.ones((2, 3), jnp.uint8), 0.1)


def test_jitted_augmentations_do_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def augment(key, x):
        k1, k2, k3 = jax.random.split(key, 3)
        return (intensity(k1, random_shift(k2, x, 2), 0.05), random_crop(k3, x, 6), center_crop(x, 6))

    x = jnp.asarray(_images(n=4))
    for seed in range(3):
        shifted, cropped, centred = augment(jax.random.key(seed), x)
    chex.assert_shape([cropped, centred], (4, 2, 6, 6))
    chex.assert_shape(shifted, x.shape)
