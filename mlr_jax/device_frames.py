"""Replay frames kept on the accelerators, so that a batch crosses as indices, not pixels.

With ``run.replay_frames="device"`` the frame tables of a group's replays (``capacity + 1``
frames each, the last all zeros) live on the devices as one array ``[S, rows, *frame]``
split over the seeds (:class:`mlr_jax.parallel.Layout`; each seed's table is copied along
the data axis), written one frame per agent step as the host rings are (a 7 KB Atari / 30 KB
DMC transfer per seed). Sampling stays on the host and returns
:class:`~mlr_jax.replay.frames.FrameRows` where it returned pixels, and the train step
gathers the stacks from the seed's table on the device, as its first operation. Per update
this replaces a host gather and a host-to-device copy of 14.5 MB (Atari) or 276 MB (DMC: 512
transitions of two 9x100x100 stacks and 128 sequences of 16) per seed by a few kilobytes of
indices.

The batches are bit-identical to the host ones (``tests/test_device_frames.py``). The host
rings stay the single source of truth: checkpoints save them, and a restore reloads the
device table from them.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import parallel
from mlr_jax.replay.frames import FrameRows


LOAD_BYTES = 64 * 2 ** 20  # the block a restore copies to the devices at a time


class FrameTables:
    """The frame tables of a group's replays on the devices.

    Args:
      layout: the group's :class:`~mlr_jax.parallel.Layout`.

    Attributes:
      table: uint8[S, num_rows, *frame_shape] split over the seeds (None until the first
        replay is made); a new array after every write (the old buffer is donated), so read
        it when it is used.
    """

    def __init__(self, layout: parallel.Layout):
        self.layout = layout
        self.table: jax.Array | None = None
        self._write = layout.seed_writer()

    def mirror(self, seed: int) -> Callable[[int, tuple[int, ...]], "DeviceFrames"]:
        """The :class:`~mlr_jax.replay.frames.FrameMirror` factory of the replay of the
        group's seed number ``seed`` (0-based position in the group)."""

        def make(num_rows: int, frame_shape: tuple[int, ...]) -> DeviceFrames:
            shape = (num_rows, *frame_shape)
            if self.table is None:
                self.table = self.layout.zeros(shape, jnp.uint8)
            elif self.table.shape[1:] != shape:
                raise ValueError(f"frame table of shape {shape} for seed {seed}; the group's "
                                 f"tables are {self.table.shape[1:]}")
            return DeviceFrames(self, seed)

        return make

    def write(self, seed: int, frame: np.ndarray, row: int) -> None:
        """``table[seed, row] = frame``."""
        self.table = self._write(self.table, seed, np.asarray(frame, np.uint8)[None], row)

    def load(self, seed: int, frames: np.ndarray) -> None:
        """``table[seed] = frames`` (every row), in place: blocks of at most
        :data:`LOAD_BYTES` cross to the devices one after another, so a restore needs no
        second table (all blocks have one shape, the last one overlapping its predecessor:
        one compiled writer)."""
        rows = len(frames)
        block = max(1, min(rows, LOAD_BYTES // max(1, frames[0].nbytes)))
        for start in range(0, rows, block):
            start = min(start, rows - block)
            self.table = self._write(self.table, seed, np.asarray(frames[start:start + block], np.uint8),
                                     start)


class DeviceFrames:
    """One seed's frame table on the devices (a :class:`~mlr_jax.replay.frames.FrameMirror`),
    made by :meth:`FrameTables.mirror`."""

    def __init__(self, tables: FrameTables, seed: int):
        self.tables, self.seed = tables, seed
        self.frame_shape = tuple(tables.table.shape[2:])

    @property
    def table(self) -> jax.Array:
        """The group's table ``[S, num_rows, *frame_shape]`` (this seed's is ``table[seed]``)."""
        return self.tables.table

    def write(self, row: int, frame: np.ndarray) -> None:
        """Set row ``row`` of this seed's table to ``frame`` (uint8[*frame_shape])."""
        self.tables.write(self.seed, frame, row)

    def load(self, frames: np.ndarray) -> None:
        """Replace this seed's table with ``frames`` (uint8[num_rows, *frame_shape])."""
        if frames.shape != self.table.shape[1:]:
            raise ValueError(f"frame table of shape {frames.shape} != {self.table.shape[1:]}")
        self.tables.load(self.seed, frames)


def stack_pixels(table: jax.Array, rows: jax.Array) -> jax.Array:
    """The stacked observations ``rows`` name.

    Args:
      table: uint8[N, *frame_shape] (one device's copy).
      rows: int32[..., F] rows of ``table``, oldest frame first.

    Returns:
      uint8[..., F*C, H, W] (``[..., F, H, W]`` for grayscale frames), as
      :meth:`~mlr_jax.replay.frames.FrameRing.stacks` builds them on the host.
    """
    chex.assert_type(rows, jnp.int32)
    pixels = jnp.asarray(table).at[rows].get(mode="promise_in_bounds")  # [..., F, *frame_shape]
    return pixels.reshape(rows.shape[:-1] + (-1,) + table.shape[-2:])


def gather_batch(table: jax.Array, batch: Any) -> Any:
    """``batch`` with every :class:`FrameRows` leaf replaced by its pixels (:func:`stack_pixels`)."""
    is_rows = lambda x: isinstance(x, FrameRows)  # noqa: E731
    return jax.tree.map(lambda x: stack_pixels(table, x.rows) if is_rows(x) else x, batch,
                        is_leaf=is_rows)


def reading_frames(train_step: Callable[..., Any]) -> Callable[..., Any]:
    """``train_step(state, batch, key, axis_name)`` -> ``step(state, batch, key, table,
    axis_name)`` that first gathers the batch's stacks from ``table``."""

    def step(state, batch, key, table, axis_name=None):
        return train_step(state, gather_batch(table, batch), key, axis_name=axis_name)

    return step


def parallel_train_step(layout: parallel.Layout, train_step: Callable[..., Any], axes: Any,
                        tables: FrameTables | None) -> Callable[..., Any]:
    """The loop's ``step(stacked_state, batches, keys) -> (state, metrics)``:
    :meth:`mlr_jax.parallel.Layout.train_step` of the agent's ``train_step`` (seed axes
    ``axes``), reading the current frame tables when the replays keep them on the devices
    (``tables``), else taking pixel batches."""
    if tables is None:
        return layout.train_step(train_step, axes)
    step = layout.train_step(reading_frames(train_step), axes, num_tables=1)
    return lambda state, batch, keys: step(state, batch, keys, tables.table)
