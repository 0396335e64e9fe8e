"""Replay frames kept on the accelerators, so that a batch crosses as indices, not pixels.

With ``run.replay_frames="device"`` the replay's frame table (``capacity + 1`` frames, the
last all zeros) has a copy on every local device, written one frame per agent step as the
host ring is (a 7 KB Atari / 30 KB DMC transfer). Sampling stays on the host and returns
:class:`~mlr_jax.replay.frames.FrameRows` where it returned pixels, and the train step
gathers the stacks from the table on the device, as its first operation. Per update this
replaces a host gather and a host-to-device copy of 14.5 MB (Atari) or 276 MB (DMC: 512
transitions of two 9x100x100 stacks and 128 sequences of 16) by a few kilobytes of indices.

The batches are bit-identical to the host ones (``tests/replay/test_device_frames.py``).
The host ring stays the single source of truth: checkpoints save it, and a restore
reloads the device tables from it.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import parallel
from mlr_jax.replay.frames import FrameRows


class DeviceFrames:
    """A frame table on every local device (a :class:`~mlr_jax.replay.frames.FrameMirror`).

    Args:
      num_rows: rows of the table (the ring's ``capacity + 1``).
      frame_shape: ``(H, W)`` or ``(C, H, W)``.
      num_devices: local devices holding a copy (None: all).

    Attributes:
      table: uint8[D, num_rows, *frame_shape] in the layout of :func:`mlr_jax.parallel.replicate`;
        a new array after every :meth:`write` (the old buffer is donated), so read it when it
        is used.
    """

    def __init__(self, num_rows: int, frame_shape: tuple[int, ...], num_devices: int | None = None):
        self.frame_shape = tuple(frame_shape)
        self.num_devices = num_devices
        self.table = parallel.replicated_zeros((num_rows, *self.frame_shape), jnp.uint8, num_devices)
        self._write = parallel.row_writer(num_devices)

    def write(self, row: int, frame: np.ndarray) -> None:
        """Set row ``row`` of every copy to ``frame`` (uint8[*frame_shape])."""
        self.table = self._write(self.table, row, np.asarray(frame, np.uint8))

    def load(self, frames: np.ndarray) -> None:
        """Replace every copy with ``frames`` (uint8[num_rows, *frame_shape])."""
        if frames.shape != self.table.shape[1:]:
            raise ValueError(f"frame table of shape {frames.shape} != {self.table.shape[1:]}")
        self.table = parallel.replicate(np.asarray(frames, np.uint8), self.num_devices)


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


def parallel_train_step(train_step: Callable[..., Any], frames: DeviceFrames | None,
                        num_devices: int | None = None) -> Callable[..., Any]:
    """The loop's ``step(replicated_state, batch, key) -> (state, metrics)``:
    :func:`mlr_jax.parallel.data_parallel` of the agent's ``train_step``, reading the current
    device frame table when the replay keeps one (``frames``), else taking pixel batches."""
    if frames is None:
        return parallel.data_parallel(train_step, num_devices)
    step = parallel.data_parallel(reading_frames(train_step), num_devices, num_replicated=1)
    return lambda state, batch, key: step(state, batch, key, frames.table)
