"""Prioritized sequence replay for Atari (SPR / MLR style), numpy on the host.

What the loop stores, once per agent step ``t`` (single environment stream)::

    obs = env.reset()                                   # uint8[1, F, H, W]
    while ...:
        action = act(obs)
        step = env.step(action)
        replay.add(obs[0, -1], action[0], step.reward[0], step.terminal[0], step.episode_end[0])
        obs = step.obs  # on episode_end: already the first obs of the next game

i.e. the NEWEST frame of the observation ``s_t`` the agent acted on, the action ``a_t`` taken
there, the clipped reward ``r_t`` and the flags of the transition ``s_t -> s_{t+1}``:
``terminal`` (life loss or game over: stops bootstrapping) and ``episode_end`` (game over or
time limit: the next step starts a new game). Frames are kept once; stacks are rebuilt on
sample from the newest frames of the previous ``F - 1`` steps.

Stack positions before the first frame of a game are zeros with ``stack_fill="zero"``, and
``reset_stack_on_terminal=True`` also starts a new stack at every life loss: the authors'
rlpyt env and frame buffer, and what ``mlr_jax.envs.atari`` shows the agent with
``stack_reset="zero"``. ``stack_fill="repeat"`` without the reset at terminals rebuilds
envpool's own stacks (the first frame repeated, no break at a life loss). Either way the
replay rebuilds the very stacks the agent acted on, when the env and the replay are built
from the same config (:func:`mlr_jax.domains.make_replay`).

Sampling follows rlpyt's prioritized sequence replay as the authors used it: a start index
``t`` is drawn with probability ``p_t / sum p`` where ``p_t = priority_t ** priority_exponent``
(new steps get ``max priority seen ** exponent``, 1 before any update; rlpyt gave them a
fixed 1: ``initial_priority=1.0``), and the window
``[t, t + L)`` with ``L = max(seq_len, n_step + 1)`` is returned with ``obs[:, 0] = s_t``
and ``obs[:, n_step] = s_{t+n}``. Like the authors' ``sanitize_batch``,
observations after the first ``done`` (terminal or episode end) in the window repeat the
observation of that done step (the last state before the reset); actions are NOT sanitized
(the authors' code leaves them as stored).

Which starts can be drawn (``start_rule``; all others have probability 0), with ``count``
steps stored so far and ``oldest = max(0, count - capacity)`` the oldest one kept:

* ``"rlpyt"`` (default): rlpyt's prioritized sequence replay as the authors configured it
  (``batch_T = seq_len``, ``n_step_return = n_step``, one environment, one step appended at a
  time, no RNN state). Its sum tree keeps the leaves behind the write cursor off for
  ``off_backward = 1 + n_step + batch_T`` slots and the ``off_forward = max(1, F - 1)`` slots
  from the cursor on (the oldest steps, whose previous action and stack history are about to
  be overwritten); on its first pass it never turns on the first ``off_forward`` slots. In
  absolute steps: ``oldest + max(1, F - 1) <= t <= count - (2 + n_step + seq_len)``, i.e.
  starts 3 .. count - 28 for MLR's ``F = 4``, ``n_step = 10``, ``seq_len = 16`` (rlpyt
  reads ``seq_len + n_step`` observations from ``t`` on, and its tree waits 2 steps more).
  The authors' replay held 1M steps, so their 100k-step runs never left the first pass.
* ``"written"``: every start whose window ``[t, t + L)`` is written and whose stack history
  is still stored (``t >= oldest`` and ``t + L <= count``; ``t - min(F - 1, age) >= oldest``).

Which dones stop the bootstrap (``done_n_rule``): the return is always cut at the first done,
but rlpyt at the authors' pinned commit stored ``done_n[t] = done[t]`` only (its
``discount_return_n_step`` rebinds ``done_n`` in its loop instead of writing into the
buffer), so a done 1..n-1 steps after ``t`` still bootstraps ``gamma^n Z(s_{t+n})`` from the
sanitized ``s_{t+n}`` (the observation at the done): ``"first_step"``. The textbook cut
(discount 0 when any of ``t..t+n-1`` is done, rlpyt after its fix) is ``"any_step"``.
"""
from __future__ import annotations

from typing import Callable, Mapping, NamedTuple

import numpy as np

from mlr_jax.replay.frames import FrameMirror, FrameRing, check_state
from mlr_jax.replay.sum_tree import LeafUpkeep, SumTree

DONE_N_RULES = ("first_step", "any_step")
START_RULES = ("rlpyt", "written")


class AtariBatch(NamedTuple):
    """A batch of prioritized sequences (``B`` sequences, ``L`` steps, ``F`` frames).

    obs: uint8[B, L, F, H, W], ``obs[:, i]`` the stacked observation ``s_{t+i}``
      (sanitized after the first done in the window); with frames on the device,
      ``FrameRows`` (int32[B, L, F]) of the same stacks.
    actions: int32[B, L], the action taken at each state.
    returns: float32[B], ``sum_{k<n} gamma^k r_{t+k}`` truncated after the first done.
    discounts: float32[B], ``gamma^n``, or 0 if step ``t`` is done (``done_n_rule="first_step"``)
      or a done falls within ``r_t .. r_{t+n-1}`` (``"any_step"``).
    weights: float32[B], importance weights ``(1 / (p + 1e-5))^beta / max`` over the batch.
    indices: int64[B], absolute step indices of the starts (for :meth:`update_priorities`).
    first_done: int32[B], offset in the window of the first done (terminal or episode end)
      of the transition ``s_{t+i} -> s_{t+i+1}``, ``L`` when there is none; SPR's
      same-trajectory mask is ``i < first_done``.
    """

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray
    discounts: np.ndarray
    weights: np.ndarray
    indices: np.ndarray
    first_done: np.ndarray


class AtariReplay:
    """Prioritized sequence replay holding frames once.

    Args:
      capacity: steps kept (100k holds the whole Atari-100k run).
      frame_stack: frames per observation ``F``.
      seq_len: MLR sequence length ``K``.
      n_step: return horizon ``n``.
      gamma: discount.
      priority_exponent: ``alpha`` in ``p = priority^alpha``.
      frame_shape: ``(H, W)`` of one grayscale frame.
      stack_fill: ``"repeat"`` (envpool at a game reset, as ``envs/atari.py`` returns it)
        or ``"zero"`` (the authors' rlpyt env and frame buffer).
      reset_stack_on_terminal: also start a new stack at every terminal (life loss).
      done_n_rule: ``"first_step"`` (rlpyt as the authors ran it) or ``"any_step"`` (the
        textbook n-step cut); see the module docstring.
      initial_priority: priority of new steps; None = the largest priority seen so far
        (1 before any update), 1.0 = the authors' rlpyt buffer (a fixed default).
      start_rule: which starts may be drawn: ``"rlpyt"`` (the authors' rlpyt sum tree, the
        default) or ``"written"`` (any start whose window is written); see the module
        docstring.
      mirror: a :class:`~mlr_jax.replay.frames.FrameMirror` factory to keep a copy of the
        frames elsewhere, e.g. :class:`mlr_jax.device_frames.DeviceFrames` on every local
        device (:func:`mlr_jax.domains.make_replay` passes it for ``run.replay_frames``);
        batches then carry ``FrameRows`` instead of pixels. None: frames on the host only.
      eager_tree: keep the sum tree current at every :meth:`add` (the host sampler). False:
        the tree is rebuilt at the next :meth:`sample` instead, for a replay whose batches
        the devices draw (``run.sampler=device``, :mod:`mlr_jax.device_replay`): it then
        only stores, and a step costs a ring write.

    Attributes:
      ring: the :class:`~mlr_jax.replay.frames.FrameRing` of stored steps.
      lead, lag: ``start_rule``'s margins: start ``t`` may be drawn while
        ``t >= oldest + lead`` once ``t + lag <= count`` (with its stack history stored).
      bootstrap_cut: the first offset in a window whose done stops the bootstrap.
    """

    def __init__(self, capacity: int = 100_000, frame_stack: int = 4, seq_len: int = 16,
                 n_step: int = 10, gamma: float = 0.99, priority_exponent: float = 0.5,
                 frame_shape: tuple[int, int] = (84, 84), stack_fill: str = "repeat",
                 reset_stack_on_terminal: bool = False, initial_priority: float | None = None,
                 mirror: Callable[..., FrameMirror] | None = None, done_n_rule: str = "any_step",
                 start_rule: str = "rlpyt", eager_tree: bool = True):
        if n_step < 1 or seq_len < 1:
            raise ValueError(f"n_step={n_step} and seq_len={seq_len} must be >= 1")
        if done_n_rule not in DONE_N_RULES:
            raise ValueError(f"done_n_rule must be one of {DONE_N_RULES}, got {done_n_rule!r}")
        if start_rule not in START_RULES:
            raise ValueError(f"start_rule must be one of {START_RULES}, got {start_rule!r}")
        # the first offset in the window whose done still stops the bootstrap
        self.bootstrap_cut = 1 if done_n_rule == "first_step" else int(n_step)
        self.seq_len = int(seq_len)
        self.n_step = int(n_step)
        self.window = max(self.seq_len, self.n_step + 1)  # L
        self.start_rule = start_rule
        # start t is valid once t + lag <= count and while t >= oldest + lead (plus the stack
        # history check, which the rlpyt rule's lead already implies)
        if start_rule == "rlpyt":
            self.lead = max(1, int(frame_stack) - 1)  # rlpyt's off_forward
            self.lag = 2 + self.n_step + self.seq_len  # 1 + rlpyt's off_backward
        else:
            self.lead, self.lag = 0, self.window
        need = self.lag + max(self.lead, frame_stack - 1)
        if capacity < need:
            raise ValueError(f"capacity={capacity} cannot hold one window: start_rule="
                             f"{start_rule!r} needs {need} steps (seq_len={seq_len}, "
                             f"n_step={n_step}, frame_stack={frame_stack})")
        if len(frame_shape) != 2:
            raise ValueError(f"Atari frame_shape must be (H, W), got {frame_shape}")
        self.gamma = float(gamma)
        self.priority_exponent = float(priority_exponent)
        self.reset_stack_on_terminal = bool(reset_stack_on_terminal)
        if initial_priority is not None and not initial_priority > 0:
            raise ValueError(f"initial_priority must be > 0 or None, got {initial_priority}")
        self.initial_priority = initial_priority
        self._ring = FrameRing(capacity, frame_shape, frame_stack, stack_fill, fields={
            "action": ((), np.int32), "reward": ((), np.float32),
            "terminal": ((), bool), "episode_end": ((), bool)},
            mirror=mirror)
        self._priority = np.zeros(capacity, dtype=np.float64)  # priority ** alpha per slot
        self._max_priority = 1.0
        self._tree = SumTree(capacity)
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

    @property
    def priorities(self) -> np.ndarray:
        """float64[capacity]: ``priority ** priority_exponent`` of the start in each slot (a
        view; invalid starts keep theirs, the tree holds 0 for them)."""
        return self._priority

    def add(self, frame: np.ndarray, action: int, reward: float, terminal: bool,
            episode_end: bool) -> None:
        """Store step ``t`` (see the module docstring for the loop protocol).

        Args:
          frame: uint8[H, W], the newest frame of ``s_t`` (``obs[-1]``).
          action: int, the action taken at ``s_t``.
          reward: float, the clipped reward of the transition.
          terminal: bool, life loss or game over (no bootstrapping past this step).
          episode_end: bool, the game ended; the next added step starts a new game.
        """
        ends = bool(episode_end) or (self.reset_stack_on_terminal and bool(terminal))
        index = self._ring.append(frame, ends, action=action, reward=reward,
                                  terminal=terminal, episode_end=episode_end)
        new = self._max_priority if self.initial_priority is None else self.initial_priority
        self._priority[self._ring.slot(index)] = new ** self.priority_exponent
        self._upkeep.changed(self._changed_starts)

    def mark_episode_end(self) -> None:
        """End the game at the newest stored step (e.g. after a resume restarts the env):
        returns are cut there, windows crossing it are sanitized, and no stack continues
        into the next added step."""
        index = self._ring.end_segment()
        if index >= 0:
            self._ring.data["episode_end"][self._ring.slot(index)] = True

    def sample(self, batch_size: int, beta: float, rng: np.random.Generator) -> AtariBatch:
        """Draw ``batch_size`` windows by priority (with replacement); see :class:`AtariBatch`."""
        self._upkeep.before_draw()
        if self._tree.total <= 0.0:
            if self.start_rule == "rlpyt":
                why = (f"start_rule='rlpyt': starts from step {self.lead}, with the start and "
                       f"{self.lag - 1} steps after it written; seq_len={self.seq_len}, "
                       f"n_step={self.n_step}")
            else:
                why = f"start_rule='written': seq_len={self.seq_len}, n_step={self.n_step}"
            raise ValueError(
                f"AtariReplay.sample: no valid start yet: {len(self)} steps stored, the first "
                f"start needs {self.lead + self.lag} ({why}) and a positive priority")
        ring, L, n = self._ring, self.window, self.n_step
        slots = self._tree.sample(batch_size, rng)
        p = self._tree.get(slots)
        start = ring.absolute(slots)
        steps = start[:, None] + np.arange(L)  # [B, L] absolute
        rows = ring.slot(steps)
        done = ring.data["terminal"][rows] | ring.data["episode_end"][rows]
        first_done = np.where(done.any(axis=1), done.argmax(axis=1), L)  # [B]
        alive = np.arange(n) <= first_done[:, None]  # rewards up to and including the done
        returns = (ring.data["reward"][rows[:, :n]] * alive * self.gamma ** np.arange(n)).sum(1)
        discounts = np.where(first_done < self.bootstrap_cut, 0.0, self.gamma ** n)
        obs = ring.observations(np.minimum(steps, (start + first_done)[:, None]))
        weights = (1.0 / (p + 1e-5)) ** beta
        return AtariBatch(
            obs=obs,
            actions=ring.data["action"][rows],
            returns=returns.astype(np.float32),
            discounts=discounts.astype(np.float32),
            weights=(weights / weights.max()).astype(np.float32),
            indices=start,
            first_done=first_done.astype(np.int32))

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set the priorities of sampled starts (``indices`` from :class:`AtariBatch`).

        Args:
          indices: int[N] absolute start indices; ones overwritten since they were sampled
            are ignored, and a start given twice takes its first priority (as rlpyt).
          priorities: float[N], finite and >= 0 (e.g. the KL loss); stored as
            ``priority ** priority_exponent``.
        """
        indices = np.asarray(indices, dtype=np.int64)
        priorities = np.asarray(priorities, dtype=np.float64)
        if indices.ndim != 1 or priorities.shape != indices.shape:
            raise ValueError(f"indices {indices.shape} and priorities {priorities.shape} "
                             "must be matching 1-D arrays")
        if not np.all(np.isfinite(priorities)) or (priorities.size and priorities.min() < 0):
            raise ValueError(f"priorities must be finite and >= 0, got {priorities}")
        # a start drawn more than once keeps its first new priority (rlpyt's SumTree:
        # np.unique(return_index=True)); then only starts still stored are updated
        _, first = np.unique(indices, return_index=True)
        indices, priorities = indices[first], priorities[first]
        keep = self._ring.stored(indices)
        indices, priorities = indices[keep], priorities[keep]
        if not indices.size:
            return
        self._priority[self._ring.slot(indices)] = priorities ** self.priority_exponent
        self._max_priority = max(self._max_priority, float(priorities.max()))
        self._upkeep.changed(lambda: indices)

    # ------------------------------------------------------------------ validity

    def _valid(self, starts: np.ndarray) -> np.ndarray:
        """bool[N]: ``start_rule`` allows start ``s`` (the window ``[s, s + L)`` is written
        and ``s_t``'s history is stored either way)."""
        ring = self._ring
        ok = ring.history_ok(starts) & (starts + self.lag <= ring.count)
        return ok & (starts >= ring.oldest + self.lead)

    def _changed_starts(self) -> np.ndarray:
        """Starts whose validity the last :meth:`add` may have changed: the newest ``lag``
        (their window grew) and, once the ring wraps, the oldest ``max(lead, F - 1)`` (their
        history or rlpyt's forward margin moved)."""
        ring = self._ring
        changed = ring.changed_starts(self.lag)
        if self.lead and ring.count > ring.capacity:
            changed = np.union1d(changed, np.arange(ring.oldest, ring.oldest + self.lead))
        return changed.astype(np.int64)

    def _set_leaves(self, starts: np.ndarray | None) -> None:
        """The tree's leaves of ``starts`` (None: every stored start): the priority where
        ``start_rule`` allows the start, else 0."""
        every = starts is None
        starts = self._ring.absolute(np.arange(len(self._ring))) if every else starts
        slots = self._ring.slot(starts)
        values = np.where(self._valid(starts), self._priority[slots], 0.0)
        (self._tree.set_only if every else self._tree.set)(slots, values)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """Nested dict of numpy arrays (views) of the whole replay, for checkpointing."""
        return {"ring": self._ring.state_dict(), "priority": self._priority,
                "max_priority": np.asarray(self._max_priority, np.float64)}

    def load_priorities(self, priority: np.ndarray) -> None:
        """Replace every slot's ``priority ** alpha`` (float[capacity]), e.g. with those the
        device sampler (:mod:`mlr_jax.replay.device_sampler`) wrote; the tree follows (at
        once, or at the next draw with ``eager_tree=False``)."""
        priority = np.asarray(priority, np.float64)
        if priority.shape != self._priority.shape:
            raise ValueError(f"priorities of shape {priority.shape} != {self._priority.shape}")
        self._priority[:] = priority
        self._upkeep.changed()

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a :meth:`state_dict` of a replay built with the same arguments."""
        check_state(state, self.state_dict(), "AtariReplay state")
        self._ring.load_state_dict(state["ring"])
        self._priority[:] = np.asarray(state["priority"])
        self._max_priority = float(np.asarray(state["max_priority"]))
        self._upkeep.changed()
