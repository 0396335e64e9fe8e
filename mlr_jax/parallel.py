"""Data parallelism: the only module that knows about devices.

The agents' ``train_step(state, batch, key, axis_name=None)`` is written for one shard of the
global batch. :func:`data_parallel` wraps it in ``jax.pmap`` over the local devices: the state
is replicated, the batch's leading axis is split across devices, the key is the same on every
device, and gradients/metrics are averaged with :func:`pmean` inside the step. Per-sample
outputs (e.g. new priorities) come back concatenated in global batch order.

Randomness is drawn for the global batch and sliced per device (:func:`shard_slice`), so one
device and D devices compute the same update for the same global batch.

Several processes (the hosts of a TPU pod slice or a GPU cluster, joined by
:func:`initialize_distributed`) run the same program on the same data: every process steps an
identical environment, keeps an identical replay and samples the same global batch, and the
pmapped step spans the devices of all processes, each process feeding the rows of its own
devices. Actions are taken from the primary process (:func:`from_primary`) so the
environments cannot drift apart, and :func:`check_same_across_processes` fails loudly if they
do anyway. Only the primary process writes files.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

AXIS = "devices"
# Bytes of text :func:`share_text` can carry (run directory paths).
TEXT_BYTES = 4096


class ParallelError(ValueError):
    """The batch cannot be split over the devices."""


class ProcessesDiverged(RuntimeError):
    """The processes of a multi-process run no longer see the same data."""


def local_device_count() -> int:
    return jax.local_device_count()


def device_count() -> int:
    """Devices of all processes: the number of shards of the global batch."""
    return jax.device_count()


# --------------------------------------------------------------------------- processes

def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
    """Join a multi-process run (one process per host): ``jax.distributed.initialize``.

    Call it before anything else uses JAX, in every process. On Cloud TPU pod slices, SLURM
    and the other clusters JAX detects, all three arguments may be None; elsewhere give the
    coordinator's ``host:port`` (reachable from every process), the number of processes and
    this process's index (0 is the primary). CPU processes exchange collectives through gloo.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def process_count() -> int:
    return jax.process_count()


def process_index() -> int:
    return jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return jax.process_index() == 0


def from_primary(x: Any) -> Any:
    """The primary process's value of the numpy pytree ``x``, in every process (``x`` itself
    when there is one process)."""
    if jax.process_count() == 1:
        return x
    return jax.tree_util.tree_map(np.asarray, multihost_utils.broadcast_one_to_all(x))


def barrier(name: str, timeout_s: int = 900) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op with one process).

    Goes through JAX's coordination service, not a collective: gloo gives a process 30 s to
    join a new collective context, so a host still restoring a checkpoint or compiling while
    another already broadcasts would fail the run. ``name`` must be new to the service."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the coordination client has no public barrier

    distributed.global_state.client.wait_at_barrier(name, timeout_s * 1000)


def share_text(text: str) -> str:
    """The primary process's ``text`` (at most :data:`TEXT_BYTES` bytes of UTF-8) in every
    process."""
    data = text.encode()
    if len(data) > TEXT_BYTES:
        raise ValueError(f"share_text carries at most {TEXT_BYTES} bytes, got {len(data)}")
    buffer = np.zeros(TEXT_BYTES, np.uint8)
    buffer[:len(data)] = np.frombuffer(data, np.uint8)
    return bytes(from_primary(buffer)).rstrip(b"\0").decode()


def stop_agreed(step: int, requested: bool) -> bool:
    """Whether to stop after agent step ``step``: with one process, ``requested``; with
    several, whether JAX's preemption service has agreed on ``step`` as every process's stop
    (a SIGTERM to any process starts the agreement; every process must call this at every
    step)."""
    if jax.process_count() == 1:
        return requested
    return multihost_utils.reached_preemption_sync_point(step)


def check_same_across_processes(values: dict[str, float], what: str) -> None:
    """Raise :class:`ProcessesDiverged` unless every process holds the same ``values``
    (NaN equals NaN); the message names ``what`` and each process's values. A no-op for one
    process."""
    if jax.process_count() == 1:
        return
    names = sorted(values)
    mine = np.array([values[k] for k in names], np.float64)
    every = np.asarray(multihost_utils.process_allgather(mine))
    if not all(np.array_equal(row, every[0], equal_nan=True) for row in every):
        rows = "; ".join(f"process {i}: " + ", ".join(f"{k}={v:g}" for k, v in zip(names, row))
                         for i, row in enumerate(every))
        raise ProcessesDiverged(
            f"the processes no longer agree on {what} ({rows}). Every process must step the "
            f"same environment: use the same envpool and mlr-jax versions and config on all hosts")


def device_description() -> str:
    """Human-readable name of the first local device (for benchmark records)."""
    dev = jax.local_devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', 'unknown')} x{jax.local_device_count()}"


def on_accelerator() -> bool:
    """Whether JAX runs on an accelerator (GPU, TPU) rather than the CPU."""
    return jax.default_backend() != "cpu"


def device_memory_limit() -> int | None:
    """Bytes one local device can hold (``memory_stats()["bytes_limit"]``), None if unknown."""
    return (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")


def conv_impl(requested: str) -> str:
    """The convolution implementation for ``run.conv_impl`` (see :mod:`mlr_jax.nets.conv`):
    ``"auto"`` is ``"im2col"`` on the CPU backend (XLA:CPU convolutions are slow) and
    ``"xla"`` on accelerators."""
    if requested == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    return requested


def replay_frames(requested: str) -> str:
    """Where the replay's frames live for ``run.replay_frames`` (see
    :mod:`mlr_jax.device_frames`): ``"auto"`` is ``"device"`` on accelerators, where
    it removes the per-update host gather and pixel copy, and ``"host"`` on the CPU backend,
    where the device is the host and a second copy of the frames would only cost memory."""
    if requested == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return requested


def pmean(tree: Any, axis_name: str | None) -> Any:
    """Mean over devices inside a pmapped function; identity when ``axis_name`` is None."""
    if axis_name is None:
        return tree
    return jax.lax.pmean(tree, axis_name)


def num_shards(axis_name: str | None) -> int:
    """Number of devices sharing the batch (1 when ``axis_name`` is None)."""
    return 1 if axis_name is None else jax.lax.psum(1, axis_name)


def sample_keys(key: jax.Array, local_batch: int, axis_name: str | None) -> jax.Array:
    """One key per sample of the GLOBAL batch, sliced to this device's ``local_batch`` samples."""
    return shard_slice(jax.random.split(key, local_batch * num_shards(axis_name)), axis_name)


def shard_slice(x: jax.Array, axis_name: str | None) -> jax.Array:
    """This device's contiguous slice of a global-batch array ``x[B_global, ...]``.

    Identity when ``axis_name`` is None. Used to take per-sample randomness drawn for the
    whole batch, so the update does not depend on the device count.
    """
    if axis_name is None:
        return x
    size = x.shape[0] // num_shards(axis_name)
    start = jax.lax.axis_index(axis_name) * size
    return jax.lax.dynamic_slice_in_dim(x, start, size, axis=0)


def check_divisible(batch_size: int, num_devices: int, what: str = "batch_size") -> int:
    """Per-device batch size; a clear error when ``batch_size`` does not split evenly."""
    if batch_size % num_devices:
        raise ParallelError(
            f"{what}={batch_size} is not divisible by the number of devices ({num_devices}); "
            f"use a multiple of {num_devices}")
    return batch_size // num_devices


def _devices(num_devices: int | None) -> list[Any]:
    return jax.local_devices()[: num_devices or jax.local_device_count()]


def _pmap_devices(num_devices: int | None) -> list[Any] | None:
    """The devices of a pmap with collectives: the first ``num_devices`` local devices, or with
    several processes None, i.e. every device of every process."""
    if jax.process_count() == 1:
        return _devices(num_devices)
    if num_devices is not None:
        raise ParallelError(f"num_devices={num_devices} selects local devices, which a "
                            f"{jax.process_count()}-process run cannot do; leave it None")
    return None


def replicate(tree: Any, num_devices: int | None = None) -> Any:
    """Copy a pytree to every local device: leaves get a leading device axis ``[D, ...]``,
    sharded so that device ``i`` holds copy ``i`` (the layout ``jax.pmap`` consumes).

    The copies are stacked on the host first. Sending one host view to each device instead
    (``np.broadcast_to`` or one ``device_put`` per device) made every later Atari update on
    the CPU backend 2x slower (6.2 s against 3.1 s, measured), so the stack stays."""
    devices = _devices(num_devices)
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (AXIS,)),
                                          jax.sharding.PartitionSpec(AXIS))
    return jax.tree_util.tree_map(
        lambda x: jax.device_put(np.stack([np.asarray(x)] * len(devices)), sharding), tree)


def replicated_zeros(shape: tuple[int, ...], dtype: Any, num_devices: int | None = None) -> jax.Array:
    """A zero array of ``shape`` on every local device, made there (``[D, *shape]``, the
    layout of :func:`replicate`)."""
    devices = _devices(num_devices)
    return jax.pmap(lambda _: jnp.zeros(shape, dtype), devices=devices)(np.zeros(len(devices)))


def row_writer(num_devices: int | None = None) -> Callable[[jax.Array, int, Any], jax.Array]:
    """``write(table, row, value) -> table``: set ``table[:, row] = value`` on every device of a
    replicated ``table [D, N, ...]``, in place (the old buffer is donated)."""
    devices = _devices(num_devices)
    write = jax.pmap(lambda table, row, value: jax.lax.dynamic_update_index_in_dim(
        table, value.astype(table.dtype), row, axis=0),
        in_axes=(0, None, None), devices=devices, donate_argnums=(0,))
    return lambda table, row, value: write(table, np.int32(row), value)


def unreplicate(tree: Any) -> Any:
    """Host (numpy) copy of the first device's replica of a replicated pytree."""
    return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0], tree)


def on_first_replica(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Jit ``fn(tree, *args)`` so it can be called with a replicated ``tree``.

    The first device's buffers are passed without a copy (``addressable_data(0)``, shape
    ``[1, ...]``) and squeezed inside the compiled function, so acting with the training
    state costs no transfer of parameters or optimizer state.
    """
    jitted = jax.jit(lambda local, *args: fn(jax.tree_util.tree_map(lambda x: x[0], local), *args))
    return lambda tree, *args: jitted(
        jax.tree_util.tree_map(lambda x: x.addressable_data(0), tree), *args)


def split_batch(batch: Any, num_devices: int) -> Any:
    """Reshape every leaf ``[B, ...] -> [D, B/D, ...]`` (host arrays, no copy).

    Raises:
      ParallelError: a leaf's batch axis does not split evenly; the message names the leaf.
    """

    def split(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        check_divisible(x.shape[0], num_devices, f"batch size of {jax.tree_util.keystr(path) or 'batch'}")
        return x.reshape((num_devices, x.shape[0] // num_devices) + x.shape[1:])

    return jax.tree_util.tree_map_with_path(split, batch)


def data_parallel(train_step: Callable[..., tuple[Any, Any]], num_devices: int | None = None,
                  donate_state: bool = True, num_replicated: int = 0) -> Callable[..., tuple[Any, Any]]:
    """Wrap ``train_step(state, batch, key, *replicated, axis_name)`` for the devices: the
    first ``num_devices`` local ones (None: all), or with several processes every device of
    every process.

    Returns ``step(replicated_state, batch, key, *replicated) -> (replicated_state, metrics)``
    where ``batch`` is a host pytree with global leading axis B (B divisible by the device
    count of all processes; every process passes the same global batch and feeds its own
    devices' rows), ``key`` a single PRNG key, ``replicated`` ``num_replicated`` further
    inputs already on every local device (:func:`replicate` layout, e.g. the replay's frame
    table), and ``metrics`` the averaged scalars and the per-sample arrays of the whole
    global batch ``[B, ...]`` (gathered over the devices inside the step).
    """
    devices = _pmap_devices(num_devices)
    n = jax.device_count() if devices is None else len(devices)

    def per_device(state, batch, key, *replicated):
        state, metrics = train_step(state, batch, key, *replicated, axis_name=AXIS)
        # per-sample outputs of every device, in global batch order, on every device
        return state, jax.tree_util.tree_map(
            lambda x: x if x.ndim == 0 else jax.lax.all_gather(x, AXIS, tiled=True), metrics)

    pmapped = jax.pmap(per_device, axis_name=AXIS, in_axes=(0, 0, None) + (0,) * num_replicated,
                       devices=devices, donate_argnums=(0,) if donate_state else ())
    local_shards = None  # with several processes: the global shard index of each local device
    if jax.process_count() > 1:  # (every process builds the step at the same point, as here)
        local_shards = np.asarray(jax.pmap(lambda _: jax.lax.axis_index(AXIS), axis_name=AXIS)(
            np.zeros(jax.local_device_count())))

    def step(state, batch, key, *replicated):
        if len(replicated) != num_replicated:
            raise TypeError(f"the step takes {num_replicated} replicated inputs, got {len(replicated)}")
        shards = split_batch(batch, n)
        if local_shards is not None:  # this process feeds its own devices' rows
            shards = jax.tree_util.tree_map(lambda x: x[local_shards], shards)
        new_state, metrics = pmapped(state, shards, key, *replicated)
        return new_state, gather_metrics(metrics)

    step.num_devices = n
    step.pmapped = pmapped
    return step


def gather_metrics(metrics: Any) -> Any:
    """Device-stacked metrics -> the first local device's: scalars (already averaged) and
    per-sample arrays (already gathered over the devices, ``[B, ...]``)."""
    return jax.tree_util.tree_map(lambda x: x[0], metrics)
