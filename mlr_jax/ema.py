"""Exponential moving average of parameter pytrees (momentum encoders, target networks)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def ema_update(target: chex.ArrayTree, online: chex.ArrayTree, tau: float | jax.Array) -> chex.ArrayTree:
    """``tau * online + (1 - tau) * target``, leaf by leaf.

    ``tau = 1`` returns an exact copy of ``online`` and ``tau = 0`` returns ``target``
    unchanged (selected with ``jnp.where``, so no rounding), for Python floats and traced
    scalars alike.

    Args:
      target: the slow pytree.
      online: the fast pytree, same structure and shapes as ``target``.
      tau: weight of ``online`` in [0, 1].

    Returns:
      A pytree like ``target`` (leaf dtypes of ``target``).
    """
    if isinstance(tau, (int, float)) and not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    chex.assert_trees_all_equal_shapes(target, online)

    def mix(slow, fast):
        mixed = tau * fast + (1.0 - tau) * slow
        exact = jnp.where(tau == 1.0, fast, jnp.where(tau == 0.0, slow, mixed))
        return exact.astype(slow.dtype)

    return jax.tree.map(mix, target, online)
