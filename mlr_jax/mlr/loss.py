"""The MLR objective: cosine distance between predicted and target latents.

The authors' code writes the loss as the squared distance of L2-normalised vectors,
``||n(p) - n(t)||^2`` with ``n(x) = x / max(||x||, eps)``, which equals ``2 - 2 cos(p, t)``
whenever both norms exceed ``eps``. :func:`cosine_loss` computes half of it, so it IS the
paper's ``1 - cos`` for ordinary latents, and it keeps the code's value for latents shorter
than ``eps``: at initialisation the DMC predictor's outputs are ~2e-4 long, where
``1 - cos`` would be a different loss with different gradients. :func:`mlr_loss` scales it by
``scale=2.0`` by default to report the same numbers (and gradients) as the code.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def normalize(x: jax.Array, eps: float = 1e-3, axis: int = -1) -> jax.Array:
    """``x / max(||x||_2, eps)`` along ``axis`` (``torch.nn.functional.normalize``).

    Written as ``x / sqrt(max(||x||^2, eps^2))``: the same values, and a finite gradient
    for ``x = 0`` (where ``jnp.linalg.norm`` would give NaN).
    """
    squared = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared, eps * eps))


def normalized_mse(pred: jax.Array, target: jax.Array, eps: float = 1e-3) -> jax.Array:
    """``||n(pred) - n(target)||^2`` over the last axis (= ``2 - 2 cos`` for norms >= eps),
    the SPR/MLR codes' ``F.mse_loss(normalize(p), normalize(t)).sum(-1)``.

    Args:
      pred: f32[..., D] predictions (gradients flow).
      target: f32[..., D] targets (wrapped in ``stop_gradient``).
      eps: lower bound of the norms in :func:`normalize`.

    Returns:
      f32[...], each in [0, 4].
    """
    chex.assert_equal_shape([pred, target])
    pred = normalize(pred.astype(jnp.float32), eps)
    target = normalize(jax.lax.stop_gradient(target).astype(jnp.float32), eps)
    return jnp.sum(jnp.square(pred - target), axis=-1)


def cosine_loss(pred: jax.Array, target: jax.Array, eps: float = 1e-3) -> jax.Array:
    """Per-sample ``0.5 ||n(pred) - n(target)||^2`` (= ``1 - cos`` for norms >= eps),
    averaged over time.

    Args:
      pred: f32[B, T, D] predictions (gradients flow).
      target: f32[B, T, D] targets (wrapped in ``stop_gradient``).
      eps: lower bound of the norms in :func:`normalize`.

    Returns:
      f32[B], each in [0, 2].
    """
    chex.assert_rank([pred, target], 3)
    return jnp.mean(0.5 * normalized_mse(pred, target, eps), axis=-1)


def mlr_loss(pred: jax.Array, target: jax.Array, weights: jax.Array | None = None,
             scale: float = 2.0) -> tuple[jax.Array, jax.Array]:
    """The MLR loss, optionally weighted per sample (prioritized-replay IS weights).

    Args:
      pred: f32[B, T, D] predicted latents (projection + predictor of the decoder outputs).
      target: f32[B, T, D] momentum targets (stop-gradient is applied here).
      weights: optional f32[B] per-sample weights; None = all ones.
      scale: multiplier of ``1 - cos``; 2.0 reproduces the code's normalised MSE ``2 - 2 cos``.

    Returns:
      ``(loss, per_sample)``: the scalar ``mean(weights * per_sample)`` and the unweighted
      ``per_sample = scale * cosine_loss(pred, target)`` of shape f32[B].
    """
    per_sample = scale * cosine_loss(pred, target)
    if weights is None:
        return jnp.mean(per_sample), per_sample
    chex.assert_shape(weights, per_sample.shape)
    return jnp.mean(weights * per_sample), per_sample
