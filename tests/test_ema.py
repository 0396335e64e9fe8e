"""EMA of pytrees: exact endpoints, numeric mix, traced tau, structure checks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.ema import ema_update


def _trees():
    rng = np.random.default_rng(0)

    def tree(scale):
        return {"a": jnp.asarray(scale * rng.normal(size=(3, 4)), jnp.float32),
                "b": [jnp.asarray(rng.normal(size=5), jnp.float32)]}

    return tree(1.0), tree(1e3)


def _assert_trees_equal(x, y):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(np.asarray(u), np.asarray(v)), x, y)


@pytest.mark.parametrize("jit", [False, True])
def test_endpoints_are_exact(jit):
    target, online = _trees()
    fn = jax.jit(ema_update) if jit else ema_update  # under jit tau is a traced scalar
    _assert_trees_equal(fn(target, online, 1.0), online)
    _assert_trees_equal(fn(target, online, 0.0), target)
    # Exact selection, not arithmetic: garbage on the other side does not leak (0 * inf = nan).
    spoiled = jax.tree.map(lambda x: jnp.full_like(x, jnp.inf), target)
    _assert_trees_equal(fn(spoiled, online, 1.0), online)
    _assert_trees_equal(fn(target, spoiled, 0.0), target)


def test_intermediate_tau():
    target, online = _trees()
    out = ema_update(target, online, 0.3)
    expected = jax.tree.map(
        lambda t, o: 0.3 * np.asarray(o, np.float64) + 0.7 * np.asarray(t, np.float64), target, online)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(np.asarray(u), v, rtol=1e-6, atol=1e-5), out, expected)
    jax.tree.map(lambda u, t: np.testing.assert_equal(u.dtype, t.dtype), out, target)


def test_bad_tau_and_mismatched_trees():
    target, online = _trees()
    with pytest.raises(ValueError, match="1.5"):
        ema_update(target, online, 1.5)
    with pytest.raises(AssertionError):
        ema_update(target, {"a": online["a"]}, 0.5)
    with pytest.raises(AssertionError):
        ema_update(target, {"a": online["a"][:2], "b": online["b"]}, 0.5)
