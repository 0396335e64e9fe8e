"""The replay on the devices (``run.sampler=device``): batches sampled, assembled and
prioritized inside the train step, so an update needs nothing from the host and sends
nothing back.

The host replays (:mod:`mlr_jax.replay`) still store every step: they are the writers, what
checkpoints save, and the reference the sampler is tested against. After each agent step
:meth:`DeviceReplay.write_newest` copies every seed's newest step -- its frame, segment age,
action, reward, flags and initial priority -- into the group's device copy in one program: a
frame table ``[S, N + 1, *frame]`` (:class:`mlr_jax.device_frames.FrameTables`) and
:class:`~mlr_jax.replay.device_sampler.RingArrays` ``[S, N]``. The train step
(:func:`update_from_replay`, :func:`tallying`) draws its batch there (:mod:`mlr_jax.replay.device_sampler`), gathers
the pixels, updates, writes the new priorities (Atari) and adds its metrics to a tally on the
device (:func:`new_tally`): running sums for the log rows, and the first non-finite update,
which the loop reads with the next actions.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import device_frames, parallel
from mlr_jax.agents.common import FINITE
from mlr_jax.agents.dmc import DMCBatch
from mlr_jax.replay import device_sampler as ds
from mlr_jax.replay.atari import AtariReplay


class DeviceReplay:
    """The device copy of a group's replays.

    Args:
      layout: the group's :class:`~mlr_jax.parallel.Layout`.
      replays: the seeds' host replays (all built alike, without a mirror).

    Attributes:
      spec: the sampling's static shape (:class:`~mlr_jax.replay.device_sampler.RingSpec`).
      tables: the frame tables ``uint8[S, N + 1, *frame]``.
      arrays: the steps, :class:`~mlr_jax.replay.device_sampler.RingArrays` ``[S, ...]``.
    """

    def __init__(self, layout: parallel.Layout, replays: list[Any]):
        self.layout = layout
        self.atari = isinstance(replays[0], AtariReplay)
        self.spec = ds.atari_spec(replays[0]) if self.atari else ds.dmc_spec(replays[0])
        ring = replays[0].ring
        self.tables = device_frames.FrameTables(layout)
        self.tables.table = layout.zeros((ring.capacity + 1, *ring.frame_shape), jnp.uint8)
        self._axes = ds.RingArrays(*([0] * len(ds.RingArrays._fields)))
        self.load(replays)
        self._step = _StepLayout(ring.frame_shape, 0 if self.atari else replays[0].action_dim)
        self._rows = np.zeros((len(replays), self._step.size), np.uint8)  # the next copy's source
        self._write = layout.per_seed(self._step.write, 3, donate=(0, 1))

    def write_newest(self, replays: list[Any]) -> None:
        """Copy every seed's newest stored step: one host-to-device copy of the group's
        packed steps and one program."""
        for row, replay in zip(self._rows, replays):
            self._step.pack(row, replay)
        self.tables.table, self.arrays = self._write(
            self.tables.table, self.arrays, self.layout.put_seeds(self._rows))

    def load(self, replays: list[Any]) -> None:
        """Replace the device copy with the host replays' whole contents (the frames of
        those that hold steps: a restored run's)."""
        for i, replay in enumerate(replays):
            if replay.ring.count:
                self.tables.load(i, replay.ring.frames)
        arrays = [ds.host_arrays(r) for r in replays]
        self.arrays = self.layout.put(parallel.stack(arrays, self._axes), self._axes)

    def pull_priorities(self, replays: list[Any]) -> None:
        """Copy the device's priorities into the host replays (before a checkpoint)."""
        if self.atari:
            for replay, priority in zip(replays, np.asarray(jax.device_get(self.arrays.priority))):
                replay.load_priorities(priority)


class _StepLayout:
    """One stored step packed in one uint8 row (what :meth:`DeviceReplay.write_newest`
    copies): the frame's bytes, then int32 ``[slot, age, count, terminal, episode_end,
    Atari action]``, then float32 ``[reward, priority, *DMC action]`` (native byte order on
    both sides). ``action_dim``: DMC's action size, 0 for Atari."""

    INTS = 6

    def __init__(self, frame_shape: tuple[int, ...], action_dim: int):
        self.frame_shape = frame_shape
        self.frame_bytes = int(np.prod(frame_shape))
        self.atari = action_dim == 0  # (Atari's action is an int)
        self.floats = 2 + action_dim
        self.size = self.frame_bytes + 4 * (self.INTS + self.floats)

    def pack(self, row: np.ndarray, replay: Any) -> None:
        """Write ``replay``'s newest step into ``row`` (uint8[size])."""
        ring = replay.ring
        slot = (ring.count - 1) % ring.capacity
        data = {k: v[slot] for k, v in ring.data.items()}
        atari = self.atari  # Atari: int action in the ints; DMC: float actions in the floats
        row[:self.frame_bytes] = ring.frames[slot].reshape(-1)
        ints = row[self.frame_bytes:self.frame_bytes + 4 * self.INTS].view(np.int32)
        ints[:] = (slot, ring.age[slot], ring.count, data["terminal"], data["episode_end"],
                   data["action"] if atari else 0)
        floats = row[self.frame_bytes + 4 * self.INTS:].view(np.float32)
        floats[0] = data["reward"]
        floats[1] = replay.priorities[slot] if atari else 0.0
        floats[2:] = () if atari else data["action"]

    def write(self, table: jax.Array, arrays: ds.RingArrays, row: jax.Array):
        """One seed's packed step into its frame table and arrays."""
        fb = self.frame_bytes
        words = lambda part, dtype: jax.lax.bitcast_convert_type(part.reshape(-1, 4), dtype)  # noqa: E731
        ints = words(row[fb:fb + 4 * self.INTS], jnp.int32)
        floats = words(row[fb + 4 * self.INTS:], jnp.float32)
        slot = ints[0]
        action = ints[5] if arrays.action.ndim == 1 else floats[2:]
        return table.at[slot].set(row[:fb].reshape(self.frame_shape)), ds.RingArrays(
            age=arrays.age.at[slot].set(ints[1]), action=arrays.action.at[slot].set(action),
            reward=arrays.reward.at[slot].set(floats[0]),
            terminal=arrays.terminal.at[slot].set(ints[3].astype(bool)),
            episode_end=arrays.episode_end.at[slot].set(ints[4].astype(bool)),
            priority=arrays.priority.at[slot].set(floats[1]), count=ints[2])


# ---------------------------------------------------------------------- the tally

def new_tally(metric_shapes: dict[str, Any], updates: int) -> dict[str, Any]:
    """One seed's empty tally (numpy): per scalar metric a sum and a count of its non-NaN
    values since the last log row; ``updates`` (the updates made so far), and the first
    non-finite update (``bad``, ``bad_step``, ``bad_metrics``; -1 while there is none)."""
    names = [k for k, v in metric_shapes.items() if k != FINITE and len(v.shape) == 0]
    zeros = {k: np.float32(0) for k in names}
    return {"sum": dict(zeros), "count": {k: np.int32(0) for k in names},
            "updates": np.int32(updates), "bad": np.int32(-1), "bad_step": np.int32(-1),
            "bad_metrics": dict(zeros)}


def add_to_tally(tally: dict[str, Any], metrics: dict[str, Any], agent_step: jax.Array) -> dict[str, Any]:
    """``tally`` after one more update with ``metrics`` (NaN values, e.g. the DMC actor's
    losses on updates without an actor step, are not counted)."""
    update = tally["updates"] + 1
    first_bad = (tally["bad"] < 0) & ~metrics[FINITE]
    names = tally["sum"]
    value = {k: jnp.asarray(metrics[k], jnp.float32) for k in names}
    return {"sum": {k: tally["sum"][k] + jnp.where(jnp.isnan(value[k]), 0.0, value[k]) for k in names},
            "count": {k: tally["count"][k] + (~jnp.isnan(value[k])).astype(jnp.int32) for k in names},
            "updates": update, "bad": jnp.where(first_bad, update, tally["bad"]),
            "bad_step": jnp.where(first_bad, agent_step, tally["bad_step"]),
            "bad_metrics": {k: jnp.where(first_bad, value[k], tally["bad_metrics"][k]) for k in names}}


def reset_tally(tally: dict[str, Any]) -> dict[str, Any]:
    """The tally with its sums and counts emptied (after a log row read them)."""
    return {**tally, "sum": jax.tree.map(jnp.zeros_like, tally["sum"]),
            "count": jax.tree.map(jnp.zeros_like, tally["count"])}


# ---------------------------------------------------------------------- the programs

def update_from_replay(train_step: Callable[..., Any], replay: DeviceReplay, batch_size: int,
                       seq_batch_size: int = 0) -> Callable[..., Any]:
    """``update(state, key, arrays, table, beta, axis_name) -> (state, key, arrays, metrics)``
    of one seed: split the seed's key as the host loop does, draw the batch from ``arrays``
    (Atari with importance exponent ``beta``; DMC transitions and, with ``seq_batch_size``,
    sequences), take this data shard's part, gather its pixels from ``table``, update, and
    write the new priorities (which leave ``metrics``)."""
    spec = replay.spec

    def sample(arrays, key, beta):
        if replay.atari:
            return ds.sample_atari(arrays, spec, jax.random.uniform(key, (batch_size,)), beta)
        k_sac, k_seq = jax.random.split(key)
        sac = ds.sample_transitions(arrays, spec, jax.random.uniform(k_sac, (batch_size,)))
        seq = (ds.sample_sequences(arrays, spec, jax.random.uniform(k_seq, (seq_batch_size,)))
               if seq_batch_size else None)
        return DMCBatch(sac=sac, seq=seq)

    def update(state, key, arrays, table, beta, axis_name=None):
        key, update_key = jax.random.split(key)
        sample_key, step_key = jax.random.split(update_key)
        batch = sample(arrays, sample_key, beta)
        local = jax.tree.map(lambda x: parallel.shard_slice(x, axis_name), batch)
        state, metrics = train_step(state, device_frames.gather_batch(table, local), step_key,
                                    axis_name=axis_name)
        if "priorities" in metrics:
            metrics = dict(metrics)
            priorities = metrics.pop("priorities")
            if axis_name is not None:
                priorities = jax.lax.all_gather(priorities, axis_name, tiled=True)
            arrays = ds.write_priorities(arrays, spec, batch.indices, priorities)
        return state, key, arrays, metrics

    return update


def tallying(update: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`update_from_replay`'s ``update`` -> ``step(state, key, arrays, table, tally,
    beta, agent_step, axis_name) -> (state, key, arrays, tally)``, its metrics added to
    the tally."""

    def step(state, key, arrays, table, tally, beta, agent_step, axis_name=None):
        state, key, arrays, metrics = update(state, key, arrays, table, beta, axis_name=axis_name)
        return state, key, arrays, add_to_tally(tally, metrics, agent_step)

    return step


def acting(act: Callable[..., Any]) -> Callable[..., Any]:
    """``act(state, obs, key, *args) -> actions`` of one seed -> ``(state, obs, key, bad,
    *args) -> (packed, key)``: the key split as the host loop does, and the actions
    (flattened, as float32) followed by the seed's first bad update (-1: none) in ONE array,
    the one copy to the host an agent step needs."""

    def one(state, obs, key, bad, *args):
        key, sub = jax.random.split(key)
        actions = act(state, obs, sub, *args)
        packed = jnp.concatenate([actions.reshape(-1).astype(jnp.float32),
                                  bad.astype(jnp.float32)[None]])
        return packed, key

    return one
