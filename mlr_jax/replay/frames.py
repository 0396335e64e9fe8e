"""Circular per-step storage that keeps each image frame once and rebuilds frame stacks.

Both replays store one *step* per slot: the newest frame of the observation the agent acted
on, plus per-step fields (action, reward, flags). A stacked observation of step ``t`` is
rebuilt on demand from the frames of steps ``t - F + 1 .. t`` (oldest to newest along the
channel axis, as envs return them), so memory is one frame per step instead of ``F``.

Steps carry a *segment age*: the number of steps since the start of their segment (a game
or episode; the replay decides where segments end). Stack positions that reach back before
the segment start are filled by the ``fill`` rule:

* ``"zero"``: all-zero frames (rlpyt's frame buffer, used by the authors' Atari code);
* ``"repeat"``: the segment's first frame (CURL's ``FrameStack``; envpool Atari at a reset).

So no stack ever mixes frames of two segments. Steps are addressed by *absolute* index
(0 for the first step ever added); the stored ones are ``[oldest, count)`` and step ``t``
lives in slot ``t % capacity``.

A ring may keep a *mirror* of its frames elsewhere (``mlr_jax.device_frames``: a copy
on every accelerator). The mirror sees every frame write and every restore, and
:meth:`FrameRing.observations` then returns :class:`FrameRows` (which rows of the frame table
make each stack) instead of pixels, so a batch crosses to the device as a few kilobytes of
indices and its stacks are gathered there.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Protocol

import numpy as np

FILL_RULES = ("zero", "repeat")


class FrameRows(NamedTuple):
    """Stacked observations given as rows of a ring's frame table instead of pixels.

    rows: int32[..., F], oldest frame first; row ``capacity`` is the all-zero frame. The
      table's ``frames[rows]`` reshaped to ``[..., F*C, H, W]`` (``[..., F, H, W]`` for
      grayscale) is exactly what :meth:`FrameRing.stacks` returns for the same steps.
    """

    rows: np.ndarray


class FrameMirror(Protocol):
    """A copy of a ring's frame table (``capacity + 1`` rows, the last all zeros)."""

    def write(self, row: int, frame: np.ndarray) -> None:
        """Set row ``row`` to ``frame``."""

    def load(self, frames: np.ndarray) -> None:
        """Replace the whole table with ``frames`` (``[capacity + 1, *frame_shape]``)."""


class FrameRing:
    """Fixed-capacity circular step storage with frame-once images.

    Args:
      capacity: number of steps kept (older steps are overwritten).
      frame_shape: shape of one frame, ``(H, W)`` (grayscale) or ``(C, H, W)``.
      frame_stack: frames per stacked observation ``F``.
      fill: ``"zero"`` or ``"repeat"`` (see module docstring).
      fields: per-step fields, ``{name: (shape, dtype)}``, stored in ``self.data[name]``
        with shape ``[capacity, *shape]``.
      mirror: an optional :class:`FrameMirror` factory, called as ``mirror(capacity + 1,
        frame_shape)``;
        with one, :meth:`observations` returns :class:`FrameRows`.
    """

    def __init__(self, capacity: int, frame_shape: tuple[int, ...], frame_stack: int,
                 fill: str, fields: Mapping[str, tuple[tuple[int, ...], type]],
                 mirror: Callable[[int, tuple[int, ...]], FrameMirror] | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if not 1 <= frame_stack <= capacity:
            raise ValueError(f"frame_stack must be in [1, capacity={capacity}], got {frame_stack}")
        if fill not in FILL_RULES:
            raise ValueError(f"fill must be one of {FILL_RULES}, got {fill!r}")
        if len(frame_shape) not in (2, 3):
            raise ValueError(f"frame_shape must be (H, W) or (C, H, W), got {frame_shape}")
        self.capacity = int(capacity)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        self.frame_stack = int(frame_stack)
        self.fill = fill
        # One extra all-zero frame at index `capacity`: stack positions under the "zero"
        # rule point there, so one fancy-indexing gather builds every stack.
        self.frames = np.zeros((self.capacity + 1, *self.frame_shape), dtype=np.uint8)
        self.age = np.zeros(self.capacity, dtype=np.int64)
        self.segment_end = np.zeros(self.capacity, dtype=bool)
        self.data = {name: np.zeros((self.capacity, *shape), dtype=dtype)
                     for name, (shape, dtype) in fields.items()}
        self.count = 0
        self.mirror = None if mirror is None else mirror(self.capacity + 1, self.frame_shape)

    # ------------------------------------------------------------------ writing

    def append(self, frame: np.ndarray, ends_segment: bool, **values) -> int:
        """Store one step; returns its absolute index.

        Args:
          frame: uint8[*frame_shape], the newest frame of the step's observation.
          ends_segment: True if the next appended step starts a new segment.
          **values: one value per field given at construction.
        """
        frame = np.asarray(frame)
        if frame.shape != self.frame_shape:
            raise ValueError(f"frame shape {frame.shape} != expected {self.frame_shape} "
                             "(pass the NEWEST frame of the observation, not the stack)")
        if frame.dtype != np.uint8:
            raise TypeError(f"frame dtype must be uint8, got {frame.dtype}")
        if set(values) != set(self.data):
            raise TypeError(f"expected fields {sorted(self.data)}, got {sorted(values)}")
        slot = self.count % self.capacity
        if self.count == 0:
            age = 0
        else:
            prev = (self.count - 1) % self.capacity
            age = 0 if self.segment_end[prev] else int(self.age[prev]) + 1
        self.frames[slot] = frame
        if self.mirror is not None:
            self.mirror.write(slot, frame)
        self.age[slot] = age
        self.segment_end[slot] = bool(ends_segment)
        for name, value in values.items():
            self.data[name][slot] = value
        self.count += 1
        return self.count - 1

    def end_segment(self) -> int:
        """Make the newest stored step the last of its segment (the next append starts a
        new one); returns its absolute index, -1 if nothing is stored."""
        if self.count:
            self.segment_end[(self.count - 1) % self.capacity] = True
        return self.count - 1

    def changed_starts(self, window: int) -> np.ndarray:
        """Absolute indices whose validity the last :meth:`append` may have changed.

        A start ``s`` whose checks read steps ``s .. s + window - 1`` and its stack history
        changes only when its last step was just written (``s >= count - window``) or a
        step of its history was just overwritten (``s < oldest + F - 1``).
        """
        lo = self.oldest
        head = np.arange(max(lo, self.count - window), self.count)
        overwrote = self.count > self.capacity
        tail = np.arange(lo, lo + self.frame_stack - 1) if overwrote else np.arange(0)
        return np.union1d(head, tail).astype(np.int64)

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest stored step."""
        return max(0, self.count - self.capacity)

    def slot(self, index: np.ndarray) -> np.ndarray:
        """Slot of absolute step ``index`` (int[...])."""
        return np.asarray(index, dtype=np.int64) % self.capacity

    def absolute(self, slot: np.ndarray) -> np.ndarray:
        """Absolute index of the stored step in ``slot`` (int[...])."""
        lo = self.oldest
        return lo + (np.asarray(slot, dtype=np.int64) - lo) % self.capacity

    def stored(self, index: np.ndarray) -> np.ndarray:
        """bool[...]: step ``index`` is in the buffer."""
        index = np.asarray(index, dtype=np.int64)
        return (index >= self.oldest) & (index < self.count)

    def ages(self, index: np.ndarray) -> np.ndarray:
        """Segment age of stored steps ``index`` (int64[...]); -1 for steps not stored."""
        index = np.asarray(index, dtype=np.int64)
        return np.where(self.stored(index), self.age[index % self.capacity], -1)

    def history_ok(self, index: np.ndarray) -> np.ndarray:
        """bool[...]: step ``index`` is stored and so is every frame its stack needs."""
        index = np.asarray(index, dtype=np.int64)
        back = np.minimum(self.frame_stack - 1, self.ages(index))
        return self.stored(index) & (index - back >= self.oldest)

    def same_segment(self, first: np.ndarray, last: np.ndarray) -> np.ndarray:
        """bool[...]: stored steps ``first <= last`` belong to one segment."""
        first, last = np.asarray(first, np.int64), np.asarray(last, np.int64)
        ok = self.stored(first) & self.stored(last)
        return ok & (self.ages(last) - self.ages(first) == last - first)

    def stack_rows(self, index: np.ndarray) -> np.ndarray:
        """Rows of :attr:`frames` that make the stacks of stored steps ``index`` (int[...]):
        int64[..., F], oldest first, ``capacity`` (the zero frame) under the "zero" rule.
        Callers pass only steps whose :meth:`history_ok` holds."""
        index = np.asarray(index, dtype=np.int64)
        back = np.arange(self.frame_stack - 1, -1, -1)  # stack position k reads step t - back[k]
        age = self.age[index % self.capacity][..., None]
        rows = (index[..., None] - np.minimum(back, age)) % self.capacity
        if self.fill == "zero":
            rows = np.where(back > age, self.capacity, rows)
        return rows

    def stacks(self, index: np.ndarray) -> np.ndarray:
        """Stacked observations of stored steps ``index`` (int[...]).

        Returns uint8[..., F, H, W] for ``(H, W)`` frames or uint8[..., F*C, H, W] for
        ``(C, H, W)`` frames, oldest frame first. Callers pass only steps whose
        :meth:`history_ok` holds.
        """
        index = np.asarray(index, dtype=np.int64)
        out = self.frames[self.stack_rows(index)]  # [..., F, *frame_shape]
        return out.reshape(*index.shape, -1, *self.frame_shape[-2:])

    def observations(self, index: np.ndarray) -> np.ndarray | FrameRows:
        """What a batch carries for steps ``index``: :meth:`stacks` (pixels), or with a
        mirror, :class:`FrameRows` (int32 rows of the mirrored frame table)."""
        if self.mirror is None:
            return self.stacks(index)
        return FrameRows(self.stack_rows(index).astype(np.int32))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Nested dict of numpy arrays (views, not copies; 0-d ``count``) that
        :meth:`load_state_dict` restores exactly."""
        return {"frames": self.frames[:self.capacity], "age": self.age,
                "segment_end": self.segment_end, "count": np.asarray(self.count, np.int64),
                "data": dict(self.data)}

    def load_state_dict(self, state: Mapping) -> None:
        """Copy a :meth:`state_dict` of a ring with the same construction arguments."""
        targets = self.state_dict()
        check_state(state, targets, "replay")
        copy_state(state, targets)
        self.count = int(np.asarray(state["count"]))
        if self.mirror is not None:
            self.mirror.load(self.frames)


def check_state(state: Mapping, targets: Mapping, where: str) -> None:
    """Raise ValueError naming the first key or shape of ``state`` that differs from the
    nested dict of arrays ``targets``."""
    if not isinstance(state, Mapping) or set(state) != set(targets):
        keys = sorted(state) if isinstance(state, Mapping) else type(state).__name__
        raise ValueError(f"{where}: keys {keys} != expected {sorted(targets)}")
    for key, target in targets.items():
        if isinstance(target, Mapping):
            check_state(state[key], target, f"{where}/{key}")
        elif np.shape(state[key]) != target.shape:
            raise ValueError(f"{where}/{key}: shape {np.shape(state[key])} != {target.shape} "
                             "(replay built with a different capacity or shapes?)")


def copy_state(state: Mapping, targets: Mapping) -> None:
    """Copy every array of ``state`` into the same-shaped arrays of ``targets`` (0-d skipped)."""
    for key, target in targets.items():
        if isinstance(target, Mapping):
            copy_state(state[key], target)
        elif target.ndim:
            target[...] = np.asarray(state[key])
