"""The device sampler (mlr_jax.replay.device_sampler) against the host replays, its numpy
reference: the same batches for the same uniform draws, the same validity (every slot's
leaf), the same priority writes, and the distribution of many draws (a statistical test)."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from mlr_jax.replay import AtariReplay
from mlr_jax.replay import device_sampler as ds
from mlr_jax.replay.dmc import DMCReplay


class Draws:
    """A generator stand-in whose ``random(n)`` returns given uniforms (the host replays draw
    ``rng.random(n) * total`` and descend their sum tree with it)."""

    def __init__(self, u):
        self.u = np.asarray(u, np.float64)

    def random(self, n):
        assert n == len(self.u)
        return self.u


def fill_atari(replay, steps, seed):
    rng = np.random.default_rng(seed)
    for t in range(steps):
        game_over = rng.random() < 0.03
        life = rng.random() < 0.06
        time_limit = game_over and rng.random() < 0.3
        replay.add(rng.integers(0, 256, (6, 6), dtype=np.uint8), int(rng.integers(0, 5)),
                   float(rng.integers(-1, 2)), (life or game_over) and not time_limit, game_over)


def on_device(replay):
    return jax.tree.map(jnp.asarray, ds.host_arrays(replay))


def uniforms(batch, seed):
    # float32 values, so host (float64) and device (float32) see the same numbers
    return np.random.default_rng(seed).random(batch).astype(np.float32)


ATARI_CASES = [dict(start_rule="rlpyt", stack_fill="zero", reset_stack_on_terminal=True),
               dict(start_rule="written", stack_fill="repeat", reset_stack_on_terminal=False,
                    done_n_rule="any_step")]


@pytest.mark.parametrize("kwargs", ATARI_CASES)
@pytest.mark.parametrize("steps", [70, 260])  # before the ring of 100 fills, after it wraps twice
def test_atari_batches_equal_the_host_replays(kwargs, steps):
    replay = AtariReplay(100, frame_stack=4, seq_len=6, n_step=3, gamma=0.9, frame_shape=(6, 6),
                         initial_priority=1.0, mirror=None, **kwargs)
    fill_atari(replay, steps, seed=steps)
    # some priorities updated (duplicates and all), as after updates
    first = replay.sample(32, 0.4, np.random.default_rng(1))
    replay.update_priorities(first.indices, np.random.default_rng(2).random(32) * 3)
    spec, arrays = ds.atari_spec(replay), on_device(replay)
    np.testing.assert_allclose(ds.atari_leaves(arrays, spec), replay._tree.leaves, rtol=1e-6)
    u = uniforms(64, seed=3)
    expected = replay.sample(64, 0.6, Draws(u))
    got = jax.jit(ds.sample_atari, static_argnums=1)(arrays, spec, jnp.asarray(u), 0.6)
    np.testing.assert_array_equal(got.indices, expected.indices)
    rows = np.asarray(got.obs.rows)
    stacks = replay.ring.frames[rows].reshape(expected.obs.shape)
    np.testing.assert_array_equal(stacks, expected.obs)  # the same pixels from the same table rows
    for field in ("actions", "first_done"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    for field in ("returns", "discounts", "weights"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-5,
                                   atol=1e-6, err_msg=field)
    chex.assert_type([got.indices, got.first_done, got.obs.rows], jnp.int32)


def test_priority_writes_equal_the_host_replays():
    """Duplicates keep their first priority; starts overwritten since they were drawn are
    left alone; the leaves afterwards equal the host tree's."""
    replay = AtariReplay(60, frame_stack=4, seq_len=6, n_step=3, frame_shape=(6, 6),
                         initial_priority=1.0)
    fill_atari(replay, 100, seed=5)
    spec = ds.atari_spec(replay)
    indices = np.array([50, 61, 50, 99, 61, 20, 95], np.int64)  # 20: overwritten (oldest is 40)
    priorities = np.array([0.5, 2.0, 7.0, 1.5, 9.0, 4.0, 0.25])
    arrays = ds.write_priorities(on_device(replay), spec, jnp.asarray(indices, jnp.int32),
                                 jnp.asarray(priorities, jnp.float32))
    replay.update_priorities(indices, priorities)
    np.testing.assert_allclose(arrays.priority, replay.priorities, rtol=1e-6)
    np.testing.assert_allclose(ds.atari_leaves(arrays, spec), replay._tree.leaves, rtol=1e-6)
    assert np.isclose(arrays.priority[50 % 60], 0.5 ** 0.5) and np.isclose(arrays.priority[61 % 60], 2.0 ** 0.5)


def fill_dmc(replay, steps, seed):
    rng = np.random.default_rng(seed)
    for t in range(steps):
        end = rng.random() < 0.05
        replay.add(rng.integers(0, 256, (3, 5, 5), dtype=np.uint8),
                   rng.uniform(-1, 1, 2).astype(np.float32), float(rng.random()),
                   bool(rng.random() < 0.01), end)


@pytest.mark.parametrize("sequence_rule", ["authors", "episode"])
@pytest.mark.parametrize("steps", [90, 330])
def test_dmc_batches_equal_the_host_replays(sequence_rule, steps):
    replay = DMCReplay(150, action_dim=2, frame_stack=3, seq_len=5, frame_shape=(3, 5, 5),
                       sequence_rule=sequence_rule)
    fill_dmc(replay, steps, seed=steps)
    replay.mark_episode_end()
    spec, arrays = ds.dmc_spec(replay), on_device(replay)
    np.testing.assert_array_equal(ds.transition_leaves(arrays, spec), replay._transitions.leaves)
    np.testing.assert_array_equal(ds.sequence_leaves(arrays, spec), replay._sequences.leaves)
    u = uniforms(48, seed=7)
    frames = replay.ring.frames
    expected = replay.sample(48, Draws(u))
    got = jax.jit(ds.sample_transitions, static_argnums=1)(arrays, spec, jnp.asarray(u))
    for field in ("obs", "next_obs"):
        pixels = frames[np.asarray(getattr(got, field).rows)].reshape(getattr(expected, field).shape)
        np.testing.assert_array_equal(pixels, getattr(expected, field), err_msg=field)
    for field in ("action", "reward", "discount"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field), err_msg=field)
    expected = replay.sample_sequences(48, Draws(u))
    got = jax.jit(ds.sample_sequences, static_argnums=1)(arrays, spec, jnp.asarray(u))
    np.testing.assert_array_equal(frames[np.asarray(got.obs.rows)].reshape(expected.obs.shape),
                                  expected.obs)
    np.testing.assert_array_equal(got.action, expected.action)


def test_draws_follow_the_leaves():
    """200,000 draws from jax.random uniforms: each start's frequency is its leaf's share
    (chi-square test, p > 1e-3), and starts with a zero leaf are never drawn."""
    replay = AtariReplay(80, frame_stack=4, seq_len=6, n_step=3, frame_shape=(6, 6),
                         initial_priority=1.0)
    fill_atari(replay, 150, seed=9)
    first = replay.sample(32, 0.4, np.random.default_rng(1))
    replay.update_priorities(first.indices, np.random.default_rng(2).random(32) * 5)
    spec, arrays = ds.atari_spec(replay), on_device(replay)
    u = jax.random.uniform(jax.random.key(0), (200_000,))
    draw = jax.jit(functools.partial(ds.sample_atari, spec=spec, beta=0.4))
    indices = np.asarray(draw(arrays, u=u).indices)
    leaves = replay._tree.leaves
    slots = indices % 80
    counts = np.bincount(slots, minlength=80)
    assert not counts[leaves == 0].any()
    positive = leaves > 0
    expected = leaves[positive] / leaves.sum() * len(indices)
    assert stats.chisquare(counts[positive], expected).pvalue > 1e-3
