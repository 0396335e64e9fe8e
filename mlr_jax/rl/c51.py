"""Categorical (C51) distributional RL: projection, double-DQN target, loss and priorities.

Pure functions in the rlax style. ``N`` is the number of atoms of the fixed ``support``
(C51: 51 atoms evenly spaced on [-10, 10]), ``A`` the number of actions.

The projection follows the authors' code (rlpyt ``CategoricalDQN``): every target atom
``clip(r + d * z_j, v_min, v_max)`` spreads its probability over the two neighbouring support
atoms with the triangular kernel ``clip(1 - |tz_j - z_i| / dz, 0, 1)``, which equals the
floor/ceil split of Bellemare et al. (2017).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

PRIORITY_EPS = 1e-6  # the code's NaN guard for the KL priorities


def select_actions(values: jax.Array, actions: jax.Array) -> jax.Array:
    """``values[b, actions[b]]`` for every b.

    Args:
      values: [B, A, ...] per-action values (e.g. log-probabilities [B, A, N]).
      actions: int[B] action indices.

    Returns:
      [B, ...].
    """
    chex.assert_rank(actions, 1)
    chex.assert_equal_shape_prefix([values, actions], 1)
    return jnp.take_along_axis(values, actions.reshape((-1, 1) + (1,) * (values.ndim - 2)),
                               axis=1)[:, 0]


def categorical_projection(next_probs: jax.Array, returns: jax.Array, discounts: jax.Array,
                           support: jax.Array) -> jax.Array:
    """Project the distribution of ``returns + discounts * Z'`` onto ``support``.

    Args:
      next_probs: f32[B, N] probabilities of Z' at the bootstrap state.
      returns: f32[B] n-step returns.
      discounts: f32[B] ``gamma^n``, or 0 where the episode terminated within the n steps
        (the target is then the return alone).
      support: f32[N] evenly spaced atoms, increasing.

    Returns:
      f32[B, N] probabilities on ``support`` (rows sum to the rows of ``next_probs``).
    """
    chex.assert_rank([next_probs, returns, discounts, support], [2, 1, 1, 1])
    chex.assert_equal_shape_prefix([next_probs, returns, discounts], 1)
    chex.assert_equal_shape_suffix([next_probs, support], 1)
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (support.shape[0] - 1)
    target_atoms = jnp.clip(returns[:, None] + discounts[:, None] * support[None, :], v_min, v_max)
    # weights[b, i, j]: share of target atom j that lands on support atom i.
    weights = jnp.clip(1.0 - jnp.abs(target_atoms[:, None, :] - support[None, :, None]) / delta,
                       0.0, 1.0)
    return jnp.einsum("bij,bj->bi", weights, next_probs)


def double_dqn_target(online_next_probs: jax.Array, target_next_probs: jax.Array,
                      returns: jax.Array, discounts: jax.Array, support: jax.Array) -> jax.Array:
    """The projected n-step double-DQN target distribution (no gradient).

    The online network picks ``a* = argmax_a E[Z_online(s_{t+n}, a)]``, the target network's
    distribution at ``a*`` is shifted by the return and projected.

    Args:
      online_next_probs: f32[B, A, N] online probabilities at s_{t+n}.
      target_next_probs: f32[B, A, N] target-network probabilities at s_{t+n}.
      returns: f32[B] n-step returns.
      discounts: f32[B] ``gamma^n`` or 0 at terminals.
      support: f32[N].

    Returns:
      f32[B, N] target probabilities, under ``stop_gradient``.
    """
    chex.assert_rank([online_next_probs, target_next_probs], 3)
    chex.assert_equal_shape([online_next_probs, target_next_probs])
    next_actions = jnp.argmax(online_next_probs @ support, axis=-1)
    chosen = select_actions(target_next_probs, next_actions)
    return jax.lax.stop_gradient(categorical_projection(chosen, returns, discounts, support))


def c51_loss(log_probs: jax.Array, target: jax.Array) -> jax.Array:
    """Per-sample cross-entropy ``-sum_i target_i log p_i``.

    Args:
      log_probs: f32[B, N] log-probabilities of the taken actions (gradients flow).
      target: f32[B, N] projected target probabilities (treated as constants).

    Returns:
      f32[B].
    """
    chex.assert_rank([log_probs, target], 2)
    chex.assert_equal_shape([log_probs, target])
    return -jnp.sum(jax.lax.stop_gradient(target) * log_probs, axis=-1)


def kl_priority(log_probs: jax.Array, target: jax.Array, eps: float = PRIORITY_EPS) -> jax.Array:
    """KL(target || prediction) per sample, the code's replay priority.

    The target is clipped to [eps, 1] before the logarithm and the result to [eps, 1/eps].

    Args:
      log_probs: f32[B, N] log-probabilities of the taken actions.
      target: f32[B, N] projected target probabilities.
      eps: the NaN guard.

    Returns:
      f32[B] positive priorities, under ``stop_gradient``.
    """
    chex.assert_rank([log_probs, target], 2)
    chex.assert_equal_shape([log_probs, target])
    target = jnp.clip(target, eps, 1.0)
    kl = jnp.sum(target * (jnp.log(target) - log_probs), axis=-1)
    return jax.lax.stop_gradient(jnp.clip(kl, eps, 1.0 / eps))
