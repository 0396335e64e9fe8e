"""Devices and processes: the only module that knows about either.

Everything runs as ``jax.jit`` over a two-axis :class:`jax.sharding.Mesh` (:class:`Layout`):

- ``seeds``: a group of S independent runs (seeds) of one game or task trains as one program.
  Their states are stacked on a leading seed axis and the agents' ``train_step`` is
  ``jax.vmap``-ed over it; the seed axis is split over the mesh's first axis, S / s seeds per
  device. Fields every seed shares (the update counter ``step``, on which the DMC actor
  gating branches) are not stacked, so a ``lax.cond`` on them stays a branch under vmap.
- ``data``: each seed's batch is split over the devices of the second mesh axis (data
  parallelism). Inside the step (a ``shard_map``) the agents' ``train_step(state, batch,
  key, axis_name)`` sees one shard of one seed's batch and averages gradients and metrics with
  :func:`pmean` over :data:`AXIS`; per-sample outputs (new priorities) come back gathered in
  global batch order. Randomness is drawn for the global batch and sliced per device
  (:func:`shard_slice`), so one device and D devices compute the same update.

:func:`layout` picks the mesh: S seeds on D devices use ``gcd(S, D)`` seed shards and the rest
of the devices for data, so one seed spans every device and D seeds take one device each.

Several processes (the hosts of a TPU pod slice or a GPU cluster, joined by
:func:`initialize_distributed`) run the same program on the same data: every process steps
identical environments, keeps identical replays and samples the same global batches, and the
mesh spans the devices of all processes (its data axis; a group's seeds are vmapped on every
device), each process feeding the rows of its own devices. Actions are taken from the primary
process (:func:`from_primary`) so the environments cannot drift apart, and
:func:`check_same_across_processes` fails loudly if they do anyway. Only the primary process
writes files. A sweep's processes instead train different runs (:func:`work_alone`): each is
then a one-process program on its own devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

SEEDS = "seeds"  # the mesh axis of a group's seeds
DATA = "data"  # the mesh axis a seed's batch is split over
AXIS = DATA  # the axis name the agents' collectives (pmean, psum) reduce over
# how a program's argument lies on the mesh (Layout._program)
SEED = P(SEEDS)  # a leading seed axis: each seed's whole value on every data shard of it
BATCH = P(SEEDS, DATA)  # a seed axis, then samples split along the data axis
SHARED = P()  # the same value for every seed
# Bytes of text :func:`share_text` can carry (run directory paths).
TEXT_BYTES = 4096


class ParallelError(ValueError):
    """The batch cannot be split over the devices."""


class ProcessesDiverged(RuntimeError):
    """The processes of a multi-process run no longer see the same data."""


_ALONE = False  # set by work_alone(): this process trains its own runs on its own devices


def devices() -> list[Any]:
    """The devices of this run: every device of every process, or this process's own when it
    works alone or is the only one."""
    return jax.local_devices() if _ALONE else jax.devices()


def device_count() -> int:
    """Devices of this run (:func:`devices`)."""
    return len(devices())


# --------------------------------------------------------------------------- transfers

_TRANSFERS: list[int] = []  # the count of device-to-host reads while counting_transfers() is on


@contextlib.contextmanager
def counting_transfers():
    """Count device-to-host reads of jax arrays while active (:func:`transfers`).

    Every read of an array's value on the host passes ``jax.Array._value`` (``jax.device_get``
    of each leaf, ``float``/``int``/``bool``, ``.tolist()``, printing) and is counted once
    until the array caches its host copy. ``jax.transfer_guard`` cannot count on the CPU
    backend (a CPU array's memory is the host's; it never fires), and ``np.asarray`` of a CPU
    array reads it through the buffer protocol without the counter: the library reads device
    values with ``jax.device_get``.
    """
    from jax._src import array  # private: the one place every host read of an array passes

    if _TRANSFERS:
        raise RuntimeError("counting_transfers() is already active")
    original = array.ArrayImpl._value

    def counted(self):
        if self._npy_value is None:
            _TRANSFERS[0] += 1
        return original.fget(self)

    _TRANSFERS.append(0)
    array.ArrayImpl._value = property(counted)
    try:
        yield
    finally:
        array.ArrayImpl._value = original
        _TRANSFERS.clear()


def transfers() -> int | None:
    """Device-to-host reads since :func:`counting_transfers` began; None when not counting."""
    return _TRANSFERS[0] if _TRANSFERS else None


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


def work_alone() -> tuple[int, int]:
    """From now on this process trains runs of its own on its own devices, with no collective
    and no agreement with the other processes of the JAX runtime (a sweep's share of the grid,
    after :func:`initialize_distributed` told it where it stands). Returns this process's
    ``(index, count)`` in the runtime, by which it picks its share."""
    global _ALONE
    _ALONE = True
    return runtime_processes()


def runtime_processes() -> tuple[int, int]:
    """``(index, count)`` of this process in the JAX runtime, alone or not (checkpoints
    written by one process of several must tell orbax not to wait for the others)."""
    return jax.process_index(), jax.process_count()


def process_count() -> int:
    """Processes of this run (1 when this process works alone)."""
    return 1 if _ALONE else jax.process_count()


def process_index() -> int:
    """This process's index in its run (0 when it works alone)."""
    return 0 if _ALONE else jax.process_index()


def is_primary() -> bool:
    """Whether this process writes the run's files (process 0)."""
    return process_index() == 0


def from_primary(x: Any) -> Any:
    """The primary process's value of the numpy pytree ``x``, in every process (``x`` itself
    when there is one process)."""
    if process_count() == 1:
        return x
    return jax.tree_util.tree_map(np.asarray, multihost_utils.broadcast_one_to_all(x))


def barrier(name: str, timeout_s: int = 900, runtime: bool = False) -> None:
    """Wait until every process of this run (with ``runtime``: of the JAX runtime, also when
    this process works alone) reaches the barrier ``name``; a no-op with one process.

    Goes through JAX's coordination service, not a collective: gloo gives a process 30 s to
    join a new collective context, so a host still restoring a checkpoint or compiling while
    another already broadcasts would fail the run. ``name`` must be new to the service."""
    if (jax.process_count() if runtime else process_count()) == 1:
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
    if process_count() == 1:
        return requested
    return multihost_utils.reached_preemption_sync_point(step)


def check_same_across_processes(values: dict[str, float], what: str) -> None:
    """Raise :class:`ProcessesDiverged` unless every process holds the same ``values``
    (NaN equals NaN); the message names ``what`` and each process's values. A no-op for one
    process."""
    if process_count() == 1:
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
    return f"{dev.platform}:{getattr(dev, 'device_kind', 'unknown')} x{len(jax.local_devices())}"


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


def sampler(requested: str) -> str:
    """Where batches are drawn for ``run.sampler`` (see :mod:`mlr_jax.device_replay`):
    ``"auto"`` is ``"device"`` on accelerators, where a copy to the host per update would make
    the device wait, and ``"host"`` on the CPU backend, where the device is the host."""
    if requested == "auto":
        return "host" if jax.default_backend() == "cpu" else "device"
    return requested


def pmean(tree: Any, axis_name: str | None) -> Any:
    """Mean over the devices of :data:`AXIS` inside a train step; identity when ``axis_name`` is None."""
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




# --------------------------------------------------------------------------- the mesh

StepFn = Callable[..., tuple[Any, Any]]


def _spec(axis: int | None) -> P:
    """The PartitionSpec of a leaf stacked on the seed axis (``axis`` 0) or shared (None)."""
    return SHARED if axis is None else SEED


def _is_axis(x: Any) -> bool:
    return x is None or isinstance(x, int)


def stack(trees: list[Any], axes: Any) -> Any:
    """Host trees of a group's seeds -> one stacked tree (seed axes ``axes``); shared leaves
    must be equal in every tree.

    Raises:
      ParallelError: a shared leaf differs between the seeds (e.g. checkpoints of different
        update counts); the message names it."""
    def leaf(path, axis, *xs):
        xs = [np.asarray(x) for x in xs]
        if axis is not None:
            return np.stack(xs)
        if any(not np.array_equal(x, xs[0]) for x in xs[1:]):
            raise ParallelError(f"{jax.tree_util.keystr(path)} is shared by the seeds of a group "
                                f"but differs between them: {[x.tolist() for x in xs]}")
        return xs[0]

    return jax.tree_util.tree_map_with_path(leaf, axes, *trees, is_leaf=_is_axis)


def _seed_slice(axes: Any, tree: Any, i: Any) -> Any:
    return jax.tree.map(lambda a, x: x if a is None else x[i], axes, tree, is_leaf=_is_axis)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a group of ``num_seeds`` runs lives: a ``(seeds, data)`` mesh of devices.

    Trees on the layout are *stacked*: each leaf has a leading seed axis ``[S, ...]``, except
    the leaves that the ``axes`` tree (:func:`mlr_jax.agents.common.seed_axes`) marks None,
    which all seeds share. Stacked leaves are split over the ``seeds`` mesh axis and copied
    along ``data``; shared leaves are on every device.
    """

    mesh: Mesh
    num_seeds: int

    @property
    def seed_shards(self) -> int:
        """Devices the seeds are split over."""
        return self.mesh.shape[SEEDS]

    @property
    def data_shards(self) -> int:
        """Devices a seed's batch is split over."""
        return self.mesh.shape[DATA]

    def _sharding(self, spec: P) -> NamedSharding:
        return NamedSharding(self.mesh, spec)

    def _put(self, x: Any, spec: P) -> jax.Array:
        """A global array of host value ``x`` (the same in every process), each device's
        shard copied from it (own buffers: aliasing one host buffer from several CPU
        devices made every later update 2x slower, measured)."""
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, self._sharding(spec), lambda i: np.array(x[i]))

    def put(self, tree: Any, axes: Any) -> Any:
        """Host stacked tree (seed axes ``axes``) -> global arrays laid out on the mesh."""
        return jax.tree.map(lambda a, x: self._put(x, _spec(a)), axes, tree, is_leaf=_is_axis)

    def put_seeds(self, x: Any) -> jax.Array:
        """A host array with a leading seed axis (e.g. one PRNG key per seed), on the mesh."""
        return self._put(x, SEED)

    def seeds_split(self, x: jax.Array) -> jax.Array:
        """A device array with a leading seed axis, moved (device to device, if at all) to
        the layout :meth:`put_seeds` gives: split over the seeds, copied along data."""
        return jax.device_put(x, self._sharding(SEED))

    def put_batch(self, batch: Any) -> Any:
        """Host batches of every seed, leaves ``[S, B, ...]`` (B a seed's global batch), on
        the mesh: seeds over ``seeds``, samples over ``data``. Every process passes the whole
        batch and feeds its own devices.

        Raises:
          ParallelError: a leaf's batch axis does not split over the data devices; the
            message names the leaf.
        """
        def put(path, x):
            x = np.asarray(x)
            if x.ndim < 2 or x.shape[0] != self.num_seeds:
                raise ParallelError(f"{jax.tree_util.keystr(path) or 'batch'} of shape {x.shape}: "
                                    f"expected [seeds={self.num_seeds}, batch, ...]")
            check_divisible(x.shape[1], self.data_shards,
                            f"batch size of {jax.tree_util.keystr(path) or 'batch'}")
            return self._put(x, BATCH)

        return jax.tree_util.tree_map_with_path(put, batch)

    def stacked(self, init: Callable[[jax.Array], Any], keys: np.ndarray, axes: Any) -> Any:
        """``init(key)`` of every seed's key (``keys[S, ...]``) as a stacked tree on the mesh.

        Each seed's tree is made alone (so it is exactly what a run of that seed alone starts
        from) and stacked on the host: ``vmap`` of the DMC agent's init (several seeds per
        device) never finished on XLA:CPU (jax 0.10.2, measured: no leaf ever ready)."""
        return self.put(stack([jax.device_get(init(key)) for key in keys], axes), axes)

    def unstack(self, tree: Any, axes: Any) -> list[Any]:
        """Host (numpy) copies of every seed's tree; shared leaves go to each."""
        host = jax.device_get(tree)
        return [_seed_slice(axes, host, i) for i in range(self.num_seeds)]

    def take(self, axes: Any) -> Callable[[Any, int], Any]:
        """``take(tree, i)``: seed ``i``'s tree, on the devices (jitted: evaluating one seed's
        policy costs no host transfer of its state)."""
        jitted = jax.jit(functools.partial(_seed_slice, axes))
        return lambda tree, i: jitted(tree, np.int32(i))

    def map_seeds(self, fn: Callable[..., Any], axes: Any, *arg_axes: int | None) -> Callable[..., Any]:
        """``fn(tree, *args)`` of one seed -> jitted ``fn`` of every seed: ``(stacked_tree,
        *args) -> outputs [S, ...]``; ``arg_axes`` says which arguments carry a seed axis (0)
        and which all seeds share (None)."""
        return jax.jit(jax.vmap(fn, in_axes=(axes, *arg_axes)))

    def zeros(self, shape: tuple[int, ...], dtype: Any) -> jax.Array:
        """A zero array ``[S, *shape]`` made on the devices, split over the seeds."""
        return jax.jit(lambda: jnp.zeros((self.num_seeds, *shape), dtype),
                       out_shardings=self._sharding(SEED))()

    def seed_writer(self) -> Callable[..., jax.Array]:
        """``write(table, seed, rows, start) -> table``: ``table[seed, start:start + k] =
        rows`` (``rows[k, ...]``) on a table ``[S, N, ...]`` split over the seeds, in place
        (the old buffer is donated). Each device updates its own seeds' rows; none gathers
        the table, and only ``rows`` crosses from the host."""

        def write(table, seed, start, rows):
            def local(t, seed, start, rows):
                index = seed - jax.lax.axis_index(SEEDS) * t.shape[0]
                mine = (index >= 0) & (index < t.shape[0])
                at = (jnp.clip(index, 0, t.shape[0] - 1), start) + (0,) * (t.ndim - 2)
                old = jax.lax.dynamic_slice(t, at, (1,) + rows.shape)
                new = jnp.where(mine, rows.astype(t.dtype)[None], old)
                return jax.lax.dynamic_update_slice(t, new, at)

            return jax.shard_map(local, mesh=self.mesh, in_specs=(SEED, SHARED, SHARED, SHARED),
                                 out_specs=SEED, check_vma=False)(table, seed, start, rows)

        jitted = jax.jit(write, donate_argnums=0)
        return lambda table, seed, rows, start: jitted(table, np.int32(seed), np.int32(start), rows)

    def train_step(self, train_step: StepFn, axes: Any, num_tables: int = 0,
                   donate_state: bool = True) -> StepFn:
        """One jitted update of every seed: ``train_step(state, batch, key, *tables,
        axis_name)`` of one seed's shard -> ``step(state, batch, keys, *tables) ->
        (state, metrics)``.

        ``state`` is stacked (seed axes ``axes``), ``batch`` the host batches ``[S, B, ...]``
        (:meth:`put_batch`), ``keys[S]`` one PRNG key per seed (the same on each of its data
        shards), ``tables`` ``num_tables`` stacked arrays already on the mesh (the replays'
        frame tables). ``metrics`` come back per seed: scalars ``[S]`` averaged over the data
        shards, per-sample arrays ``[S, B, ...]`` in global batch order.
        """
        def per_seed(state, batch, key, *tables, axis_name):
            state, metrics = train_step(state, batch, key, *tables, axis_name=axis_name)
            return state, jax.tree.map(
                lambda x: x if x.ndim == 0 else jax.lax.all_gather(x, axis_name, tiled=True), metrics)

        jitted = self._program(per_seed, axes, (BATCH, SEED) + (SEED,) * num_tables, 1,
                               donate=(0,) if donate_state else ())

        def step(state, batch, keys, *tables):
            if len(tables) != num_tables:
                raise TypeError(f"the step takes {num_tables} tables, got {len(tables)}")
            return jitted(state, self.put_batch(batch), self.put_seeds(keys), *tables)

        step.jitted = jitted
        step.put = lambda batch, keys: (self.put_batch(batch), self.put_seeds(keys))
        return step

    def seed_program(self, fn: Callable[..., Any], axes: Any, num_seed_args: int,
                     num_outputs: int, num_shared: int = 0,
                     donate: tuple[int, ...] = ()) -> Callable[..., Any]:
        """One jitted program of every seed: ``fn(state, *seed_args, *shared, axis_name) ->
        (state, *outputs)`` of one seed's data shard -> ``(stacked_state, *seed_args[S, ...],
        *shared) -> (stacked_state, *outputs[S, ...])``.

        ``seed_args`` and ``outputs`` carry a leading seed axis (split over the seeds, copied
        along the data axis: every data shard of a seed sees the whole of them); ``shared``
        arguments are the same for every seed (scalars such as the importance exponent).
        ``donate``: argument positions whose buffers the outputs may reuse (the state is 0).
        """
        return self._program(fn, axes, (SEED,) * num_seed_args + (SHARED,) * num_shared,
                             num_outputs, donate)

    def _program(self, fn: Callable[..., Any], axes: Any, args: tuple[P, ...], num_outputs: int,
                 donate: tuple[int, ...]) -> Callable[..., Any]:
        """``fn(state, *args, axis_name) -> (state, *outputs)`` of one seed's data shard,
        vmapped over the seeds, sharded over the mesh and jitted; ``args`` lays out each
        argument: :data:`SEED` (a seed axis), :data:`BATCH` (a seed axis, then samples split
        along the data axis) or :data:`SHARED` (the same for every seed); every output has a
        seed axis."""
        mapped = jax.vmap(functools.partial(fn, axis_name=AXIS),
                          in_axes=(axes,) + tuple(None if a == SHARED else 0 for a in args),
                          out_axes=(axes,) + (0,) * num_outputs)
        state_specs = jax.tree.map(_spec, axes, is_leaf=_is_axis)
        sharded = jax.shard_map(mapped, mesh=self.mesh, check_vma=False,
                                in_specs=(state_specs, *args),
                                out_specs=(state_specs,) + (SEED,) * num_outputs)
        return jax.jit(sharded, donate_argnums=donate)

    def per_seed(self, fn: Callable[..., Any], num_args: int, donate: tuple[int, ...] = ()
                 ) -> Callable[..., Any]:
        """``fn(*args)`` of one seed (no collectives) -> one jitted program over arrays
        ``[S, ...]`` split over the seeds (each device runs its own seeds' part), returning
        a tuple of such arrays; ``donate``: argument positions the outputs may reuse."""
        sharded = jax.shard_map(jax.vmap(fn), mesh=self.mesh, check_vma=False,
                                in_specs=(SEED,) * num_args, out_specs=SEED)
        return jax.jit(sharded, donate_argnums=donate)


def seed_shards(num_seeds: int, num_devices: int) -> int:
    """How many ways :func:`layout` splits a group's seeds over ``num_devices`` devices: each
    device holds ``num_seeds / seed_shards`` of them. With several processes the seeds are not
    split: every device holds every seed."""
    return 1 if process_count() > 1 else math.gcd(num_seeds, num_devices)


def layout(num_seeds: int = 1, num_devices: int | None = None) -> Layout:
    """The mesh of a group of ``num_seeds`` runs on this run's devices (:func:`devices`; the
    first ``num_devices`` of them when given): ``gcd(num_seeds, D)`` devices along ``seeds``
    and the rest along ``data``. With several processes the seeds are not split (every
    process steps every seed's environment) and ``data`` spans every device."""
    every = devices()
    if num_devices is not None:
        if process_count() > 1:
            raise ParallelError(f"num_devices={num_devices} selects local devices, which a "
                                f"{process_count()}-process run cannot do; leave it None")
        if not 1 <= num_devices <= len(every):
            raise ParallelError(f"num_devices={num_devices}: this process has {len(every)}")
        every = every[:num_devices]
    if num_seeds < 1:
        raise ParallelError(f"a group needs at least one seed, got {num_seeds}")
    shards = seed_shards(num_seeds, len(every))
    grid = np.array(every, dtype=object).reshape(shards, len(every) // shards)
    return Layout(Mesh(grid, (SEEDS, DATA)), num_seeds)


def to_device(tree: Any) -> Any:
    """A host tree on the default device (e.g. one seed's state, evaluated)."""
    return jax.device_put(tree)
