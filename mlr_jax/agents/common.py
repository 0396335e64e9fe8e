"""Pieces shared by the Atari and DMC agents: the agent interface and gradient helpers."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax


class Agent(NamedTuple):
    """The pure functions the loop drives (see docs/design.md "Agents").

    ``init(key) -> state``; ``train_step(state, batch, key, axis_name=None) ->
    (state, metrics)``, where ``metrics[FINITE]`` is a bool scalar: every loss and gradient
    norm of the update was finite (the loop stops the run when it is not); ``act(state, obs, key, ...) -> actions`` (training behaviour);
    ``eval_act(state, obs, key) -> actions`` (evaluation behaviour);
    ``param_counts(state) -> {component: count}``.
    """

    init: Callable[..., Any]
    train_step: Callable[..., Any]
    act: Callable[..., Any]
    eval_act: Callable[..., Any]
    param_counts: Callable[..., dict[str, int]]


FINITE = "finite"  # the metrics key of the update's all-finite flag


def all_finite(tree: chex.ArrayTree) -> jax.Array:
    """bool[]: every element of every leaf of ``tree`` is finite."""
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def count_params(tree: chex.ArrayTree) -> int:
    """Number of scalars in a pytree of arrays or ``jax.ShapeDtypeStruct`` (from eval_shape)."""
    return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))


def clip_by_global_norm(grads: chex.ArrayTree, max_norm: float) -> tuple[chex.ArrayTree, jax.Array]:
    """PyTorch's ``clip_grad_norm_``: scale by ``min(1, max_norm / (norm + 1e-6))``.

    Args:
      grads: a gradient pytree (one clip group).
      max_norm: the largest allowed global L2 norm.

    Returns:
      ``(clipped_grads, norm)`` where ``norm`` is the global norm before clipping.
    """
    norm = optax.tree.norm(grads)
    factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), grads), norm


SHARED_FIELDS = ("step",)  # state fields every seed of a group shares (not stacked)


def seed_axes(state: Any) -> Any:
    """The seed axis of each leaf of a stacked agent state (see
    :class:`mlr_jax.parallel.Layout`): 0 everywhere except :data:`SHARED_FIELDS`, None.

    The seeds of a group take their updates together, so they share the update counter; kept
    unstacked, a ``lax.cond`` on it (the DMC actor's every-second-update gating) stays a
    branch under ``vmap`` instead of becoming a select that runs both sides every update.
    ``state`` may be abstract (``jax.eval_shape``)."""
    return jax.tree.map(lambda _: 0, state).replace(**{f: None for f in SHARED_FIELDS})
