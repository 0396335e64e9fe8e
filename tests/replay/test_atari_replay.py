"""AtariReplay against slow per-sample references.

Frames are 8x8 and encode (game id + 1, step): pixel [0,0] = game + 1 (so an all-zero
padding frame is recognisable), pixels [0,1], [0,2] = step % 256, step // 256.
"""
import copy

import chex
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import stats

from mlr_jax.replay import AtariBatch, AtariReplay

SHAPE = (8, 8)
F, SEQ, N, GAMMA = 4, 6, 3, 0.9
L = max(SEQ, N + 1)
START_RULES = ("rlpyt", "written")


def encode(game, step):
    frame = np.full(SHAPE, (7 * step) % 251 + 1, dtype=np.uint8)
    frame[0, 0], frame[0, 1], frame[0, 2] = game + 1, step % 256, step // 256
    return frame


def decode_step(frames):
    return frames[..., 0, 1].astype(np.int64) + 256 * frames[..., 0, 2].astype(np.int64)


class Stream:
    """Random steps with life losses, game overs and time-limit ends, plus slow references."""

    def __init__(self, n, seed, p_life=0.08, p_game=0.04):
        rng = np.random.default_rng(seed)
        self.episode_end = rng.random(n) < p_game
        time_limit = self.episode_end & (rng.random(n) < 0.3)  # game cut without a terminal
        self.terminal = ((rng.random(n) < p_life) | self.episode_end) & ~time_limit
        self.reward = rng.integers(-1, 2, n).astype(np.float32)
        self.action = rng.integers(0, 6, n).astype(np.int32)
        self.game = np.concatenate([[0], np.cumsum(self.episode_end)[:-1]])
        assert self.game.max() < 250

    def add_to(self, replay, lo, hi):
        for t in range(lo, hi):
            replay.add(encode(self.game[t], t), self.action[t], self.reward[t],
                       self.terminal[t], self.episode_end[t])

    def segment_start(self, t, reset_on_terminal):
        boundary = self.episode_end | (self.terminal & reset_on_terminal)
        while t > 0 and not boundary[t - 1]:
            t -= 1
        return t

    def stack(self, t, fill, reset_on_terminal):
        first = self.segment_start(t, reset_on_terminal)
        frames = []
        for back in range(F - 1, -1, -1):
            if t - back >= first:
                frames.append(encode(self.game[t - back], t - back))
            else:
                frames.append(np.zeros(SHAPE, np.uint8) if fill == "zero" else
                              encode(self.game[first], first))
        return np.stack(frames)

    def valid_starts(self, count, capacity, reset_on_terminal, start_rule="rlpyt"):
        lo = max(0, count - capacity)
        if start_rule == "rlpyt":  # the stored steps in the slots rlpyt's tree leaves on
            on = np.flatnonzero(rlpyt_tree_leaves(count, capacity, SEQ, N, F) > 0)
            return set((lo + (on - lo) % capacity).tolist())
        valid = []
        for s in range(lo, count - L + 1):
            first = self.segment_start(s, reset_on_terminal)
            if s - min(F - 1, s - first) >= lo:
                valid.append(s)
        return set(valid)

    def window(self, s, fill, reset_on_terminal, done_n_rule="any_step"):
        """Reference obs[L], actions[L], n-step return and discount of start s."""
        ret, discount, first_done = 0.0, GAMMA ** N, None
        cut = 1 if done_n_rule == "first_step" else N  # dones at offsets < cut stop the bootstrap
        for k in range(L):
            if first_done is None and k < N:
                ret += GAMMA ** k * self.reward[s + k]
            if first_done is None and (self.terminal[s + k] or self.episode_end[s + k]):
                first_done = k
                if k < cut:
                    discount = 0.0
        obs = [self.stack(s + (k if first_done is None else min(k, first_done)), fill,
                          reset_on_terminal) for k in range(L)]
        return np.stack(obs), self.action[s:s + L], ret, discount


def rlpyt_tree_leaves(count, capacity, batch_T, n_step, n_frames, updates=None):
    """The leaves of rlpyt's priority tree (``rlpyt/replays/sum_tree.py`` ``SumTree.advance``
    at b32d589) after ``count`` appends of one step, one environment, no RNN state, default
    priority 1: as the authors' ``AsyncPrioritizedSequenceReplayFrameBuffer`` ran it.
    ``updates``: ``{appended: (slots, values)}``, leaves written after that many appends."""
    b = 1 + n_step + batch_T  # init_priority_tree: off_backward = 1 + n_step_return + batch_T
    f = max(1, n_frames - 1)  # n-step buffer: off_forward 1; frame buffer: n_frames - 1
    T, leaves, guard = capacity, np.zeros(capacity), True

    def ring(lo, hi):  # rlpyt's [lo, hi) over the ring: the wrapped case when hi <= lo
        return np.arange(lo, hi) if hi > lo else np.r_[np.arange(lo, T), np.arange(0, hi)]

    for i in range(count):
        t = i % T  # the cursor: the slot the step was written to
        on_lo, on_hi = (t - b) % T, (t - b) % T + 1
        off_lo, off_hi = (t + 1 - b) % T, (t + f) % T + 1
        if guard:  # first pass: no wrapping back, nothing below f turned on
            on_lo = max(f, t - b)
            on_hi = off_lo = max(on_lo, t + 1 - b)
            guard = t + 1 - b < f
        if on_hi != on_lo:
            leaves[ring(on_lo, on_hi)] = 1.0
        leaves[ring(off_lo, off_hi)] = 0.0
        if updates and i + 1 in updates:
            slots, values = updates[i + 1]
            leaves[slots] = values
    return leaves


def make_replay(capacity=60, **kwargs):
    return AtariReplay(capacity=capacity, frame_stack=F, seq_len=SEQ, n_step=N, gamma=GAMMA,
                       priority_exponent=0.5, frame_shape=SHAPE, **kwargs)


def test_batch_shapes_and_dtypes():
    replay = make_replay()
    Stream(40, seed=0).add_to(replay, 0, 40)
    batch = replay.sample(5, beta=0.4, rng=np.random.default_rng(0))
    assert isinstance(batch, AtariBatch)
    chex.assert_shape(batch.obs, (5, L, F, *SHAPE))
    chex.assert_shape(batch.actions, (5, L))
    chex.assert_shape([batch.returns, batch.discounts, batch.weights, batch.indices], (5,))
    assert batch.obs.dtype == np.uint8 and batch.actions.dtype == np.int32
    assert batch.indices.dtype == np.int64
    for x in (batch.returns, batch.discounts, batch.weights):
        assert x.dtype == np.float32
    assert len(replay) == 40


@pytest.mark.parametrize("fill,reset_on_terminal,rule,start_rule", [
    ("zero", False, "any_step", "rlpyt"), ("repeat", False, "any_step", "rlpyt"),
    ("zero", True, "first_step", "rlpyt"), ("repeat", False, "any_step", "written"),
    ("zero", True, "first_step", "written")])
def test_samples_match_slow_reference_while_wrapping(fill, reset_on_terminal, rule, start_rule):
    capacity, n = 60, 250
    stream = Stream(n, seed=1)
    replay = make_replay(capacity, stack_fill=fill, reset_stack_on_terminal=reset_on_terminal,
                         done_n_rule=rule, start_rule=start_rule)
    rng = np.random.default_rng(0)
    count = 0
    for stop in (20, 59, 60, 61, 97, 143, 200, 250):
        stream.add_to(replay, count, stop)
        count = stop
        batch = replay.sample(1500, beta=0.4, rng=rng)
        valid = stream.valid_starts(count, capacity, reset_on_terminal, start_rule)
        # every valid start is drawn and nothing else: nothing crosses the write head
        assert set(batch.indices.tolist()) == valid
        for i in range(0, 1500, 25):
            obs, actions, ret, discount = stream.window(batch.indices[i], fill, reset_on_terminal,
                                                        rule)
            np.testing.assert_array_equal(batch.obs[i], obs)
            np.testing.assert_array_equal(batch.actions[i], actions)
            np.testing.assert_allclose(batch.returns[i], ret, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(batch.discounts[i], discount, rtol=1e-6)


def test_rlpyt_transcription_is_the_closed_form_rule():
    """What the tree transcription says for MLR's setting (F=4, n_step=10, batch_T=16), as the
    module docstring states it: starts oldest + 3 .. count - 28."""
    for count, capacity in ((30, 100), (31, 100), (90, 100), (100, 100), (101, 100),
                            (131, 100), (257, 100)):
        oldest = max(0, count - capacity)
        on = np.flatnonzero(rlpyt_tree_leaves(count, capacity, 16, 10, 4))
        starts = np.sort(oldest + (on - oldest) % capacity)
        np.testing.assert_array_equal(starts, np.arange(oldest + 3, count - 28 + 1))


@pytest.mark.parametrize("frame_stack, seq_len, n_step, capacity", [
    (F, SEQ, N, 60), (4, 16, 10, 64), (1, 5, 2, 23), (2, 3, 1, 17)])
def test_starts_and_priorities_follow_rlpyts_tree(frame_stack, seq_len, n_step, capacity):
    """The replay's sum-tree leaves (0 = never drawn) equal rlpyt's, step by step before the
    ring fills and after it wraps, with priority updates of sampled starts in between, and
    a large sample draws exactly the starts rlpyt's tree has on."""
    n = 4 * capacity + 7
    stream = Stream(n, seed=11)
    replay = AtariReplay(capacity=capacity, frame_stack=frame_stack, seq_len=seq_len,
                         n_step=n_step, gamma=GAMMA, priority_exponent=0.5, frame_shape=SHAPE,
                         stack_fill="zero", reset_stack_on_terminal=True, initial_priority=1.0)
    rng = np.random.default_rng(12)
    updates = {}
    for count in range(1, n + 1):
        stream.add_to(replay, count - 1, count)
        if count % 13 == 0 and replay._tree.total > 0:  # an update, as after a train step
            batch = replay.sample(5, 0.4, rng)
            new = rng.uniform(0.1, 4.0, 5)
            replay.update_priorities(batch.indices, new)
            slots, first = np.unique(batch.indices % capacity, return_index=True)
            updates[count] = (slots, new[first] ** 0.5)
        expected = rlpyt_tree_leaves(count, capacity, seq_len, n_step, frame_stack, updates)
        np.testing.assert_allclose(replay._tree.leaves, expected, rtol=1e-12, err_msg=str(count))
        if count in (capacity - 1, capacity + 2, 2 * capacity + 5, n):
            drawn = replay.sample(4000, 0.4, rng).indices
            np.testing.assert_array_equal(np.unique(drawn % capacity), np.flatnonzero(expected))
    assert updates and n > 3 * capacity


@pytest.mark.parametrize("fill", ["zero", "repeat"])
def test_no_stacked_observation_mixes_games(fill):
    stream = Stream(300, seed=2, p_game=0.08)
    replay = make_replay(80, stack_fill=fill)
    stream.add_to(replay, 0, 300)
    obs = replay.sample(3000, beta=1.0, rng=np.random.default_rng(1)).obs.reshape(-1, F, *SHAPE)
    game = obs[..., 0, 0].astype(np.int64) - 1  # -1 marks a zero padding frame
    step = decode_step(obs)
    newest = step[:, -1]
    starts = np.flatnonzero(np.concatenate([[True], stream.episode_end[:-1]]))
    game_start = starts[np.searchsorted(starts, newest, side="right") - 1]
    wanted = newest[:, None] - np.arange(F - 1, -1, -1)  # steps the stack would hold
    inside = wanted >= game_start[:, None]
    assert (~inside).any()  # stacks at game starts were sampled
    real = game >= 0
    # frames of one game only, each the right step; positions before the game start are
    # zero frames or copies of the game's first frame
    assert np.all((game == game[:, -1:]) | ~real)
    if fill == "zero":
        np.testing.assert_array_equal(real, inside)
        assert np.all(obs[~real] == 0)
        np.testing.assert_array_equal(step[inside], wanted[inside])
    else:
        assert np.all(real)
        np.testing.assert_array_equal(step, np.maximum(wanted, game_start[:, None]))


def rlpyt_discount_return_n_step(reward, done, n_step, discount, return_dest, done_n_dest):
    """``rlpyt/algos/utils.py:discount_return_n_step`` at the commit the authors' code pins,
    as rlpyt's n-step buffer calls it on its numpy storage: ``done_n`` is rebound in the loop,
    so the destination keeps ``done[t]`` alone while the returns are cut at the first done."""
    rlen = reward.shape[0] - (n_step - 1)
    return_, done_n = return_dest, done_n_dest
    return_[:] = reward[:rlen]
    done_n[:] = done[:rlen]
    for n in range(1, n_step):
        return_ += (discount ** n) * reward[n:n + rlen] * (1 - done_n)
        done_n = np.maximum(done_n, done[n:n + rlen])
    return return_, done_n


def test_first_step_rule_reproduces_rlpyts_stored_done_n():
    """The authors' targets: return and bootstrap discount ``gamma^n (1 - done_n[t])`` as
    rlpyt's buffer stored them, for every start, including the ones 1..n-1 steps before a
    done, which still bootstrap."""
    n = 400
    stream = Stream(n, seed=5)
    replay = make_replay(n, done_n_rule="first_step")
    stream.add_to(replay, 0, n)
    done = stream.terminal | stream.episode_end
    returns = np.zeros(n - N + 1, np.float32)
    done_n = np.zeros(n - N + 1, bool)
    rlpyt_discount_return_n_step(stream.reward, done, N, GAMMA, returns, done_n)
    np.testing.assert_array_equal(done_n, done[:n - N + 1])  # what the buffer kept
    batch = replay.sample(4000, beta=0.4, rng=np.random.default_rng(3))
    s = batch.indices
    np.testing.assert_allclose(batch.returns, returns[s], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(batch.discounts, GAMMA ** N * (1 - done_n[s]), rtol=1e-6)
    later_done = np.array([done[i + 1:i + N].any() and not done[i] for i in s])
    assert later_done.sum() > 100 and np.all(batch.discounts[later_done] > 0)
    # the textbook cut gives those starts no bootstrap
    textbook = make_replay(n, done_n_rule="any_step")
    stream.add_to(textbook, 0, n)
    cut = textbook.sample(4000, beta=0.4, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(cut.indices, s)
    np.testing.assert_array_equal(cut.discounts[later_done], 0.0)
    np.testing.assert_array_equal(cut.returns, batch.returns)


def test_sanitize_repeats_the_terminal_step_observation():
    replay = make_replay(start_rule="written")
    reward = np.array([1, 0, 1, 1, 1, 1], np.float32)
    for t in range(L):  # exactly one valid start (0); life loss at step 2
        replay.add(encode(0, t), t + 10, reward[t], t == 2, False)
    batch = replay.sample(4, beta=0.5, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(batch.indices, 0)
    newest = decode_step(batch.obs[:, :, -1])
    np.testing.assert_array_equal(newest, np.broadcast_to([0, 1, 2, 2, 2, 2], (4, L)))
    np.testing.assert_array_equal(batch.obs[:, 3:], np.repeat(batch.obs[:, 2:3], L - 3, 1))
    np.testing.assert_array_equal(batch.actions[0], np.arange(L) + 10)  # actions as stored
    np.testing.assert_allclose(batch.returns, 1 + GAMMA ** 2)  # r_0 + r_1 + r_2, then cut
    np.testing.assert_array_equal(batch.discounts, 0.0)


def test_prioritized_frequencies_and_importance_weights():
    stream = Stream(150, seed=3)
    replay = make_replay(60)
    stream.add_to(replay, 0, 150)
    valid = np.array(sorted(stream.valid_starts(150, 60, False)))
    priorities = np.random.default_rng(4).uniform(0.1, 5.0, valid.size)
    replay.update_priorities(valid, priorities)
    rng = np.random.default_rng(5)
    draws = np.concatenate([replay.sample(2000, 0.4, rng).indices for _ in range(10)])
    counts = np.array([(draws == s).sum() for s in valid])
    assert counts.sum() == draws.size  # nothing outside the valid starts
    expected = priorities ** 0.5 / (priorities ** 0.5).sum() * draws.size
    assert stats.chisquare(counts, expected).pvalue > 1e-3

    batch = replay.sample(64, beta=0.7, rng=rng)
    p = dict(zip(valid.tolist(), priorities ** 0.5))
    w = np.array([(1.0 / (p[s] + 1e-5)) ** 0.7 for s in batch.indices])
    np.testing.assert_allclose(batch.weights, w / w.max(), rtol=1e-5)


def test_new_steps_get_the_max_priority_seen():
    stream = Stream(70, seed=6)
    replay = make_replay(60)
    stream.add_to(replay, 0, 30)
    np.testing.assert_allclose(replay.state_dict()["priority"][:30], 1.0)
    replay.update_priorities(np.array([3, 4]), np.array([9.0, 0.25]))
    stream.add_to(replay, 30, 70)  # wraps: slots of steps 60..69 are 0..9
    prio = replay.state_dict()["priority"]
    np.testing.assert_allclose(prio[30:60], 3.0)  # 9 ** 0.5
    np.testing.assert_allclose(prio[:10], 3.0)
    np.testing.assert_allclose(prio[10:30], 1.0)


def test_a_start_drawn_twice_keeps_its_first_new_priority():
    """rlpyt's SumTree.update_batch_priorities drops repeated draws with
    np.unique(return_index=True): the first occurrence's priority is written."""
    replay = make_replay(60, initial_priority=1.0)
    Stream(40, seed=6).add_to(replay, 0, 30)
    replay.update_priorities(np.array([5, 7, 5, 7, 9]), np.array([4.0, 9.0, 16.0, 25.0, 36.0]))
    np.testing.assert_allclose(replay.state_dict()["priority"][[5, 7, 9]], [2.0, 3.0, 6.0])


def test_fixed_initial_priority():
    replay = make_replay(60, initial_priority=1.0)
    stream = Stream(40, seed=6)
    stream.add_to(replay, 0, 20)
    replay.update_priorities(np.array([3]), np.array([16.0]))
    stream.add_to(replay, 20, 40)
    prio = replay.state_dict()["priority"]
    np.testing.assert_allclose(prio[[3, 20, 39]], [4.0, 1.0, 1.0])


def test_update_of_overwritten_start_is_ignored():
    stream = Stream(200, seed=7)
    replay = make_replay(60)
    stream.add_to(replay, 0, 40)
    old = replay.sample(8, 0.4, np.random.default_rng(0)).indices
    stream.add_to(replay, 40, 200)
    before = replay.state_dict()["priority"].copy()
    replay.update_priorities(old, np.full(8, 100.0))
    np.testing.assert_array_equal(replay.state_dict()["priority"], before)
    assert replay.sample(500, 0.4, np.random.default_rng(1)).indices.min() >= 140


def test_mark_episode_end_cuts_returns_and_stacks():
    replay = make_replay(stack_fill="zero")
    for t in range(4):
        replay.add(encode(0, t), 1, 1.0, False, False)
    replay.mark_episode_end()  # e.g. a resume restarts the environment after step 3
    for t in range(4, 4 + 2 + N + SEQ):  # rlpyt's rule: starts 3 and 4 can be drawn
        replay.add(encode(1, t), 1, 1.0, False, False)
    batch = replay.sample(300, 0.4, np.random.default_rng(0))
    at = {int(s): i for i, s in enumerate(batch.indices)}
    assert 3 in at and 4 in at
    np.testing.assert_allclose(batch.returns[at[3]], 1.0)  # only r_3: the game ended there
    assert batch.discounts[at[3]] == 0.0
    np.testing.assert_array_equal(decode_step(batch.obs[at[3], 1:, -1]), 3)  # sanitized
    first = batch.obs[at[4], 0]
    np.testing.assert_array_equal(first[:-1], 0)  # step 4 starts a new stack
    np.testing.assert_array_equal(first[-1], encode(1, 4))


def test_clear_errors():
    replay = make_replay(start_rule="written")
    Stream(L - 1, seed=8).add_to(replay, 0, L - 1)
    with pytest.raises(ValueError, match=f"{L - 1} steps stored.*needs {L}"):
        replay.sample(2, 0.4, np.random.default_rng(0))
    first = F - 1 + 2 + N + SEQ  # rlpyt: start 3 once it and 1 + N + SEQ steps are written
    replay = make_replay()
    Stream(first, seed=8).add_to(replay, 0, first - 1)
    with pytest.raises(ValueError, match=f"{first - 1} steps stored.*needs {first}.*rlpyt"):
        replay.sample(2, 0.4, np.random.default_rng(0))
    Stream(first, seed=8).add_to(replay, first - 1, first)
    np.testing.assert_array_equal(replay.sample(3, 0.4, np.random.default_rng(0)).indices, F - 1)
    with pytest.raises(ValueError, match="start_rule"):
        make_replay(start_rule="any")
    with pytest.raises(ValueError, match="capacity=13 cannot hold one window"):
        make_replay(first - 1)
    make_replay(first)
    with pytest.raises(ValueError, match="frame shape"):
        replay.add(np.zeros((F, *SHAPE), np.uint8), 0, 0.0, False, False)
    with pytest.raises(ValueError, match="finite"):
        replay.update_priorities(np.array([0]), np.array([np.nan]))


def test_state_dict_round_trip():
    stream = Stream(140, seed=9)
    replay = make_replay(60)
    stream.add_to(replay, 0, 130)
    replay.update_priorities(np.arange(80, 100), np.linspace(0.1, 4.0, 20))
    state = copy.deepcopy(replay.state_dict())
    restored = make_replay(60)
    restored.load_state_dict(state)
    a = replay.sample(50, 0.5, np.random.default_rng(3))
    b = restored.sample(50, 0.5, np.random.default_rng(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    stream.add_to(replay, 130, 140)  # both keep going identically after the restore
    stream.add_to(restored, 130, 140)
    for x, y in zip(replay.sample(50, 0.5, np.random.default_rng(4)),
                    restored.sample(50, 0.5, np.random.default_rng(4))):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="shape"):
        make_replay(70).load_state_dict(state)


def test_state_survives_an_orbax_round_trip(tmp_path):
    stream = Stream(90, seed=10)
    replay = make_replay(60)
    stream.add_to(replay, 0, 90)
    replay.update_priorities(np.arange(40, 50), np.linspace(0.5, 3.0, 10))
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(tmp_path / "replay", replay.state_dict())
    with ocp.StandardCheckpointer() as ckpt:
        state = ckpt.restore(tmp_path / "replay")
    restored = make_replay(60)
    restored.load_state_dict(state)
    for x, y in zip(replay.sample(40, 0.5, np.random.default_rng(6)),
                    restored.sample(40, 0.5, np.random.default_rng(6))):
        np.testing.assert_array_equal(x, y)


def test_a_deferred_tree_draws_what_an_eager_one_draws():
    """``eager_tree=False`` (the host copy of a device-sampled replay) skips the tree's work
    at every add and rebuilds it on the next draw: the same batches for the same draws,
    through a wrap, priority writes, a game cut, a priority load and a restore."""
    stream = Stream(200, seed=11)
    eager, deferred = make_replay(60), make_replay(60, eager_tree=False)

    def same_draws(seed):
        for x, y in zip(eager.sample(40, 0.5, np.random.default_rng(seed)),
                        deferred.sample(40, 0.5, np.random.default_rng(seed))):
            np.testing.assert_array_equal(x, y)

    for r in (eager, deferred):
        stream.add_to(r, 0, 130)
        r.update_priorities(np.arange(90, 110), np.linspace(0.1, 4.0, 20))
        r.mark_episode_end()
    same_draws(0)
    for r in (eager, deferred):
        stream.add_to(r, 130, 170)
        r.load_priorities(np.linspace(0.2, 2.0, 60))
    same_draws(1)
    state = copy.deepcopy(eager.state_dict())
    deferred = make_replay(60, eager_tree=False)
    deferred.load_state_dict(state)
    for r in (eager, deferred):
        stream.add_to(r, 170, 200)
    same_draws(2)
    np.testing.assert_array_equal(deferred.priorities, eager.priorities)
