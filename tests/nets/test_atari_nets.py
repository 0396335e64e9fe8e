"""Atari networks: conv layout, renormalisation, noisy layers, dueling head, MLR projection."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.nets.atari import (DuelingC51Head, HeadProjection, NatureCNN, NoisyDense,
                                nature_cnn_output_dim, projection_params, renormalize, scale_grad,
                                torch_dense)


def _np_renormalize(x):
    low, high = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    return (x - low) / (high - low)


def test_renormalize_per_sample():
    x = np.random.default_rng(0).normal(size=(3, 20)).astype(np.float32)
    x[1] *= 100.0
    out = renormalize(x)
    np.testing.assert_allclose(out, _np_renormalize(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.min(-1), 0.0)
    np.testing.assert_allclose(out.max(-1), 1.0)


def test_nature_cnn_matches_nchw_convolution_and_flattens_chw():
    channels, kernels, strides = (4, 6, 5), (8, 4, 3), (4, 2, 1)
    x = np.random.default_rng(1).random((2, 4, 36, 36), dtype=np.float32)
    net = NatureCNN(channels, kernels, strides, renormalize=False)
    params = net.init(jax.random.key(0), x)["params"]
    out = net.apply({"params": params}, x)
    chex.assert_shape(out, (2, nature_cnn_output_dim(36, channels, kernels, strides)))
    assert nature_cnn_output_dim(84, (32, 64, 64), kernels, strides) == 3136

    # Independent reference: PyTorch layout (NCHW, OIHW), flatten straight from NCHW.
    h = x
    for i, stride in enumerate(strides):
        kernel = np.transpose(params[f"conv_{i}"]["kernel"], (3, 2, 0, 1))
        h = jax.lax.conv_general_dilated(h, kernel, (stride, stride), "VALID",
                                         dimension_numbers=("NCHW", "OIHW", "NCHW"))
        h = np.maximum(h + params[f"conv_{i}"]["bias"][None, :, None, None], 0.0)
    np.testing.assert_allclose(out, np.reshape(h, (2, -1)), rtol=1e-5, atol=1e-5)

    renormed = NatureCNN(channels, kernels, strides).apply({"params": params}, x)
    np.testing.assert_allclose(renormed, _np_renormalize(np.asarray(out)), rtol=1e-5, atol=1e-6)
    # PyTorch's default init: weights and biases in +-1/sqrt(fan_in).
    bound = 1 / math.sqrt(4 * 8 * 8)
    assert np.abs(params["conv_0"]["kernel"]).max() <= bound
    assert np.abs(params["conv_0"]["bias"]).max() <= bound


def _effective_weights(layer, params, num_in, key):
    """(W, b) the layer actually applies, read off by feeding the identity and zeros."""
    bias = layer.apply({"params": params}, np.zeros((1, num_in), np.float32), key)[0]
    kernel = layer.apply({"params": params}, np.eye(num_in, dtype=np.float32), key) - bias
    return np.asarray(kernel), np.asarray(bias)


def test_noisy_dense_init_and_noise_off():
    num_in, num_out, std = 64, 32, 0.1
    layer = NoisyDense(num_out, std)
    params = layer.init(jax.random.key(0), np.zeros((1, num_in)))["params"]
    bound = 1 / math.sqrt(num_in)
    assert np.abs(params["kernel_mu"]).max() <= bound and np.abs(params["bias_mu"]).max() <= bound
    assert np.abs(params["kernel_mu"]).max() > 0.9 * bound  # uniform over the whole range
    np.testing.assert_allclose(params["kernel_sigma"], std / math.sqrt(num_in))
    np.testing.assert_allclose(params["bias_sigma"], std / math.sqrt(num_out))
    kernel, bias = _effective_weights(layer, params, num_in, None)
    np.testing.assert_allclose(kernel, params["kernel_mu"], atol=1e-6)
    np.testing.assert_allclose(bias, params["bias_mu"], atol=1e-6)


def test_noisy_dense_factorised_noise():
    num_in, num_out = 64, 32
    layer = NoisyDense(num_out)
    params = layer.init(jax.random.key(0), np.zeros((1, num_in)))["params"]
    x = np.random.default_rng(0).normal(size=(3, num_in)).astype(np.float32)
    key = jax.random.key(7)
    np.testing.assert_array_equal(layer.apply({"params": params}, x, key),
                                  layer.apply({"params": params}, x, key))
    assert not np.allclose(layer.apply({"params": params}, x, key),
                           layer.apply({"params": params}, x, jax.random.key(8)))

    kernel, bias = _effective_weights(layer, params, num_in, key)
    eps_out = (bias - params["bias_mu"]) / params["bias_sigma"]
    eps_w = (kernel - params["kernel_mu"]) / params["kernel_sigma"]
    eps_in = eps_w[:, 0] / eps_out[0]
    # Factorised: the weight noise is the outer product of input and output noise.
    np.testing.assert_allclose(eps_w, np.outer(eps_in, eps_out), rtol=1e-3, atol=1e-3)

    # f(x) = sign(x) sqrt|x| of x ~ N(0, 1): E f = 0, E f^2 = E|x| = sqrt(2/pi).
    def noise_sample(k):
        zero = layer.apply({"params": params}, jnp.zeros((1, num_in)), k)[0]
        return (zero - params["bias_mu"]) / params["bias_sigma"]

    samples = np.asarray(jax.vmap(noise_sample)(jax.random.split(jax.random.key(1), 400)))
    assert abs(samples.mean()) < 0.03
    assert abs((samples ** 2).mean() - math.sqrt(2 / math.pi)) < 0.03


def _head_and_params(num_actions=3, atoms=5, hidden=8, dim=12, grad_scale=2 ** -0.5):
    head = DuelingC51Head(num_actions, atoms, hidden, grad_scale=grad_scale)
    params = head.init(jax.random.key(0), np.zeros((1, dim)))["params"]
    params["advantage_bias"] = jnp.linspace(-0.3, 0.3, atoms)  # non-zero, to be visible
    return head, params


def test_dueling_head_matches_numpy_without_noise():
    head, params = _head_and_params()
    x = np.random.default_rng(0).random((4, 12), dtype=np.float32)
    out = head.apply({"params": params}, x)
    chex.assert_shape(out, (4, 3, 5))

    def dense(name, h):
        return h @ params[name]["kernel_mu"] + params[name]["bias_mu"]

    value = dense("value_out", np.maximum(dense("value_hidden", x), 0))[:, None]
    adv = dense("advantage_out", np.maximum(dense("advantage_hidden", x), 0)).reshape(4, 3, 5)
    adv = adv + np.asarray(params["advantage_bias"])
    logits = value + adv - adv.mean(1, keepdims=True)
    expected = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    noisy = head.apply({"params": params}, x, jax.random.key(3))
    np.testing.assert_allclose(np.exp(noisy).sum(-1), 1.0, rtol=1e-5)
    assert not np.allclose(noisy, out)


def test_head_scales_the_gradient_into_its_input():
    x = np.random.default_rng(1).random((2, 12), dtype=np.float32)
    head, params = _head_and_params()
    unscaled = DuelingC51Head(3, 5, 8, grad_scale=1.0)

    def grad_x(module):
        return jax.grad(lambda z: jnp.sum(module.apply({"params": params}, z)[..., 0]))(x)

    np.testing.assert_allclose(grad_x(head), 2 ** -0.5 * grad_x(unscaled), rtol=1e-5)
    value, vjp = jax.vjp(lambda z: scale_grad(z, 0.25), x)
    np.testing.assert_array_equal(value, x)
    np.testing.assert_allclose(vjp(np.ones_like(x))[0], 0.25)


def test_projection_is_value_then_advantage_first_layer_without_noise_or_relu():
    head, params = _head_and_params()
    proj = projection_params(params)
    assert set(proj) == {"value_hidden", "advantage_hidden"}
    x = np.random.default_rng(2).normal(size=(2, 4, 12)).astype(np.float32)
    out = HeadProjection(8).apply({"params": proj}, x)
    chex.assert_shape(out, (2, 4, 16))
    value = x @ proj["value_hidden"]["kernel_mu"] + proj["value_hidden"]["bias_mu"]
    adv = x @ proj["advantage_hidden"]["kernel_mu"] + proj["advantage_hidden"]["bias_mu"]
    np.testing.assert_allclose(out, np.concatenate([value, adv], -1), rtol=1e-5, atol=1e-6)
    assert np.any(out < 0)  # no ReLU


def test_torch_dense_init_bounds():
    layer = torch_dense(300, 6)
    params = layer.init(jax.random.key(0), np.zeros((1, 6)))["params"]
    bound = 1 / math.sqrt(6)
    for leaf in (params["kernel"], params["bias"]):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.9 * bound


@pytest.mark.parametrize("dtype", [jnp.bfloat16])
def test_low_precision_compute_keeps_float32_params_and_outputs(dtype):
    head = DuelingC51Head(3, 5, 8, dtype=dtype)
    params = head.init(jax.random.key(0), np.zeros((1, 12)))["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    x = np.random.default_rng(0).random((2, 12), dtype=np.float32)
    out = head.apply({"params": params}, x)
    assert out.dtype == jnp.float32
    reference = DuelingC51Head(3, 5, 8).apply({"params": params}, x)
    np.testing.assert_allclose(out, reference, atol=5e-2)
