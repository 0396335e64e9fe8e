"""Soft actor-critic losses for a tanh-squashed Gaussian policy (CURL-style SAC).

Pure functions of arrays. Shapes: ``B`` batch, ``A`` action dimension. The temperature is
parameterised by ``log_alpha``; every loss takes ``alpha = exp(log_alpha)`` as the authors'
code does (the temperature loss differentiates ``alpha``, not ``log_alpha``, in its
integrand).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp

# Added inside the log of the tanh Jacobian, ``log(relu(1 - tanh(u)^2) + eps)``, so that
# saturated actions give a finite log-probability (the authors' value).
SQUASH_EPS = 1e-6


def squash_log_std(raw: jax.Array, log_std_min: float, log_std_max: float) -> jax.Array:
    """Map an unbounded network output to ``[log_std_min, log_std_max]`` with tanh.

    ``log_std_min + 0.5 * (log_std_max - log_std_min) * (tanh(raw) + 1)``.
    """
    if not log_std_min < log_std_max:
        raise ValueError(f"log_std_min={log_std_min} must be < log_std_max={log_std_max}")
    return log_std_min + 0.5 * (log_std_max - log_std_min) * (jnp.tanh(raw) + 1.0)


def tanh_gaussian_sample_and_logprob(mean: jax.Array, log_std: jax.Array,
                                     noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Reparameterised sample of ``tanh(N(mean, exp(log_std)))`` and its log-density.

    Args:
      mean: f32[B, A] pre-squash mean.
      log_std: f32[B, A] log standard deviation.
      noise: f32[B, A] standard normal noise (drawn by the caller, so the draw can be made
        for a global batch and sliced per device).

    Returns:
      ``(action, log_prob)``: f32[B, A] in (-1, 1) and f32[B], the Gaussian log-density of
      the pre-squash sample minus ``sum log(relu(1 - action^2) + 1e-6)`` (change of
      variables through tanh).
    """
    chex.assert_rank([mean, log_std, noise], 2)
    chex.assert_equal_shape([mean, log_std, noise])
    pre_squash = mean + noise * jnp.exp(log_std)
    action = jnp.tanh(pre_squash)
    gaussian = (jnp.sum(-0.5 * jnp.square(noise) - log_std, axis=-1)
                - 0.5 * math.log(2.0 * math.pi) * mean.shape[-1])
    jacobian = jnp.sum(jnp.log(jax.nn.relu(1.0 - jnp.square(action)) + SQUASH_EPS), axis=-1)
    return action, gaussian - jacobian


def soft_q_target(reward: jax.Array, discount: jax.Array, next_q1: jax.Array,
                  next_q2: jax.Array, next_log_prob: jax.Array, alpha: jax.Array) -> jax.Array:
    """Soft Bellman target ``r + discount * (min(Q1', Q2') - alpha * log pi(a'|s'))``.

    Args:
      reward: f32[B].
      discount: f32[B], gamma times the not-terminal flag.
      next_q1, next_q2: f32[B] target-critic values at ``(s', a')``, ``a' ~ pi(.|s')``.
      next_log_prob: f32[B] ``log pi(a'|s')``.
      alpha: f32[] temperature.

    Returns:
      f32[B] under ``stop_gradient``.
    """
    chex.assert_rank([reward, discount, next_q1, next_q2, next_log_prob, alpha], [1, 1, 1, 1, 1, 0])
    chex.assert_equal_shape([reward, discount, next_q1, next_q2, next_log_prob])
    soft_value = jnp.minimum(next_q1, next_q2) - alpha * next_log_prob
    return jax.lax.stop_gradient(reward + discount * soft_value)


def critic_loss(q1: jax.Array, q2: jax.Array, target: jax.Array) -> jax.Array:
    """``mean((Q1 - y)^2) + mean((Q2 - y)^2)`` for f32[B] values and target ``y``."""
    chex.assert_rank([q1, q2, target], 1)
    chex.assert_equal_shape([q1, q2, target])
    target = jax.lax.stop_gradient(target)
    return jnp.mean(jnp.square(q1 - target)) + jnp.mean(jnp.square(q2 - target))


def actor_loss(log_prob: jax.Array, q1: jax.Array, q2: jax.Array, alpha: jax.Array) -> jax.Array:
    """``mean(alpha * log pi(a|s) - min(Q1, Q2)(s, a))`` with the temperature held fixed.

    Args:
      log_prob: f32[B] log-probability of the reparameterised actions.
      q1, q2: f32[B] critic values of those actions (gradients flow to the actions).
      alpha: f32[] temperature (stop-gradient applied here).
    """
    chex.assert_rank([log_prob, q1, q2, alpha], [1, 1, 1, 0])
    chex.assert_equal_shape([log_prob, q1, q2])
    alpha = jax.lax.stop_gradient(alpha)
    return jnp.mean(alpha * log_prob - jnp.minimum(q1, q2))


def temperature_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """``mean(alpha * (-log pi - target_entropy))`` with ``alpha = exp(log_alpha)``.

    The log-probabilities are held fixed; the gradient raises alpha when the policy's
    entropy estimate ``-log pi`` falls below ``target_entropy`` (``-|A|`` in SAC).

    Args:
      log_alpha: f32[] the optimised parameter.
      log_prob: f32[B] log-probabilities of the policy's samples.
      target_entropy: the entropy target.
    """
    chex.assert_rank([log_alpha, log_prob], [0, 1])
    entropy_gap = jax.lax.stop_gradient(-log_prob - target_entropy)
    return jnp.mean(jnp.exp(log_alpha) * entropy_gap)
