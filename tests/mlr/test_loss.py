"""MLR loss: cosine distance, the code's 2 - 2cos scale, weights, stop-gradient, no retracing."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.mlr.loss import cosine_loss, mlr_loss, normalize


def _np_normalized_mse(pred, target, eps=1e-3):
    """The authors' form: ||p / max(|p|, eps) - t / max(|t|, eps)||^2, mean over T -> [B]."""
    p = pred / np.maximum(np.linalg.norm(pred, axis=-1, keepdims=True), eps)
    t = target / np.maximum(np.linalg.norm(target, axis=-1, keepdims=True), eps)
    return ((p - t) ** 2).sum(-1).mean(-1)


def _random(shape, seed):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_identical_and_opposite():
    x = jnp.asarray(_random((3, 4, 8), 0))
    np.testing.assert_allclose(cosine_loss(x, x), np.zeros(3), atol=1e-6)
    np.testing.assert_allclose(cosine_loss(x, -x), np.full(3, 2.0), atol=1e-6)
    np.testing.assert_allclose(cosine_loss(x, 5.0 * x), np.zeros(3), atol=1e-6)  # scale invariant
    _, per_sample = mlr_loss(x, -x, scale=1.0)
    np.testing.assert_allclose(per_sample, np.full(3, 2.0), atol=1e-6)
    _, per_sample = mlr_loss(x, -x)
    np.testing.assert_allclose(per_sample, np.full(3, 4.0), atol=1e-5)


def test_matches_numpy_normalized_mse_with_weights():
    pred, target = _random((5, 6, 7), 1), _random((5, 6, 7), 2)
    weights = np.random.default_rng(3).random(5).astype(np.float32)
    loss, per_sample = mlr_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(weights))
    chex.assert_shape(per_sample, (5,))
    chex.assert_shape(loss, ())
    expected = _np_normalized_mse(pred, target)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5)
    np.testing.assert_allclose(loss, np.mean(weights * expected), rtol=1e-5)
    unweighted, _ = mlr_loss(jnp.asarray(pred), jnp.asarray(target))
    np.testing.assert_allclose(unweighted, expected.mean(), rtol=1e-5)


def test_latents_shorter_than_eps_follow_the_code_not_one_minus_cos():
    # DMC's freshly initialised predictor outputs are ~2e-4 long: the code's normalised MSE
    # is then far from 2 - 2cos, and the loss must follow the code.
    pred = 2e-4 * _random((4, 3, 50), 4) / np.sqrt(50)
    target = _random((4, 3, 50), 5)
    _, per_sample = mlr_loss(jnp.asarray(pred), jnp.asarray(target))
    expected = _np_normalized_mse(pred, target)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-5)
    p = pred / np.linalg.norm(pred, axis=-1, keepdims=True)
    t = target / np.linalg.norm(target, axis=-1, keepdims=True)
    assert not np.allclose(expected, (2 - 2 * (p * t).sum(-1)).mean(-1), rtol=0.1)


def test_normalize_clamps_small_norms_with_finite_gradient():
    x = jnp.asarray([[3.0, 4.0], [3e-4, 4e-4], [0.0, 0.0]])
    np.testing.assert_allclose(normalize(x), [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]], rtol=1e-6)
    grad = jax.grad(lambda v: normalize(v).sum())(x)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_target_gets_no_gradient_and_pred_does():
    pred, target = jnp.asarray(_random((2, 3, 4), 4)), jnp.asarray(_random((2, 3, 4), 5))
    grad_pred, grad_target = jax.grad(lambda p, t: mlr_loss(p, t)[0], argnums=(0, 1))(pred, target)
    np.testing.assert_array_equal(np.asarray(grad_target), 0.0)
    assert np.abs(np.asarray(grad_pred)).sum() > 0


def test_shape_errors():
    with pytest.raises(AssertionError):
        cosine_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 5)))
    with pytest.raises(AssertionError):
        cosine_loss(jnp.ones((2, 4)), jnp.ones((2, 4)))
    with pytest.raises(AssertionError):
        mlr_loss(jnp.ones((2, 3, 4)), jnp.ones((2, 3, 4)), jnp.ones((3,)))


def test_jitted_loss_does_not_retrace():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def loss_fn(pred, target, weights):
        return mlr_loss(pred, target, weights)

    for seed in range(3):
        loss, _ = loss_fn(jnp.asarray(_random((2, 3, 4), seed)), jnp.asarray(_random((2, 3, 4), seed + 10)),
                          jnp.ones((2,)))
        assert np.isfinite(float(loss))
