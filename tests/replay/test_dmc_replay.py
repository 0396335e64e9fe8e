"""DMCReplay against slow references.

Frames are 3x8x8 and encode (episode + 1, step) in channel 0: [0,0,0] = episode + 1,
[0,0,1], [0,0,2] = step % 256, step // 256. Actions are (step, episode).
"""
import copy

import chex
import numpy as np
import pytest

from mlr_jax.replay import DMCReplay, SACBatch, SeqBatch

SHAPE = (3, 8, 8)
F, K, A = 3, 5, 2


def encode(episode, step):
    frame = np.full(SHAPE, (5 * step) % 251 + 1, dtype=np.uint8)
    frame[0, 0, 0], frame[0, 0, 1], frame[0, 0, 2] = episode + 1, step % 256, step // 256
    return frame


def newest_step(obs):
    """Step encoded in the newest frame of stacked obs uint8[..., 3F, H, W]."""
    newest = obs[..., -3, 0, :3].astype(np.int64)
    return newest[..., 1] + 256 * newest[..., 2]


class Stream:
    """Episodes of random length (some shorter than K) ending by time limit, a few by a
    true terminal; with slow references for stacks and valid starts."""

    def __init__(self, n, seed):
        rng = np.random.default_rng(seed)
        self.episode_end = np.zeros(n, bool)
        t = -1
        while True:
            t += int(rng.integers(2, 14))
            if t >= n:
                break
            self.episode_end[t] = True
        self.terminal = self.episode_end & (rng.random(n) < 0.25)
        self.episode = np.concatenate([[0], np.cumsum(self.episode_end)[:-1]])
        self.reward = (np.arange(n) * 0.5).astype(np.float32)
        self.action = np.stack([np.arange(n), self.episode], 1).astype(np.float32)

    def add_to(self, replay, lo, hi):
        for t in range(lo, hi):
            replay.add(encode(self.episode[t], t), self.action[t], self.reward[t],
                       self.terminal[t], self.episode_end[t])

    def first(self, t):
        while t > 0 and not self.episode_end[t - 1]:
            t -= 1
        return t

    def stack(self, t):
        start = self.first(t)
        return np.concatenate([encode(self.episode[t], max(t - back, start))
                               for back in range(F - 1, -1, -1)])

    def history_ok(self, s, lo):
        return s - min(F - 1, s - self.first(s)) >= lo

    def valid_transitions(self, count, capacity):
        lo = max(0, count - capacity)
        return {t for t in range(lo, count) if self.history_ok(t, lo) and (
            self.terminal[t] or (t + 1 < count and not self.episode_end[t]))}

    def valid_sequences(self, count, capacity, rule="authors"):
        lo = max(0, count - capacity)
        starts = {s for s in range(lo, count - K + 1) if self.history_ok(s, lo)
                  and not self.episode_end[s:s + K - 1].any()}
        if rule == "authors":  # nor the episode's last step; slot < stored - K
            starts = {s for s in starts if not self.episode_end[s + K - 1]
                      and s % capacity < min(count, capacity) - K}
        return starts


def authors_windows(episode_end, count, capacity):
    """Independent transcription of the official ``ReplayBuffer.sample_spr`` (MLR,
    DMControl/src/utils.py): the windows (steps held in slots ``p .. p + K - 1``) it can
    return after steps ``0 .. count - 1`` were added, step ``t`` written to slot
    ``t % capacity``. ``real_dones`` is True on an episode's last (time-limit) step."""
    held = np.full(capacity, -1)
    steps = np.arange(max(0, count - capacity), count)
    held[steps % capacity] = steps
    real_dones = np.asarray(episode_end)[held] & (held >= 0)
    n = capacity if count >= capacity else count  # `self.capacity if self.full else self.idx`
    high = n - (K - 1) - 1  # np.random.randint(0, high): p in [0, high)
    return {tuple(held[p:p + K]) for p in range(high) if not real_dones[p:p + K].any()}


def make_replay(capacity=50, **kwargs):
    return DMCReplay(capacity=capacity, action_dim=A, frame_stack=F, seq_len=K, frame_shape=SHAPE,
                     **kwargs)


def test_batch_shapes_and_dtypes():
    replay = make_replay()
    Stream(40, seed=0).add_to(replay, 0, 40)
    rng = np.random.default_rng(0)
    batch = replay.sample(6, rng)
    assert isinstance(batch, SACBatch)
    chex.assert_shape([batch.obs, batch.next_obs], (6, 3 * F, *SHAPE[1:]))
    chex.assert_shape(batch.action, (6, A))
    chex.assert_shape([batch.reward, batch.discount], (6,))
    seq = replay.sample_sequences(7, rng)
    assert isinstance(seq, SeqBatch)
    chex.assert_shape(seq.obs, (7, K, 3 * F, *SHAPE[1:]))
    chex.assert_shape(seq.action, (7, K, A))
    assert batch.obs.dtype == seq.obs.dtype == np.uint8
    for x in (batch.action, batch.reward, batch.discount, seq.action):
        assert x.dtype == np.float32
    assert len(replay) == 40


def test_transitions_match_reference_while_wrapping():
    capacity, stream = 50, Stream(230, seed=1)
    replay, rng, count = make_replay(capacity), np.random.default_rng(0), 0
    for stop in (3, 30, 50, 51, 88, 170, 230):
        stream.add_to(replay, count, stop)
        count = stop
        batch = replay.sample(1000, rng)
        assert batch.obs.shape[0] == 1000  # always the full batch
        t = newest_step(batch.obs)
        assert set(t.tolist()) == stream.valid_transitions(count, capacity)
        for i in range(0, 1000, 20):
            s = t[i]
            successor = s if stream.episode_end[s] else s + 1
            np.testing.assert_array_equal(batch.obs[i], stream.stack(s))
            np.testing.assert_array_equal(batch.next_obs[i], stream.stack(successor))
            np.testing.assert_array_equal(batch.action[i], stream.action[s])
            assert batch.reward[i] == stream.reward[s]
            assert batch.discount[i] == (0.0 if stream.terminal[s] else 1.0)
    assert (batch.discount == 0).any() and (batch.discount == 1).any()


@pytest.mark.parametrize("rule", ["authors", "episode"])
def test_sequences_stay_in_one_episode_and_behind_the_write_head(rule):
    capacity, stream = 50, Stream(230, seed=2)
    replay = make_replay(capacity, sequence_rule=rule)
    rng, count = np.random.default_rng(1), 0
    for stop in (25, 50, 51, 97, 160, 230):
        stream.add_to(replay, count, stop)
        count = stop
        seq = replay.sample_sequences(800, rng)
        assert seq.obs.shape[:2] == (800, K)  # always the full batch
        steps = newest_step(seq.obs)
        np.testing.assert_array_equal(steps, steps[:, :1] + np.arange(K))
        assert set(steps[:, 0].tolist()) == stream.valid_sequences(count, capacity, rule)
        assert np.all(seq.obs[:, :, 0, 0, 0] == seq.obs[:, :1, 0, 0, 0])  # one episode
        np.testing.assert_array_equal(seq.action, stream.action[steps])
        for i in range(0, 800, 40):
            np.testing.assert_array_equal(seq.obs[i], np.stack([stream.stack(s) for s in steps[i]]))


def test_stack_at_episode_start_repeats_the_first_frame():
    replay = make_replay()
    for t in range(12):  # episode 0: steps 0-3, episode 1: steps 4-11
        replay.add(encode(int(t >= 4), t), np.zeros(A), 0.0, False, t == 3)
    seq = replay.sample_sequences(200, np.random.default_rng(2))
    starts = newest_step(seq.obs[:, 0])
    # episode 0 is shorter than K; 7 (window 7-11) would reach the newest step, 11
    assert set(starts.tolist()) == {4, 5, 6}
    obs = seq.obs[starts == 4][0]
    frame = encode(1, 4)
    np.testing.assert_array_equal(obs[0], np.concatenate([frame, frame, frame]))
    np.testing.assert_array_equal(obs[1], np.concatenate([frame, frame, encode(1, 5)]))
    np.testing.assert_array_equal(obs[2], np.concatenate([frame, encode(1, 5), encode(1, 6)]))


def test_mark_episode_end_stops_transitions_and_sequences():
    replay = make_replay()
    for t in range(12):
        if t == 6:
            replay.mark_episode_end()  # e.g. a resume restarts the environment after step 5
        replay.add(encode(int(t >= 6), t), np.full(A, t), 0.0, False, False)
    rng = np.random.default_rng(3)
    t = newest_step(replay.sample(500, rng).obs)
    assert set(t.tolist()) == set(range(11)) - {5}  # 5 has no successor; 11 not yet
    steps = newest_step(replay.sample_sequences(500, rng).obs)
    assert set(steps[:, 0].tolist()) == {0, 6}  # not 1 (reaches 5, the end), 7 (the newest)
    first = replay.sample_sequences(500, rng).obs
    first = first[newest_step(first[:, 0]) == 6][0, 0]
    np.testing.assert_array_equal(first, np.concatenate([encode(1, 6)] * F))


def test_clear_errors():
    replay = make_replay()
    with pytest.raises(ValueError, match="0 steps stored"):
        replay.sample(4, np.random.default_rng(0))
    for t in range(K - 1):
        replay.add(encode(0, t), np.zeros(A), 0.0, False, False)
    replay.sample(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match=f"{K - 1} steps stored.*{K} consecutive"):
        replay.sample_sequences(4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="action shape"):
        replay.add(encode(0, 9), np.zeros(A + 1), 0.0, False, False)


def test_state_dict_round_trip():
    stream = Stream(140, seed=3)
    replay = make_replay()
    stream.add_to(replay, 0, 120)
    restored = make_replay()
    restored.load_state_dict(copy.deepcopy(replay.state_dict()))
    for r in (replay, restored):
        stream.add_to(r, 120, 140)
    for name in ("sample", "sample_sequences"):
        a = getattr(replay, name)(64, np.random.default_rng(5))
        b = getattr(restored, name)(64, np.random.default_rng(5))
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_sequence_starts_match_the_authors_sample_spr():
    """The windows ``sample_sequences`` draws are those of the official ``sample_spr``
    (:func:`authors_windows`) before and after the buffer is full, except, once full, the
    windows that run from the newest step on into the oldest slot and the starts among the
    oldest ``F - 1`` steps whose stacks reach overwritten frames."""
    capacity, stream = 50, Stream(260, seed=4)
    stream.terminal[:] = False  # DMC ends episodes by time limit only
    replay, rng, count = make_replay(capacity), np.random.default_rng(7), 0
    reached_end, exact = False, 0
    for stop in (6, 23, 41, 49, 50, 51, 77, 99, 100, 133, 181, 260):
        stream.add_to(replay, count, stop)
        count = stop
        steps = newest_step(replay.sample_sequences(3000, rng).obs)
        drawn = {tuple(w) for w in steps.tolist()}
        theirs = authors_windows(stream.episode_end, count, capacity)
        assert drawn <= theirs
        lo = max(0, count - capacity)
        for w in theirs - drawn:  # only what a frame-once ring cannot rebuild
            runs_on = np.any(np.diff(w) != 1)  # newest step, then the oldest slot's step
            lost = w[0] < lo + F - 1 and not stream.history_ok(w[0], lo)
            assert count > capacity and (runs_on or lost), (count, w)
        if count < capacity:
            assert drawn == theirs
            assert max(w[-1] for w in drawn) <= count - 2  # never the newest step
        for w in drawn:  # never an episode's last step, never across an episode end
            assert not stream.episode_end[list(w)].any()
        reached_end |= any(stream.episode_end[w[-1] + 1] for w in drawn)
        exact += drawn == theirs
    assert reached_end  # windows go right up to the step before an episode's last
    assert exact >= 5


def test_sequences_after_mark_episode_end_without_a_new_step():
    """Once the buffer is full, windows may end at the newest step, until it is marked the
    episode's last: then none may, before any further step is added."""
    replay = make_replay(capacity=20)
    for t in range(33):  # one long episode; slot of step 32 is 12 < 20 - K
        replay.add(encode(0, t), np.zeros(A), 0.0, False, False)
    rng = np.random.default_rng(8)
    last = newest_step(replay.sample_sequences(2000, rng).obs[:, -1])
    assert last.max() == 32
    replay.mark_episode_end()
    last = newest_step(replay.sample_sequences(2000, rng).obs[:, -1])
    assert last.max() == 31


def test_sequence_rule_is_checked():
    with pytest.raises(ValueError, match="sequence_rule"):
        make_replay(sequence_rule="official")


def test_deferred_trees_draw_what_eager_ones_draw():
    """``eager_tree=False`` (the host copy of a device-sampled replay) skips the trees' work
    at every add and rebuilds them on the next draw: the same transitions and sequences for
    the same draws, through a wrap, an episode cut and a restore."""
    stream = Stream(160, seed=4)
    eager, deferred = make_replay(), make_replay(eager_tree=False)

    def same_draws(seed):
        for name in ("sample", "sample_sequences"):
            a = getattr(eager, name)(64, np.random.default_rng(seed))
            b = getattr(deferred, name)(64, np.random.default_rng(seed))
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)

    for r in (eager, deferred):
        stream.add_to(r, 0, 100)
        r.mark_episode_end()
    same_draws(0)
    deferred = make_replay(eager_tree=False)
    deferred.load_state_dict(copy.deepcopy(eager.state_dict()))
    for r in (eager, deferred):
        stream.add_to(r, 100, 160)
    same_draws(1)
