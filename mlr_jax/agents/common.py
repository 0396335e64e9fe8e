"""Pieces shared by the Atari and DMC agents: the agent interface, the numeric precision,
and gradient helpers."""

from __future__ import annotations

import functools
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


# run.precision -> (XLA's precision for float32 matmuls and convolutions, the computation
# dtype of the networks' layers). Parameters, optimiser state and losses stay float32.
#   fp32: full float32 (on TPUs six bfloat16 passes);
#   tf32: TF32 on GPUs that have it (10-bit inputs, float32 sums: torch 1.7.1's default on
#         them, the authors' pin), three bfloat16 passes on TPUs, float32 on CPUs;
#   bf16: the layers compute in bfloat16.
PRECISIONS = {"fp32": ("float32", jnp.float32), "tf32": ("tensorfloat32", jnp.float32),
              "bf16": ("bfloat16", jnp.bfloat16)}


def compute_dtype(precision: str) -> Any:
    """The networks' computation dtype for ``run.precision``."""
    return PRECISIONS[precision][1]


def precision_record(precision: str) -> dict[str, str]:
    """What ``run.precision`` meant, for result files and benchmark records."""
    matmul, dtype = PRECISIONS[precision]
    return {"run.precision": precision, "matmul_precision": matmul,
            "compute_dtype": jnp.dtype(dtype).name}


def at_precision(fn: Callable[..., Any], precision: str) -> Callable[..., Any]:
    """``fn`` traced under ``jax.default_matmul_precision`` of ``run.precision``: every dot and
    convolution it creates carries that precision config (a jit of it compiles them so)."""
    matmul = PRECISIONS[precision][0]

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with jax.default_matmul_precision(matmul):
            return fn(*args, **kwargs)

    return traced

