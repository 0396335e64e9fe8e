"""SAC losses and the tanh-Gaussian policy against independent numpy references."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.rl import sac


def _np_normal_logpdf(x, mean, std):
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def test_tanh_gaussian_sample_and_logprob_matches_change_of_variables():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(5, 3)).astype(np.float32)
    log_std = rng.uniform(-2, 0.5, size=(5, 3)).astype(np.float32)
    noise = rng.normal(size=(5, 3)).astype(np.float32)
    action, log_prob = sac.tanh_gaussian_sample_and_logprob(mean, log_std, noise)
    chex.assert_shape([action, log_prob], [(5, 3), (5,)])

    u = mean.astype(np.float64) + noise * np.exp(log_std.astype(np.float64))
    expected_action = np.tanh(u)
    # density of a = tanh(u): p(u) / |da/du| with da/du = 1 - tanh(u)^2 (+1e-6 as the code).
    expected = (_np_normal_logpdf(u, mean, np.exp(log_std)).sum(-1)
                - np.log(np.maximum(1.0 - expected_action ** 2, 0.0) + 1e-6).sum(-1))
    np.testing.assert_allclose(action, expected_action, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-4, atol=1e-4)


def test_logprob_is_finite_for_saturated_actions():
    mean = jnp.full((2, 4), 30.0)
    action, log_prob = sac.tanh_gaussian_sample_and_logprob(mean, jnp.zeros((2, 4)), jnp.zeros((2, 4)))
    np.testing.assert_array_equal(action, 1.0)
    assert np.all(np.isfinite(log_prob))
    # every saturated dimension adds -log(1e-6) to the Gaussian log-density
    np.testing.assert_allclose(log_prob, 4 * (-0.5 * math.log(2 * math.pi)) - 4 * math.log(1e-6), rtol=1e-5)


def test_squash_log_std_maps_into_bounds():
    raw = jnp.array([-50.0, 0.0, 50.0, 0.3])
    out = sac.squash_log_std(raw, -10.0, 2.0)
    np.testing.assert_allclose(out[:3], [-10.0, -4.0, 2.0], atol=1e-5)
    np.testing.assert_allclose(out[3], -10.0 + 6.0 * (np.tanh(0.3) + 1.0), rtol=1e-6)
    with pytest.raises(ValueError, match="log_std_min"):
        sac.squash_log_std(raw, 2.0, -10.0)


def test_soft_q_target_and_critic_loss():
    rng = np.random.default_rng(1)
    r, q1n, q2n, lpn, q1, q2 = (rng.normal(size=6).astype(np.float32) for _ in range(6))
    discount = np.array([0.99, 0.99, 0.0, 0.99, 0.99, 0.99], np.float32)
    target = sac.soft_q_target(r, discount, q1n, q2n, lpn, jnp.float32(0.2))
    expected_target = r + discount * (np.minimum(q1n, q2n) - 0.2 * lpn)
    np.testing.assert_allclose(target, expected_target, rtol=1e-6)
    assert target[2] == pytest.approx(r[2])  # terminal: no bootstrap

    loss = sac.critic_loss(q1, q2, target)
    expected_loss = np.mean((q1 - expected_target) ** 2) + np.mean((q2 - expected_target) ** 2)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
    # the target is a constant: only the Q values get gradients
    g_target = jax.grad(lambda t: sac.critic_loss(jnp.asarray(q1), jnp.asarray(q2), t))(target)
    np.testing.assert_array_equal(g_target, 0.0)
    g_q1 = jax.grad(lambda q: sac.critic_loss(q, jnp.asarray(q2), target))(jnp.asarray(q1))
    np.testing.assert_allclose(g_q1, 2.0 * (q1 - expected_target) / 6, rtol=1e-5)


def test_actor_loss_uses_min_q_and_fixed_alpha():
    log_prob = jnp.array([-1.0, 0.5, 2.0])
    q1 = jnp.array([1.0, 3.0, -2.0])
    q2 = jnp.array([2.0, 1.0, -1.0])
    loss = sac.actor_loss(log_prob, q1, q2, jnp.float32(0.1))
    np.testing.assert_allclose(loss, np.mean(0.1 * np.array([-1.0, 0.5, 2.0]) - np.array([1.0, 1.0, -2.0])),
                               rtol=1e-6)
    assert jax.grad(lambda a: sac.actor_loss(log_prob, q1, q2, a))(jnp.float32(0.1)) == 0.0
    g_q1 = jax.grad(lambda q: sac.actor_loss(log_prob, q, q2, jnp.float32(0.1)))(q1)
    np.testing.assert_allclose(g_q1, [-1 / 3, 0.0, -1 / 3])  # only where Q1 is the minimum


def test_temperature_loss_value_and_gradient():
    log_prob = jnp.array([-0.5, 1.5, 0.25, -2.0])
    log_alpha = jnp.float32(np.log(0.1))
    target_entropy = -2.0
    gap = -np.array([-0.5, 1.5, 0.25, -2.0]) - target_entropy
    loss, grad = jax.value_and_grad(sac.temperature_loss)(log_alpha, log_prob, target_entropy)
    np.testing.assert_allclose(loss, 0.1 * gap.mean(), rtol=1e-5)
    np.testing.assert_allclose(grad, 0.1 * gap.mean(), rtol=1e-5)  # d exp(x) / dx = exp(x)
    g_logp = jax.grad(lambda lp: sac.temperature_loss(log_alpha, lp, target_entropy))(log_prob)
    np.testing.assert_array_equal(g_logp, 0.0)
