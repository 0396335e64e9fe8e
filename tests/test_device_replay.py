"""DeviceReplay.write_newest: the device copy of a group's replays stays equal to the host
replays it copies, step by step (one packed copy a step), through wraps and episode ends."""
import jax
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.device_replay import DeviceReplay
from mlr_jax.replay import AtariReplay
from mlr_jax.replay import device_sampler as ds
from mlr_jax.replay.dmc import DMCReplay


def atari_replay():
    return AtariReplay(40, frame_stack=4, seq_len=6, n_step=3, frame_shape=(6, 6),
                       initial_priority=1.0, eager_tree=False)


def dmc_replay():
    return DMCReplay(40, action_dim=2, frame_stack=3, seq_len=5, frame_shape=(3, 5, 5),
                     eager_tree=False)


def add_random_step(replay, rng):
    end = bool(rng.random() < 0.1)
    if isinstance(replay, AtariReplay):
        replay.add(rng.integers(0, 256, (6, 6), dtype=np.uint8), int(rng.integers(0, 5)),
                   float(rng.integers(-1, 2)), end or bool(rng.random() < 0.1), end)
    else:
        replay.add(rng.integers(0, 256, (3, 5, 5), dtype=np.uint8),
                   rng.uniform(-1, 1, 2).astype(np.float32), float(rng.normal()), False, end)


@pytest.mark.parametrize("make", [atari_replay, dmc_replay], ids=["atari", "dmc"])
def test_the_device_copy_equals_the_host_replays_step_by_step(make):
    layout = parallel.layout(2)  # two seeds, one per fake CPU device
    replays = [make(), make()]
    rng = np.random.default_rng(0)
    for replay in replays:  # a restored start: some steps before the device copy exists
        for _ in range(7):
            add_random_step(replay, rng)
    device = DeviceReplay(layout, replays)
    for step in range(95):  # past two wraps of the 40-step ring
        for replay in replays:
            add_random_step(replay, rng)
        device.write_newest(replays)
        if step % 31 == 0 or step == 94:
            arrays = jax.device_get(device.arrays)
            table = np.asarray(jax.device_get(device.tables.table))
            for i, replay in enumerate(replays):
                expected = ds.host_arrays(replay)
                for field, value in expected._asdict().items():
                    np.testing.assert_array_equal(getattr(arrays, field)[i], value,
                                                  err_msg=f"seed {i} {field} at step {step}")
                np.testing.assert_array_equal(table[i, :-1], replay.ring.frames[:-1])
                assert not table[i, -1].any()  # the zero frame stays zero
