"""Uniform transition + sequence replay for DMControl (CURL-style SAC + MLR), numpy on the host.

What the loop stores, once per agent step ``t`` (single environment stream)::

    obs = env.reset()                                   # uint8[1, F*3, H, W]
    while ...:
        action = act(obs)
        step = env.step(action)
        replay.add(obs[0, -3:], action[0], step.reward[0], step.terminal[0], step.episode_end[0])
        obs = step.obs  # on episode_end: already the first obs of the next episode

i.e. the NEWEST RGB frame of ``s_t``, the action ``a_t`` taken there, ``r_t``, ``terminal``
(a true terminal: no bootstrapping; DMC has none, a time limit is NOT terminal) and
``episode_end`` (the next step starts a new episode). Each frame is stored once; stacks of
``F`` frames are rebuilt on sample and, at an episode start, repeat the first frame as
CURL's ``FrameStack`` does.

Two samplers, both uniform with replacement over VALID starts only, so batches always
have their full size (the official code dropped invalid sequences and shrank the batch):

* :meth:`DMCReplay.sample` -> :class:`SACBatch` of transitions ``(s_t, a_t, r_t, s_{t+1})``
  as the official ``ReplayBuffer`` stores them. Difference: the official buffer keeps the
  true final observation of an episode as the last transition's ``next_obs``; here the env
  already returned the next episode's first observation, so the last step of an episode
  that ended by time limit has no successor and is never sampled (1 of 125..500 steps).
* :meth:`DMCReplay.sample_sequences` -> :class:`SeqBatch` of ``K`` consecutive observations
  and the actions taken at them (the official ``obses[idxs]``, ``actions[idxs]``).

Which sequence starts are valid (``sequence_rule``):

* ``"authors"`` (default), the official ``ReplayBuffer.sample_spr`` (DMControl/src/utils.py,
  which MLR's ``mtm_sac`` calls): the start's slot ``p`` satisfies ``p < N - K`` with ``N``
  the steps stored (``randint(0, N - jumps - 1)``, ``jumps = K - 1``; slots in write order,
  step ``t`` in slot ``t % capacity`` as there), and no step of the window is the last step
  of an episode (their ``real_dones``, set on the time-limit step; here ``episode_end``,
  which also marks true terminals and :meth:`DMCReplay.mark_episode_end`). So a window
  never reaches an episode's final step; before the buffer is full it never reaches the
  newest step either; once full it never covers slot ``capacity - 1``. The official code
  also kept, once full, the ``K - 1`` windows that run past the write position from the
  newest step into the oldest (two unrelated stretches of experience) and the first
  ``F - 1`` oldest steps whose earlier frames are overwritten; this replay cannot rebuild
  either and leaves them out (``K + F - 2`` of ``capacity`` starts at most). The official
  code drew ``2 B`` starts, kept the valid ones and returned the first ``B`` of them (fewer
  if fewer were valid); each kept window is uniform over the valid starts, which is what
  this replay samples, always ``B`` of them.
* ``"episode"``: every window of ``K`` stored steps of one episode (with its stack history),
  including the window that ends at the episode's final step or at the newest step.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np

from mlr_jax.replay.frames import FrameMirror, FrameRing, check_state
from mlr_jax.replay.sum_tree import LeafUpkeep, SumTree

SEQUENCE_RULES = ("authors", "episode")


class SACBatch(NamedTuple):
    """Transitions for SAC (``B`` samples, ``F`` stacked RGB frames).

    obs: uint8[B, 3F, H, W] stacked ``s_t``.
    action: float32[B, A] action taken at ``s_t``.
    reward: float32[B] ``r_t``.
    discount: float32[B] 1, or 0 if the transition is terminal (not for time limits).
    next_obs: uint8[B, 3F, H, W] stacked ``s_{t+1}`` (a copy of ``s_t`` where terminal).
    """

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    next_obs: np.ndarray


class SeqBatch(NamedTuple):
    """Sequences for MLR: obs uint8[B, K, 3F, H, W], action float32[B, K, A] (taken at obs).

    With frames on the device, ``obs`` (and SACBatch's ``obs``, ``next_obs``) are ``FrameRows``
    of the same stacks: int32[B, K, F] (``[B, F]``).
    """

    obs: np.ndarray
    action: np.ndarray


class DMCReplay:
    """Frame-once replay of single-stream DMC experience.

    Args:
      capacity: steps kept.
      action_dim: ``A``.
      frame_stack: frames per observation ``F``.
      seq_len: MLR sequence length ``K``.
      frame_shape: ``(3, H, W)`` of one RGB frame.
      mirror: a :class:`~mlr_jax.replay.frames.FrameMirror` factory to keep a copy of the
        frames elsewhere, e.g. :class:`mlr_jax.device_frames.DeviceFrames` on every local
        device (:func:`mlr_jax.domains.make_replay` passes it for ``run.replay_frames``);
        batches then carry ``FrameRows`` instead of pixels. None: frames on the host only.
      sequence_rule: which windows :meth:`sample_sequences` draws from: ``"authors"`` (the
        official ``sample_spr``'s) or ``"episode"`` (every window within one episode); see
        the module docstring.
      eager_tree: keep the validity trees current at every :meth:`add` (the host sampler).
        False: they are rebuilt at the next draw instead, for a replay whose batches the
        devices draw (``run.sampler=device``): it then only stores.

    Attributes:
      ring: the :class:`~mlr_jax.replay.frames.FrameRing` of stored steps.
    """

    def __init__(self, capacity: int = 100_000, action_dim: int = 1, frame_stack: int = 3,
                 seq_len: int = 16, frame_shape: tuple[int, int, int] = (3, 100, 100),
                 mirror: Callable[..., FrameMirror] | None = None,
                 sequence_rule: str = "authors", eager_tree: bool = True):
        if action_dim < 1 or seq_len < 1:
            raise ValueError(f"action_dim={action_dim} and seq_len={seq_len} must be >= 1")
        if sequence_rule not in SEQUENCE_RULES:
            raise ValueError(f"sequence_rule must be one of {SEQUENCE_RULES}, "
                             f"got {sequence_rule!r}")
        # Steps s .. s + window - 1 decide whether s starts a transition or a sequence: the
        # authors' rule also needs step s + K stored before the buffer is full.
        self._window = max(seq_len + (sequence_rule == "authors"), 2)
        if capacity < self._window + frame_stack - 1:
            raise ValueError(f"capacity={capacity} cannot hold one sequence of {seq_len} steps")
        if len(frame_shape) != 3:
            raise ValueError(f"DMC frame_shape must be (C, H, W), got {frame_shape}")
        self.action_dim = int(action_dim)
        self.seq_len = int(seq_len)
        self.sequence_rule = sequence_rule
        self._ring = FrameRing(capacity, frame_shape, frame_stack, "repeat", fields={
            "action": ((self.action_dim,), np.float32), "reward": ((), np.float32),
            "terminal": ((), bool), "episode_end": ((), bool)},
            mirror=mirror)
        self._transitions = SumTree(capacity)  # 0/1 leaves: valid transition starts
        self._sequences = SumTree(capacity)  # 0/1 leaves: valid sequence starts
        self._upkeep = LeafUpkeep(eager_tree, self._set_leaves)

    def __len__(self) -> int:
        return len(self._ring)

    @property
    def device_frames(self) -> FrameMirror | None:
        """The mirror of the frames (e.g. on the devices), else None."""
        return self._ring.mirror

    @property
    def ring(self) -> FrameRing:
        return self._ring

    def add(self, frame: np.ndarray, action: np.ndarray, reward: float, terminal: bool,
            episode_end: bool) -> None:
        """Store step ``t`` (see the module docstring for the loop protocol).

        Args:
          frame: uint8[3, H, W], the newest frame of ``s_t`` (``obs[-3:]``).
          action: float[A], the action taken at ``s_t``.
          reward: float, ``r_t``.
          terminal: bool, a true terminal (never a time limit).
          episode_end: bool, the episode ended; the next added step starts a new one.
        """
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action shape {action.shape} != ({self.action_dim},)")
        self._ring.append(frame, bool(episode_end), action=action, reward=reward,
                          terminal=terminal, episode_end=episode_end)
        self._upkeep.changed(self._changed_starts)

    def mark_episode_end(self) -> None:
        """End the episode at the newest stored step (e.g. after a resume restarts the env):
        it gets no successor and no stack or sequence continues into the next added step."""
        index = self._ring.end_segment()
        if index >= 0:
            self._ring.data["episode_end"][self._ring.slot(index)] = True
            self._upkeep.changed(self._changed_starts)  # windows now ending there

    def sample(self, batch_size: int, rng: np.random.Generator) -> SACBatch:
        """``batch_size`` uniform transitions; see :class:`SACBatch`."""
        t = self._draw(self._transitions, batch_size, rng, "sample",
                       "a transition needs 2 consecutive steps of one episode")
        ring = self._ring
        rows = ring.slot(t)
        terminal = ring.data["terminal"][rows]
        successor = np.where(ring.data["episode_end"][rows], t, t + 1)
        return SACBatch(obs=ring.observations(t), action=ring.data["action"][rows],
                        reward=ring.data["reward"][rows],
                        discount=(~terminal).astype(np.float32),
                        next_obs=ring.observations(successor))

    def sample_sequences(self, batch_size: int, rng: np.random.Generator) -> SeqBatch:
        """``batch_size`` uniform windows of ``seq_len`` steps within one episode, among those
        that ``sequence_rule`` allows (see the module docstring)."""
        need = f"a sequence needs {self.seq_len} consecutive steps of one episode"
        if self.sequence_rule == "authors":
            need += (", none of them its last, and until the buffer is full one more step "
                     "stored after them")
        start = self._draw(self._sequences, batch_size, rng, "sample_sequences", need)
        steps = start[:, None] + np.arange(self.seq_len)
        return SeqBatch(obs=self._ring.observations(steps),
                        action=self._ring.data["action"][self._ring.slot(steps)])

    # ------------------------------------------------------------------ validity

    def _draw(self, tree: SumTree, batch_size: int, rng: np.random.Generator, name: str,
              need: str) -> np.ndarray:
        self._upkeep.before_draw()
        if tree.total <= 0.0:
            raise ValueError(f"DMCReplay.{name}: no valid start yet: {len(self)} steps stored; "
                             f"{need}")
        return self._ring.absolute(tree.sample(batch_size, rng))

    def _valid_transitions(self, t: np.ndarray) -> np.ndarray:
        """bool[N]: ``s_t`` is stored with its history and has a successor (or is terminal)."""
        ring = self._ring
        terminal = np.where(ring.stored(t), ring.data["terminal"][ring.slot(t)], False)
        return ring.history_ok(t) & (terminal | ring.same_segment(t, t + 1))

    def _valid_sequences(self, s: np.ndarray) -> np.ndarray:
        """bool[N]: steps ``s .. s + K - 1`` are stored, in one episode, with history; under
        the authors' rule also none is an episode's last step and ``slot(s) < N - K``."""
        ring = self._ring
        last = s + self.seq_len - 1
        valid = ring.history_ok(s) & ring.same_segment(s, last)
        if self.sequence_rule == "authors":
            ends = np.where(ring.stored(last), ring.data["episode_end"][ring.slot(last)], True)
            valid &= ~ends & (ring.slot(s) < len(ring) - self.seq_len)
        return valid

    def _changed_starts(self) -> np.ndarray:
        return self._ring.changed_starts(self._window)

    def _set_leaves(self, starts: np.ndarray | None) -> None:
        """Both trees' leaves of ``starts`` (None: every stored start): 1 where valid."""
        every = starts is None
        starts = self._ring.absolute(np.arange(len(self._ring))) if every else starts
        slots = self._ring.slot(starts)
        for tree, valid in ((self._transitions, self._valid_transitions),
                            (self._sequences, self._valid_sequences)):
            values = valid(starts).astype(np.float64)
            (tree.set_only if every else tree.set)(slots, values)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Nested dict of numpy arrays (views) of the whole replay, for checkpointing."""
        return {"ring": self._ring.state_dict()}

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` of a replay built with the same arguments."""
        check_state(state, self.state_dict(), "DMCReplay state")
        self._ring.load_state_dict(state["ring"])
        self._upkeep.changed()
