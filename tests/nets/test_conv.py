"""Both convolution implementations compute nn.Conv's VALID convolution, with its parameters."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.nets.conv import Conv, im2col_conv


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


def test_im2col_falls_back_to_xla_when_patches_exceed_the_budget(monkeypatch):
    x = jnp.zeros((2, 12, 12, 4))
    conv = Conv(6, 4, 2, impl="im2col")
    params = conv.init(jax.random.PRNGKey(0), x)

    def uses_lax_conv():
        return "conv_general_dilated" in str(jax.make_jaxpr(conv.apply)(params, x))

    assert not uses_lax_conv()
    monkeypatch.setattr("mlr_jax.nets.conv.IM2COL_MAX_BYTES", 2 * 5 * 5 * 16 * 4 * 4 - 1)
    assert uses_lax_conv()
