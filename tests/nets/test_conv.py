"""Both convolution implementations compute nn.Conv's VALID convolution, with its parameters."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.nets.conv import Conv, chunk_size, im2col_conv


@pytest.mark.parametrize("kernel, stride, size", [(8, 4, 36), (4, 2, 20), (3, 1, 9), (3, 2, 21)])
def test_im2col_equals_lax_conv_values_and_gradients(kernel, stride, size):
    rng = np.random.default_rng(kernel * 10 + stride)
    x = jnp.asarray(rng.normal(size=(2, size, size, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 7)), jnp.float32)

    def lax_conv(x, w):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    np.testing.assert_allclose(im2col_conv(x, w, stride), lax_conv(x, w), rtol=1e-4, atol=1e-4)
    cot = jnp.asarray(rng.normal(size=lax_conv(x, w).shape), jnp.float32)
    grads = [jax.grad(lambda x, w: jnp.sum(f(x, w) * cot), argnums=(0, 1))(x, w)
             for f in (lambda x, w: im2col_conv(x, w, stride), lax_conv)]
    for mine, ref in zip(*grads):
        np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-3)


def test_module_has_nn_conv_parameters_and_output():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 12, 12, 4)), jnp.float32)
    ref = nn.Conv(6, (4, 4), (2, 2), padding="VALID")
    params = ref.init(jax.random.PRNGKey(0), x)
    for impl in ("xla", "im2col"):
        mine = Conv(6, 4, 2, impl=impl)
        assert jax.tree.map(jnp.shape, mine.init(jax.random.PRNGKey(0), x)) == jax.tree.map(jnp.shape, params)
        np.testing.assert_allclose(mine.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="'cudnn'"):
        Conv(6, 4, 2, impl="cudnn").init(jax.random.PRNGKey(0), x)


def test_auto_picks_im2col_on_cpu():
    assert parallel.conv_impl("auto") == "im2col"  # the test suite runs on the CPU backend
    assert parallel.conv_impl("xla") == "xla"


def test_im2col_builds_patches_for_a_few_frames_at_a_time(monkeypatch):
    """Forward and backward loop over chunks: no array holds the patches of the whole batch,
    and the chunked result (values and both gradients) is the convolution's."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(6, 11, 11, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 5, 4)), jnp.float32)
    per_frame = 9 * 9 * 9 * 5 * 4
    monkeypatch.setattr("mlr_jax.nets.conv.CHUNK_BYTES", 2 * per_frame + 1)
    assert chunk_size(x.shape, 3, 1, 4) == 2
    assert chunk_size((7, 11, 11, 5), 3, 1, 4) == 1  # largest divisor of 7 that fits
    assert chunk_size((6, 11, 11, 5), 3, 1, 2) == 3  # bf16 halves the patch bytes

    def loss(x, w):
        return jnp.sum(jnp.sin(im2col_conv(x, w, 1)))

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w))
    assert "f32[2,9,9,45]" in jaxpr and "f32[6,9,9,45]" not in jaxpr

    def ref(x, w):
        return jnp.sum(jnp.sin(jax.lax.conv_general_dilated(
            x, w, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))))

    for mine, want in zip(jax.grad(loss, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
        np.testing.assert_allclose(mine, want, rtol=1e-4, atol=1e-4)
    # A layer whose input needs no gradient (pixels) skips the scatter back to the input.
    assert " pad[" in jaxpr
    assert " pad[" not in str(jax.make_jaxpr(jax.grad(loss, argnums=1))(x, w))
    np.testing.assert_allclose(jax.grad(loss, argnums=1)(x, w), jax.grad(ref, argnums=1)(x, w),
                               rtol=1e-4, atol=1e-4)


def test_im2col_bf16_keeps_dtypes_and_accumulates_the_kernel_gradient_in_f32():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 9, 9, 3)), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 2)), jnp.bfloat16)
    y = im2col_conv(x, w, 2)
    assert y.dtype == jnp.bfloat16
    dx, dw = jax.grad(lambda x, w: jnp.sum(im2col_conv(x, w, 2).astype(jnp.float32)), (0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    ref = jax.grad(lambda w: jnp.sum(jax.lax.conv_general_dilated(
        x.astype(jnp.float32), w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))))(
        w.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dw, np.float32), ref, rtol=2e-2, atol=2e-2)
