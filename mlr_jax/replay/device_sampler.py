"""Replay sampling as jitted array programs: the batches of the host replays
(:class:`~mlr_jax.replay.atari.AtariReplay`, :class:`~mlr_jax.replay.dmc.DMCReplay`) drawn
on the devices from a copy of their per-step arrays, :class:`RingArrays`.

The host replay stays the writer and the reference: every step it stores is copied into
the arrays (a few scalars beside the frame, :mod:`mlr_jax.device_frames`), and the functions
here read them exactly as the host replay reads its ring -- the same validity rules (rlpyt's
start window for Atari, the authors' ``sample_spr`` windows for DMC), the same stacks
(:class:`~mlr_jax.replay.frames.FrameRows` of the device frame table), n-step returns,
sanitized windows and importance weights. Priorities live here, written inside the train
step (:func:`write_priorities`), so an update needs nothing from the host.

Draws: each sample is one uniform ``u`` in ``[0, 1)``; the start is the one whose cumulative
leaf mass first exceeds ``u * total``, the leaf of :meth:`mlr_jax.replay.sum_tree.SumTree.find`
(Atari: ``priority ** alpha`` where the start is valid, else 0; DMC: 1 where valid). Draws
are i.i.d. as rlpyt's ``SumTree.sample`` (b32d589, ``sum_tree.py`` l.107, 213: no
stratification). Given the same ``u`` the host replay and these functions return the same
batch, up to float32 rounding of the cumulative sums (the host's tree sums in float64).
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax.replay.atari import AtariBatch, AtariReplay
from mlr_jax.replay.dmc import DMCReplay, SACBatch, SeqBatch
from mlr_jax.replay.frames import FrameRows


class RingArrays(NamedTuple):
    """One seed's stored steps on the device (a group's carry a leading seed axis ``[S]``).

    age: int32[N], the segment age of the step in each slot (:class:`FrameRing`).
    action: int32[N] (Atari) or float32[N, A] (DMC).
    reward: float32[N].
    terminal: bool[N].
    episode_end: bool[N].
    priority: float32[N], Atari's ``priority ** alpha`` of the start in each slot (DMC: 0).
    count: int32[], the steps stored so far (absolute index of the next one).
    """

    age: jax.Array
    action: jax.Array
    reward: jax.Array
    terminal: jax.Array
    episode_end: jax.Array
    priority: jax.Array
    count: jax.Array


@dataclasses.dataclass(frozen=True)
class RingSpec:
    """The static shape of a replay's sampling (hashable: a jit static argument).

    capacity ``N``, frame_stack ``F``, fill (``"zero"``/``"repeat"``); Atari: window ``L``,
    n_step, gamma, bootstrap_cut (the first offset whose done stops the bootstrap), lead and
    lag (``start_rule``'s margins), alpha; DMC: seq_len ``K``, authors (``sequence_rule``).
    """

    capacity: int
    frame_stack: int
    fill: str
    window: int = 0
    n_step: int = 0
    gamma: float = 0.0
    bootstrap_cut: int = 0
    lead: int = 0
    lag: int = 0
    alpha: float = 1.0
    seq_len: int = 0
    authors: bool = False


def atari_spec(replay: AtariReplay) -> RingSpec:
    """The :class:`RingSpec` of a host Atari replay (fixed initial priority only)."""
    if replay.initial_priority is None:
        raise ValueError("the device sampler needs a fixed initial priority (initial_priority=1.0, "
                         "as the authors' rlpyt buffer); None tracks the host's running maximum")
    ring = replay.ring
    return RingSpec(capacity=ring.capacity, frame_stack=ring.frame_stack, fill=ring.fill,
                    window=replay.window, n_step=replay.n_step, gamma=replay.gamma,
                    bootstrap_cut=replay.bootstrap_cut, lead=replay.lead, lag=replay.lag,
                    alpha=replay.priority_exponent)


def dmc_spec(replay: DMCReplay) -> RingSpec:
    """The :class:`RingSpec` of a host DMC replay."""
    ring = replay.ring
    return RingSpec(capacity=ring.capacity, frame_stack=ring.frame_stack, fill=ring.fill,
                    seq_len=replay.seq_len, authors=replay.sequence_rule == "authors")


def host_arrays(replay: AtariReplay | DMCReplay) -> RingArrays:
    """A host replay's steps as :class:`RingArrays` (numpy; the device copy's source)."""
    ring = replay.ring
    n = ring.capacity
    priority = (replay.priorities.astype(np.float32) if isinstance(replay, AtariReplay)
                else np.zeros(n, np.float32))
    return RingArrays(age=ring.age.astype(np.int32), action=ring.data["action"].copy(),
                      reward=ring.data["reward"].copy(), terminal=ring.data["terminal"].copy(),
                      episode_end=ring.data["episode_end"].copy(), priority=priority,
                      count=np.asarray(ring.count, np.int32))


# ---------------------------------------------------------------------- the ring, read

def _oldest(a: RingArrays, spec: RingSpec) -> jax.Array:
    return jnp.maximum(0, a.count - spec.capacity)


def _stored(a: RingArrays, spec: RingSpec, index: jax.Array) -> jax.Array:
    return (index >= _oldest(a, spec)) & (index < a.count)


def _ages(a: RingArrays, spec: RingSpec, index: jax.Array) -> jax.Array:
    return jnp.where(_stored(a, spec, index), a.age[index % spec.capacity], -1)


def _history_ok(a: RingArrays, spec: RingSpec, index: jax.Array) -> jax.Array:
    back = jnp.minimum(spec.frame_stack - 1, _ages(a, spec, index))
    return _stored(a, spec, index) & (index - back >= _oldest(a, spec))


def _same_segment(a: RingArrays, spec: RingSpec, first: jax.Array, last: jax.Array) -> jax.Array:
    ok = _stored(a, spec, first) & _stored(a, spec, last)
    return ok & (_ages(a, spec, last) - _ages(a, spec, first) == last - first)


def stack_rows(a: RingArrays, spec: RingSpec, index: jax.Array) -> jax.Array:
    """int32[..., F]: the frame-table rows of the stacks of stored steps ``index``, as
    :meth:`FrameRing.stack_rows` (row ``N`` is the zero frame)."""
    back = jnp.arange(spec.frame_stack - 1, -1, -1)
    age = a.age[index % spec.capacity][..., None]
    rows = (index[..., None] - jnp.minimum(back, age)) % spec.capacity
    if spec.fill == "zero":
        rows = jnp.where(back > age, spec.capacity, rows)
    return rows.astype(jnp.int32)


def _slot_steps(a: RingArrays, spec: RingSpec) -> jax.Array:
    """int32[N]: the absolute step each slot holds (or would hold: unwritten slots map to
    steps not yet stored)."""
    oldest = _oldest(a, spec)
    return oldest + (jnp.arange(spec.capacity, dtype=jnp.int32) - oldest) % spec.capacity


def _find(leaves: jax.Array, u: jax.Array) -> jax.Array:
    """Slots drawn by uniform ``u[B]`` with probability leaf / total (:meth:`SumTree.find`):
    the first slot whose cumulative mass exceeds ``u * total``; never a zero leaf."""
    cumulative = jnp.cumsum(leaves)
    slots = jnp.searchsorted(cumulative, u * cumulative[-1], side="right")
    last_positive = leaves.shape[0] - 1 - jnp.argmax(leaves[::-1] > 0)  # rounding at the top
    return jnp.minimum(slots, last_positive).astype(jnp.int32)


# ---------------------------------------------------------------------- Atari

def atari_leaves(a: RingArrays, spec: RingSpec) -> jax.Array:
    """float32[N]: each slot's sampling mass, its priority where its start is valid
    (``AtariReplay._valid``: stack history stored, ``lag`` steps written from it, ``lead``
    steps after the oldest), else 0."""
    starts = _slot_steps(a, spec)
    valid = (_history_ok(a, spec, starts) & (starts + spec.lag <= a.count)
             & (starts >= _oldest(a, spec) + spec.lead))
    return jnp.where(valid, a.priority, 0.0)


def sample_atari(a: RingArrays, spec: RingSpec, u: jax.Array, beta: jax.Array) -> AtariBatch:
    """:meth:`AtariReplay.sample` for the uniform draws ``u`` (float32[B]), with ``obs`` as
    :class:`FrameRows` of the device frame table; ``indices`` int32[B]."""
    chex.assert_rank(u, 1)
    n_slots, window, n = spec.capacity, spec.window, spec.n_step
    leaves = atari_leaves(a, spec)
    slots = _find(leaves, u)
    start = _slot_steps(a, spec)[slots]
    steps = start[:, None] + jnp.arange(window)  # [B, L] absolute
    rows = steps % n_slots
    done = a.terminal[rows] | a.episode_end[rows]
    first_done = jnp.where(done.any(axis=1), jnp.argmax(done, axis=1), window)
    alive = jnp.arange(n) <= first_done[:, None]  # rewards up to and including the done
    returns = (a.reward[rows[:, :n]] * alive * spec.gamma ** jnp.arange(n)).sum(axis=1)
    discounts = jnp.where(first_done < spec.bootstrap_cut, 0.0, spec.gamma ** n)
    obs = FrameRows(stack_rows(a, spec, jnp.minimum(steps, (start + first_done)[:, None])))
    weights = (1.0 / (leaves[slots] + 1e-5)) ** beta
    return AtariBatch(obs=obs, actions=a.action[rows].astype(jnp.int32),
                      returns=returns.astype(jnp.float32), discounts=discounts.astype(jnp.float32),
                      weights=(weights / weights.max()).astype(jnp.float32), indices=start,
                      first_done=first_done.astype(jnp.int32))


def write_priorities(a: RingArrays, spec: RingSpec, indices: jax.Array,
                     priorities: jax.Array) -> RingArrays:
    """:meth:`AtariReplay.update_priorities` on the device: ``priority ** alpha`` for the
    sampled starts ``indices`` (int32[B]) still stored; a start drawn twice keeps its first
    priority (rlpyt's ``np.unique(return_index=True)``)."""
    batch = indices.shape[0]
    order = jnp.arange(batch)
    seen_before = ((indices[None, :] == indices[:, None]) & (order[None, :] < order[:, None])).any(1)
    keep = ~seen_before & _stored(a, spec, indices)
    slots = jnp.where(keep, indices % spec.capacity, spec.capacity)  # N: dropped
    new = a.priority.at[slots].set(priorities.astype(jnp.float32) ** spec.alpha, mode="drop")
    return a._replace(priority=new)


# ---------------------------------------------------------------------- DMC

def transition_leaves(a: RingArrays, spec: RingSpec) -> jax.Array:
    """float32[N]: 1 where the slot's step starts a transition (``DMCReplay._valid_transitions``:
    history stored, and a successor in its episode or a terminal)."""
    t = _slot_steps(a, spec)
    terminal = jnp.where(_stored(a, spec, t), a.terminal[t % spec.capacity], False)
    valid = _history_ok(a, spec, t) & (terminal | _same_segment(a, spec, t, t + 1))
    return valid.astype(jnp.float32)


def sequence_leaves(a: RingArrays, spec: RingSpec) -> jax.Array:
    """float32[N]: 1 where the slot's step starts an MLR sequence
    (``DMCReplay._valid_sequences``)."""
    s = _slot_steps(a, spec)
    last = s + spec.seq_len - 1
    valid = _history_ok(a, spec, s) & _same_segment(a, spec, s, last)
    if spec.authors:
        ends = jnp.where(_stored(a, spec, last), a.episode_end[last % spec.capacity], True)
        stored = jnp.minimum(a.count, spec.capacity)
        valid &= ~ends & (s % spec.capacity < stored - spec.seq_len)
    return valid.astype(jnp.float32)


def sample_transitions(a: RingArrays, spec: RingSpec, u: jax.Array) -> SACBatch:
    """:meth:`DMCReplay.sample` for the uniform draws ``u`` (float32[B]), stacks as rows."""
    t = _slot_steps(a, spec)[_find(transition_leaves(a, spec), u)]
    rows = t % spec.capacity
    successor = jnp.where(a.episode_end[rows], t, t + 1)
    return SACBatch(obs=FrameRows(stack_rows(a, spec, t)), action=a.action[rows],
                    reward=a.reward[rows], discount=(~a.terminal[rows]).astype(jnp.float32),
                    next_obs=FrameRows(stack_rows(a, spec, successor)))


def sample_sequences(a: RingArrays, spec: RingSpec, u: jax.Array) -> SeqBatch:
    """:meth:`DMCReplay.sample_sequences` for the uniform draws ``u`` (float32[B])."""
    start = _slot_steps(a, spec)[_find(sequence_leaves(a, spec), u)]
    steps = start[:, None] + jnp.arange(spec.seq_len)
    return SeqBatch(obs=FrameRows(stack_rows(a, spec, steps)), action=a.action[steps % spec.capacity])
