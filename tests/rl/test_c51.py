"""C51: projection against a loop-based reference, double-DQN target, loss and priorities."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.rl.c51 import (c51_loss, categorical_projection, double_dqn_target, kl_priority,
                            select_actions)

SUPPORT = np.linspace(-10.0, 10.0, 51).astype(np.float32)


def _reference_projection(probs, returns, discounts, support):
    """Bellemare et al. (2017), Algorithm 1: floor/ceil split of every shifted atom."""
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (len(support) - 1)
    out = np.zeros_like(probs, dtype=np.float64)
    for b in range(probs.shape[0]):
        for j, z in enumerate(support):
            tz = min(max(returns[b] + discounts[b] * z, v_min), v_max)
            pos = (tz - v_min) / delta
            low, up = int(np.floor(pos)), int(np.ceil(pos))
            if low == up:
                out[b, low] += probs[b, j]
            else:
                out[b, low] += probs[b, j] * (up - pos)
                out[b, up] += probs[b, j] * (pos - low)
    return out


def _random_probs(rng, shape):
    logits = rng.normal(size=shape) * 2
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


def test_projection_matches_loop_reference():
    rng = np.random.default_rng(0)
    batch = 64
    probs = _random_probs(rng, (batch, 51))
    returns = rng.uniform(-15, 15, batch).astype(np.float32)  # some beyond the support
    returns[:4] = [0.0, 0.4, -10.0, 10.0]  # exactly on atoms, and the edges
    discounts = np.full(batch, 0.99 ** 10, np.float32)
    discounts[::5] = 0.0  # terminals: the target is the (clipped) return alone
    out = categorical_projection(probs, returns, discounts, SUPPORT)
    chex.assert_shape(out, (batch, 51))
    np.testing.assert_allclose(out, _reference_projection(probs, returns, discounts, SUPPORT),
                               atol=1e-5)
    np.testing.assert_allclose(np.sum(out, -1), 1.0, atol=1e-5)


def test_projection_identity_and_terminal_point_mass():
    probs = _random_probs(np.random.default_rng(1), (3, 51))
    same = categorical_projection(probs, np.zeros(3, np.float32), np.ones(3, np.float32), SUPPORT)
    np.testing.assert_allclose(same, probs, atol=1e-6)
    terminal = categorical_projection(probs, np.array([2.0, 2.2, 30.0], np.float32),
                                      np.zeros(3, np.float32), SUPPORT)
    expected = np.zeros((3, 51))
    expected[0, 30] = 1.0  # atom 2.0
    expected[1, 30], expected[1, 31] = 0.5, 0.5  # halfway between 2.0 and 2.4
    expected[2, 50] = 1.0  # clipped to v_max
    np.testing.assert_allclose(terminal, expected, atol=1e-5)


def test_double_dqn_online_selects_target_evaluates():
    support = np.linspace(-1.0, 1.0, 3).astype(np.float32)
    # online prefers action 1, the target network prefers action 0.
    online = np.array([[[1.0, 0, 0], [0, 0, 1.0]]], np.float32)
    target = np.array([[[0, 0, 1.0], [0.2, 0.8, 0]]], np.float32)
    returns, discounts = np.zeros(1, np.float32), np.ones(1, np.float32)
    out = double_dqn_target(online, target, returns, discounts, support)
    np.testing.assert_allclose(out, target[:, 1], atol=1e-6)
    grad = jax.grad(lambda o, t: jnp.sum(double_dqn_target(o, t, returns, discounts, support)),
                    argnums=(0, 1))(online, target)
    np.testing.assert_array_equal(grad[0], 0.0)
    np.testing.assert_array_equal(grad[1], 0.0)


def test_select_actions():
    values = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(select_actions(values, np.array([2, 0])), values[[0, 1], [2, 0]])
    np.testing.assert_array_equal(select_actions(values[..., 0], np.array([1, 2])), [4.0, 20.0])


def test_c51_loss_is_cross_entropy_with_constant_target():
    rng = np.random.default_rng(2)
    log_probs = np.log(_random_probs(rng, (5, 51)))
    target = _random_probs(rng, (5, 51))
    np.testing.assert_allclose(c51_loss(log_probs, target), -(target * log_probs).sum(-1),
                               rtol=1e-5)
    grad_pred, grad_target = jax.grad(lambda p, t: jnp.sum(c51_loss(p, t)), argnums=(0, 1))(
        log_probs, target)
    np.testing.assert_allclose(grad_pred, -target, rtol=1e-6)
    np.testing.assert_array_equal(grad_target, 0.0)
    with pytest.raises(AssertionError):
        c51_loss(log_probs[:, :50], target)


def test_kl_priority_matches_clipped_reference():
    rng = np.random.default_rng(3)
    probs = _random_probs(rng, (6, 51))
    target = _random_probs(rng, (6, 51))
    target[0] = 0.0
    target[0, 7] = 1.0  # zeros are clipped to eps inside the log
    clipped = np.clip(target, 1e-6, 1.0)
    expected = np.clip((clipped * (np.log(clipped) - np.log(probs))).sum(-1), 1e-6, 1e6)
    out = kl_priority(np.log(probs), target)
    np.testing.assert_allclose(out, expected, rtol=1e-4)
    assert np.all(out > 0)
    # Equal distributions: KL is 0, clipped to the floor.
    np.testing.assert_allclose(kl_priority(np.log(probs), probs), 1e-6, atol=1e-5)
