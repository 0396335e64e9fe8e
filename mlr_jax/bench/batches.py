"""What it costs to get one update's batch onto the device, with the replay frames on the host
or on the device (``run.replay_frames``, :mod:`mlr_jax.device_frames`).

For each mode, a replay of the config's shapes is filled with ``fill_steps`` random steps and
one update's batch is drawn (:func:`mlr_jax.domains.sample_batch`) and made ready on the first
device, repeatedly:

* ``host``: sample (numpy gather of the pixel stacks) + ``jax.device_put`` of the pixels;
* ``device``: sample (indices only) + ``jax.device_put`` of the indices + the gather of the
  stacks from the device's frame table (the first operation of the train step, jitted alone
  here).

It also times one frame write into the device tables (once per agent step). The host gather
reads frames scattered over the whole buffer, so its cost grows with the stored bytes until
they leave the CPU caches: the default fill (20,000 steps: 140 MB of Atari frames, 600 MB of
DMC frames, or the replay's capacity if smaller) is well past that point.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from mlr_jax import domains, parallel
from mlr_jax.bench.timing import median_ms
from mlr_jax.config import AtariConfig, DMCConfig
from mlr_jax.device_frames import FrameTables, gather_batch

MODES = ("host", "device")


def _filled_replay(cfg: AtariConfig | DMCConfig, action_dim: int, mode: str, steps: int,
                   seed: int) -> Any:
    mirror = FrameTables(parallel.layout(1, num_devices=1)).mirror(0) if mode == "device" else None
    replay = domains.make_replay(cfg, action_dim, mirror)
    rng = np.random.default_rng(seed)
    atari = isinstance(cfg, AtariConfig)
    pool = rng.integers(0, 256, (16,) + domains.frame_shape(cfg), dtype=np.uint8)  # content does not matter
    for t in range(steps):
        action = t % action_dim if atari else rng.uniform(-1, 1, action_dim).astype(np.float32)
        replay.add(pool[t % len(pool)], action, 0.0, False, t % 1000 == 999)
    return replay


def _nbytes(batch: Any) -> int:
    return int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(batch)))


def bench_batches(cfg: AtariConfig | DMCConfig, action_dim: int, repeats: int = 20,
                  fill_steps: int = 20_000, seed: int = 0) -> dict[str, Any]:
    """Per-update batch preparation in both modes.

    Args:
      cfg: the benchmarked config (its batch sizes and image sizes are used).
      action_dim: Atari's number of actions or DMC's action size.
      repeats: timed batches per mode.
      fill_steps: random steps stored before sampling (at most the replay's capacity).
      seed: seed of the frames and of the sampling.

    Returns:
      ``{"fill_steps", "host": {...}, "device": {...}}`` where each mode has ``median_ms``
      (sample + on the device, per update), ``sample_ms`` (host sampling alone) and
      ``bytes_to_device`` (per update); ``device`` also ``write_ms`` (one frame write into the
      tables, per agent step) and ``table_bytes`` (one device's copy of the frames).
    """
    fill_steps = min(fill_steps, cfg.replay_capacity)
    out: dict[str, Any] = {"fill_steps": fill_steps}
    step = fill_steps
    gather = jax.jit(lambda table, batch: gather_batch(table[0], batch))  # a group of one
    for mode in MODES:
        replay = _filled_replay(cfg, action_dim, mode, fill_steps, seed)
        rng = np.random.default_rng(seed)
        sample = lambda: domains.sample_batch(cfg, replay, step, rng)  # noqa: E731
        frames = replay.device_frames
        if frames is None:
            ready = lambda: jax.block_until_ready(jax.device_put(sample()))  # noqa: E731
        else:
            ready = lambda: jax.block_until_ready(  # noqa: E731
                gather(frames.table, jax.device_put(sample())))
        result = {"median_ms": median_ms(ready, repeats, warmup=2),
                  "sample_ms": median_ms(sample, repeats, warmup=1),
                  "bytes_to_device": _nbytes(sample())}
        if frames is not None:
            frame = np.zeros(frames.frame_shape, np.uint8)

            def write():
                frames.write(0, frame)
                jax.block_until_ready(frames.table)

            result["write_ms"] = median_ms(write, repeats, warmup=2)
            result["table_bytes"] = int(frames.table.nbytes // frames.table.shape[0])
        out[mode] = result
    out["device_speedup"] = out["host"]["median_ms"] / out["device"]["median_ms"]
    return out
