"""Replay frames on the devices: the same batches as the host replay, on every device.

The tests run with two CPU devices (tests/conftest.py): a group of one seed splits its batch
over both, so every table here has a copy on each.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.config import ConfigError, make_config
from mlr_jax import device_frames
from mlr_jax.replay.atari import AtariReplay
from mlr_jax.replay.dmc import DMCReplay
from mlr_jax.replay.frames import FrameRows
import one_run


def on_devices():
    """The mirror factory of a run alone on every device."""
    return device_frames.FrameTables(parallel.layout()).mirror(0)


def fill(replays, steps, frame_shape, action):
    """The same random frames and flags into every replay: lives end every 37 steps,
    games every 50, so stacks and windows meet both kinds of boundary."""
    rng = np.random.default_rng(1)
    for t in range(steps):
        frame = rng.integers(0, 256, frame_shape, dtype=np.uint8)
        for replay in replays:
            replay.add(frame, action(t), float(t % 3), t % 37 == 36, t % 50 == 49)


def host_pixels(replay, batch):
    """The batch with its FrameRows gathered from the first device's table."""
    table = np.asarray(replay.device_frames.table)[0]
    return jax.tree.map(np.asarray, device_frames.gather_batch(table, batch))


@pytest.mark.parametrize("stack_fill, reset_on_terminal", [("repeat", False), ("zero", True)])
def test_atari_batches_equal_host_batches(stack_fill, reset_on_terminal):
    kwargs = dict(capacity=100, frame_stack=4, seq_len=5, n_step=3, frame_shape=(8, 8),
                  stack_fill=stack_fill, reset_stack_on_terminal=reset_on_terminal)
    host, device = AtariReplay(**kwargs), AtariReplay(**kwargs, mirror=on_devices())
    assert host.device_frames is None
    fill([host, device], 230, (8, 8), lambda t: t % 3)  # wraps the ring twice
    expected = host.sample(16, 0.4, np.random.default_rng(0))
    batch = device.sample(16, 0.4, np.random.default_rng(0))
    assert isinstance(batch.obs, FrameRows)
    chex.assert_shape(batch.obs.rows, (16, 5, 4))
    chex.assert_type(batch.obs.rows, np.int32)
    chex.assert_trees_all_equal(host_pixels(device, batch), expected)
    if stack_fill == "zero":  # some stacks reach before a life start: the zero row
        assert (batch.obs.rows == 100).any()


@pytest.mark.parametrize("method", ["sample", "sample_sequences"])
def test_dmc_batches_equal_host_batches(method):
    kwargs = dict(capacity=60, action_dim=2, frame_stack=3, seq_len=4, frame_shape=(3, 6, 6))
    host, device = DMCReplay(**kwargs), DMCReplay(**kwargs, mirror=on_devices())
    fill([host, device], 150, (3, 6, 6), lambda t: np.full(2, t % 5, np.float32))
    expected = getattr(host, method)(32, np.random.default_rng(0))
    batch = getattr(device, method)(32, np.random.default_rng(0))
    chex.assert_shape(batch.obs.rows, (32, 3) if method == "sample" else (32, 4, 3))
    chex.assert_trees_all_equal(host_pixels(device, batch), expected)


@pytest.mark.parametrize("block_rows", [None, 4])
def test_table_copies_follow_writes_and_restore(block_rows, monkeypatch):
    """A restore writes the table in place: with blocks of 4 rows (21 rows: 6 blocks, the
    last one starting at row 17) nothing larger than a block crosses to the devices."""
    sent = []
    if block_rows:
        monkeypatch.setattr(device_frames, "LOAD_BYTES", block_rows * 3 * 4 * 4)
        writer = parallel.Layout.seed_writer

        def recording(self):
            write = writer(self)
            return lambda table, seed, rows, start: (sent.append(rows.shape[0]),
                                                     write(table, seed, rows, start))[1]
        monkeypatch.setattr(parallel.Layout, "seed_writer", recording)
    kwargs = dict(capacity=20, action_dim=1, frame_stack=3, seq_len=4, frame_shape=(3, 4, 4))
    replay = DMCReplay(**kwargs, mirror=on_devices())
    fill([replay], 47, (3, 4, 4), lambda t: np.zeros(1, np.float32))
    table = replay.device_frames.table
    chex.assert_shape(table, (1, 21, 3, 4, 4))  # one seed, capacity + the zero row
    copies = [np.asarray(shard.data) for shard in table.addressable_shards]
    assert len(copies) == 2  # one on each device
    np.testing.assert_array_equal(copies[0], copies[1])
    host = np.asarray(table)
    np.testing.assert_array_equal(host[0, :20], replay.state_dict()["ring"]["frames"])
    assert not host[:, 20].any()

    restored = DMCReplay(**kwargs, mirror=on_devices())
    sent.clear()
    restored.load_state_dict(replay.state_dict())
    chex.assert_trees_all_equal(np.asarray(restored.device_frames.table), host)
    if block_rows:
        assert sent == [4] * 6
    with pytest.raises(ValueError, match=r"frame table of shape \(5, 3, 4, 4\)"):
        restored.device_frames.load(np.zeros((5, 3, 4, 4), np.uint8))


def test_stack_pixels_shapes():
    table = jnp.arange(5 * 3 * 2 * 2, dtype=jnp.uint8).reshape(5, 3, 2, 2)
    rows = jnp.array([[[0, 1], [4, 4]]], jnp.int32)  # [1, 2, F=2]
    pixels = device_frames.stack_pixels(table, rows)
    chex.assert_shape(pixels, (1, 2, 6, 2, 2))
    np.testing.assert_array_equal(pixels[0, 1], jnp.concatenate([table[4], table[4]]))
    with pytest.raises(AssertionError):
        device_frames.stack_pixels(table, rows.astype(jnp.float32))


def summarize_step(state, batch, key, axis_name=None):
    """A train step whose outputs depend on every pixel of the batch and on the split."""
    del key
    obs = batch["obs"].astype(jnp.float32)
    per_sample = obs.reshape(obs.shape[0], -1) @ jnp.arange(obs[0].size, dtype=jnp.float32)
    total = parallel.pmean(jnp.sum(per_sample), axis_name)
    return state + total, {"per_sample": per_sample + batch["extra"], "total": total}


@pytest.mark.parametrize("num_seeds", [1, 2])
def test_parallel_train_step_reads_the_current_table(num_seeds):
    """The loop's step reads each seed's current table; a seed's results equal a pixel batch's
    alone on as many devices (one seed: its batch split over 2 devices; two: a device each;
    ``summarize_step``'s total depends on the split)."""
    layout = parallel.layout(num_seeds)
    tables = device_frames.FrameTables(layout)
    replays = [AtariReplay(capacity=64, frame_stack=4, seq_len=2, n_step=1, frame_shape=(6, 6),
                           mirror=tables.mirror(i)) for i in range(num_seeds)]
    step = device_frames.parallel_train_step(layout, summarize_step, 0, tables)
    alone = one_run.data_parallel(summarize_step, num_devices=layout.data_shards, axes=0)
    keys = np.stack([np.asarray(jax.random.PRNGKey(i)) for i in range(num_seeds)])
    extra = np.arange(8, dtype=np.float32)
    for start, steps in ((30, 40), (35, 3)):  # frames written after the step was built count
        for i, replay in enumerate(replays):
            fill([replay], steps + 7 * i, (6, 6), lambda t: 0)
        index = np.arange(start, start + 8)
        rows = [FrameRows(r.ring.stack_rows(index).astype(np.int32)) for r in replays]
        state, metrics = step(layout.put(np.zeros(num_seeds, np.float32), 0),
                              {"obs": FrameRows(np.stack([r.rows for r in rows])),
                               "extra": np.stack([extra] * num_seeds)}, keys)
        chex.assert_shape(metrics["per_sample"], (num_seeds, 8))
        for i, replay in enumerate(replays):
            expected = alone(jnp.zeros(()), {"obs": replay.ring.stacks(index), "extra": extra},
                             keys[i])
            chex.assert_trees_all_close((np.asarray(state)[i], jax.tree.map(lambda x: x[i], metrics)),
                                        expected)


def test_replay_frames_setting():
    assert parallel.replay_frames("auto") == "host"  # the CPU backend
    assert parallel.replay_frames("device") == "device"
    cfg = make_config("atari", "pong", "smoke", ["run.replay_frames=device"])
    assert cfg.run.replay_frames == "device"
    with pytest.raises(ConfigError, match="run.replay_frames must be one of auto, host, device; got 'gpu'"):
        make_config("atari", "pong", "smoke", ["run.replay_frames=gpu"])
