"""Checkpoint round trip, retention, compatibility checks, unreadable checkpoints, a full disk."""
import os
import re
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from mlr_jax import __version__, checkpoint
from mlr_jax.config import make_config, to_dict


@struct.dataclass
class State:
    params: dict
    step: jax.Array
    rng: jax.Array  # raw uint32 key
    noise_key: jax.Array  # typed key


def make_state(seed=0, width=3):
    k = jax.random.PRNGKey(seed)
    return State(params={"w": jax.random.normal(k, (2, width)), "b": jnp.arange(width, dtype=jnp.float32)},
                 step=jnp.int32(7 + seed), rng=jax.random.PRNGKey(seed + 1), noise_key=jax.random.key(seed + 2))


def make_replay(seed=0):
    rng = np.random.default_rng(seed)
    return {"obs": rng.integers(0, 256, (6, 2, 8, 8), dtype=np.uint8),
            "priority": rng.random(6, dtype=np.float32), "size": np.array(5, dtype=np.int64),
            "episode": {"done": rng.random(6) < 0.5}}


def make_loop():
    gen = np.random.default_rng(123)
    gen.random(3)
    return {"agent_step": 1200, "updates": 2400, "score": 3.5, "scores": [1.0, float("nan"), -2.0],
            "key": np.array([1, 2**32 - 1], dtype=np.uint32), "ret": np.float32(0.25),
            "shape": (84, 84), "sampler": gen.bit_generator.state, "name": "pong", "done": None}


CONFIG = to_dict(make_config("atari", "pong", "smoke"))


def test_round_trip_is_exact(tmp_path):
    state, replay, loop = make_state(), make_replay(), make_loop()
    path = checkpoint.save(tmp_path / "ckpt", 1200, state, replay, loop, CONFIG)
    assert path == (tmp_path / "ckpt" / "1200").resolve() and path.is_dir()
    assert checkpoint.latest_step(tmp_path / "ckpt") == 1200

    got_state, got_replay, got_loop, got_config = checkpoint.restore(tmp_path / "ckpt", make_state(seed=5), CONFIG)
    assert isinstance(got_state, State)
    chex.assert_trees_all_equal(got_state.params, state.params)
    chex.assert_trees_all_equal_dtypes(got_state.params, state.params)
    assert got_state.step == 7 and got_state.step.dtype == jnp.int32
    np.testing.assert_array_equal(got_state.rng, state.rng)
    assert jax.dtypes.issubdtype(got_state.noise_key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(got_state.noise_key), jax.random.key_data(state.noise_key))
    np.testing.assert_array_equal(jax.random.normal(got_state.noise_key, (3,)), jax.random.normal(state.noise_key, (3,)))

    chex.assert_trees_all_equal(got_replay, replay)
    chex.assert_trees_all_equal_dtypes(got_replay, replay)

    assert got_loop.keys() == loop.keys()
    for key in ("agent_step", "updates", "score", "shape", "sampler", "name", "done"):
        assert got_loop[key] == loop[key] and type(got_loop[key]) is type(loop[key]), key
    np.testing.assert_array_equal(got_loop["scores"], loop["scores"])
    assert got_loop["key"].dtype == np.uint32 and got_loop["key"].tolist() == [1, 2**32 - 1]
    assert type(got_loop["ret"]) is np.float32 and got_loop["ret"] == np.float32(0.25)
    resumed = np.random.default_rng()
    resumed.bit_generator.state = got_loop["sampler"]
    original = np.random.default_rng(123)
    original.random(3)
    np.testing.assert_array_equal(resumed.random(4), original.random(4))
    assert got_config == CONFIG


def test_keeps_the_last_two_and_ignores_unfinished_writes(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert checkpoint.latest_step(ckpt) is None
    for step in (10, 20, 30):
        checkpoint.save(ckpt, step, make_state(seed=step), make_replay(step), {"step": step}, CONFIG)
    assert sorted(p.name for p in ckpt.iterdir() if p.name.isdigit()) == ["20", "30"]
    # a crash mid-save leaves only orbax's temporary directory: never picked up
    (ckpt / "40.orbax-checkpoint-tmp-1234").mkdir()
    assert checkpoint.latest_step(ckpt) == 30
    assert checkpoint.restore(ckpt, make_state())[2] == {"step": 30}
    state, _, loop, _ = checkpoint.restore(ckpt, make_state(), step=20)
    assert loop == {"step": 20} and state.step == 27
    # the agent alone (evaluation): the same state, no replay read
    alone, replay, loop, _ = checkpoint.restore(ckpt, make_state(), step=20, with_replay=False)
    assert replay is None and loop == {"step": 20}
    chex.assert_trees_all_equal(alone, state)
    with pytest.raises(checkpoint.CheckpointError, match=r"no checkpoint of step 10: .*saved steps: \[20, 30\]"):
        checkpoint.restore(ckpt, make_state(), step=10)
    # saving a step that exists leaves it as it is
    checkpoint.save(ckpt, 30, make_state(seed=99), make_replay(), {"step": -1}, CONFIG)
    assert checkpoint.restore(ckpt, make_state())[2] == {"step": 30}


def test_config_mismatch_names_the_keys(tmp_path):
    checkpoint.save(tmp_path, 1, make_state(), make_replay(), {}, CONFIG)
    other = to_dict(make_config("atari", "breakout", "smoke", ["mlr.num_layers=2"]))
    with pytest.raises(checkpoint.CheckpointMismatch) as err:
        checkpoint.restore(tmp_path, make_state(), other)
    msg = str(err.value)
    assert "game: checkpoint='pong' current='breakout'" in msg
    assert "mlr.num_layers: checkpoint=1 current=2" in msg
    dmc = to_dict(make_config("dmc", "cartpole_swingup", "smoke"))
    with pytest.raises(checkpoint.CheckpointMismatch, match="domain: checkpoint='atari' current='dmc'"):
        checkpoint.restore(tmp_path, make_state(), dmc)
    longer = to_dict(make_config("atari", "pong", "smoke", ["steps=5000", "lr=3e-4"]))
    assert checkpoint.restore(tmp_path, make_state(), longer)[3] == CONFIG  # not shape-relevant


def test_check_resumable_refuses_early_a_changed_config_or_another_format(tmp_path, monkeypatch):
    """The quick check before a resume builds anything: the newest step's config and format."""
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.check_resumable(tmp_path / "none", CONFIG)
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.check_resumable(tmp_path / "empty", CONFIG)
    checkpoint.save(tmp_path / "ckpt", 1, make_state(), make_replay(), {"step": 1}, CONFIG)
    checkpoint.check_resumable(tmp_path / "ckpt", CONFIG)
    wider = to_dict(make_config("atari", "pong", "smoke", ["hidden_size=512"]))
    with pytest.raises(checkpoint.CheckpointMismatch, match="hidden_size: checkpoint=256 current=512"):
        checkpoint.check_resumable(tmp_path / "ckpt", wider)
    written = checkpoint.FORMAT
    monkeypatch.setattr(checkpoint, "FORMAT", written + 1)  # this mlr-jax reads another layout
    for check in (lambda: checkpoint.check_resumable(tmp_path / "ckpt", CONFIG),
                  lambda: checkpoint.restore(tmp_path / "ckpt", make_state(), CONFIG)):
        with pytest.raises(checkpoint.CheckpointMismatch,
                           match=rf"has format {written} \(written by mlr-jax {re.escape(__version__)}\); "
                                 rf".* reads format {written + 1}"):
            check()
    assert (tmp_path / "ckpt" / "1").is_dir()  # refused, not set aside


def test_a_full_disk_stops_the_save_with_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch,
                                                                               capfd):
    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, 10, make_state(), make_replay(), {"step": 10}, CONFIG)
    size = sum(f.stat().st_size for f in (ckpt / "10").rglob("*") if f.is_file())
    # not enough space for another checkpoint of this size: refused before writing anything
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 1000, 1000))
    with pytest.raises(checkpoint.DiskFull) as err:
        checkpoint.save(ckpt, 20, make_state(seed=1), make_replay(1), {"step": 20}, CONFIG)
    msg = str(err.value)
    assert f"checkpoint 20 cannot be written to {ckpt.resolve()} (not enough free space)" in msg
    assert f"needs about {size / 2**20:,.1f} MiB, 0.0 MiB free; checkpoint 10 is intact" in msg
    monkeypatch.undo()

    # the write itself fails with ENOSPC (orbax wraps it): one line, no temporary directory
    def full(*args, **kwargs):
        os.write(2, b"Traceback (most recent call last): ... tensorstore noise\n")  # C++ side
        raise RuntimeError("tensorstore write failed") from OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.ocp.CheckpointManager, "save", full)
    capfd.readouterr()
    with pytest.raises(checkpoint.DiskFull, match=r"checkpoint 20 .*\(No space left on device\).*"
                                                  r"checkpoint 10 is intact"):
        checkpoint.save(ckpt, 20, make_state(seed=1), make_replay(1), {"step": 20}, CONFIG)
    assert "tensorstore noise" not in capfd.readouterr().err
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt.iterdir()) == ["10"]
    assert checkpoint.restore(ckpt, make_state(), CONFIG)[2] == {"step": 10}


def test_state_shape_mismatch_names_the_leaf(tmp_path):
    checkpoint.save(tmp_path, 1, make_state(width=3), make_replay(), {}, CONFIG)
    with pytest.raises(checkpoint.CheckpointMismatch, match=r"\['w'\].*\(2, 3\).*\(2, 4\)"):
        checkpoint.restore(tmp_path, make_state(width=4))


def test_missing_and_corrupt_checkpoints_name_the_path(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.restore(tmp_path / "nope", make_state())
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint"):
        checkpoint.restore(tmp_path / "empty", make_state())

    ckpt = tmp_path / "ckpt"
    checkpoint.save(ckpt, 5, make_state(), make_replay(), {}, CONFIG)
    with pytest.raises(checkpoint.CheckpointError, match=str(ckpt.resolve() / "7")):
        checkpoint.restore(ckpt, make_state(), step=7)
    for name, damage in [("state/manifest.ocdbt", lambda p: p.write_bytes(b"garbage")),
                         ("loop/metadata", lambda p: p.write_bytes(b"garbage")),
                         ("replay", shutil.rmtree)]:
        broken = tmp_path / name.replace("/", "_")
        shutil.copytree(ckpt, broken)
        damage(broken / "5" / name)
        with pytest.raises(checkpoint.CheckpointError, match=f"{broken.resolve() / '5'}.*corrupt"):
            checkpoint.restore(broken, make_state())


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, damage):
    """A crash or a full disk can leave the newest step broken: resuming reads the newest
    readable one, says which it skipped and why, and keeps the broken one aside."""
    ckpt = tmp_path / "checkpoints"
    checkpoint.save(ckpt, 5, make_state(0), make_replay(0), {"step": 5}, CONFIG)
    checkpoint.save(ckpt, 10, make_state(1), make_replay(1), {"step": 10}, CONFIG)
    victim = max((p for p in (ckpt / "10" / "state").rglob("*") if p.is_file()),
                 key=lambda p: p.stat().st_size)
    if damage == "truncate":
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    else:
        victim.unlink()
    skipped = []
    state, replay, loop, _ = checkpoint.restore(ckpt, make_state(), CONFIG, on_skip=skipped.append)
    assert loop["step"] == 5
    chex.assert_trees_all_equal(state.params, make_state(0).params)
    np.testing.assert_array_equal(replay["obs"], make_replay(0)["obs"])
    aside = tmp_path / "checkpoints.unreadable" / "10"
    assert len(skipped) == 1 and "skipped checkpoint 10" in skipped[0] and str(aside) in skipped[0]
    assert aside.is_dir() and checkpoint.latest_step(ckpt) == 5
    # the run goes on: step 10 can be saved again, and an explicit step is never skipped
    checkpoint.save(ckpt, 10, make_state(1), make_replay(1), {"step": 10}, CONFIG)
    assert checkpoint.restore(ckpt, make_state(), CONFIG)[2]["step"] == 10
    shutil.rmtree(ckpt / "5" / "replay")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(ckpt, make_state(), CONFIG, step=5)
    assert (ckpt / "5").is_dir()


def test_a_failed_read_drops_what_late_callbacks_print(capfd):
    """Reading a truncated checkpoint of a real run made orbax's late tensorstore callbacks
    print 262 ``Event loop is closed`` tracebacks around the one useful line: while a read
    runs, the process's stderr is held back, passed on if the read succeeds and dropped if
    it fails."""
    import os
    import threading

    def late_callback():
        os.write(2, b"Traceback: Event loop is closed\n")

    with checkpoint._stderr_held_back(settle_s=0.5):
        os.write(2, b"a warning worth seeing\n")
    late = threading.Timer(0.2, late_callback)  # fires after the error, while settling
    with pytest.raises(OSError):
        with checkpoint._stderr_held_back(settle_s=0.5):
            late.start()
            raise OSError("truncated")
    late.join()
    err = capfd.readouterr().err
    assert "a warning worth seeing" in err and "Event loop" not in err


def test_save_rejects_unsupported_values(tmp_path):
    with pytest.raises(TypeError, match=r"loop_state\.stats\.key"):
        checkpoint.save(tmp_path, 1, make_state(), make_replay(), {"stats": {"key": jnp.zeros(2)}}, CONFIG)
    with pytest.raises(ValueError, match="replay_state is empty"):
        checkpoint.save(tmp_path, 1, make_state(), {}, {}, CONFIG)
    assert checkpoint.latest_step(tmp_path) is None
