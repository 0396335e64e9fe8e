"""How a group's training loop acts and learns on its devices: two interchangeable learners
behind :class:`mlr_jax.loop._Group`'s ``act`` and ``learn`` phases (``run.sampler``).

- :class:`HostLearner` (``host``): the keys split on the host, batches sampled from the numpy
  replays, one step per update whose metrics (losses, new priorities, the finite flag) are
  copied back at once; the priorities are written on the host.
- :class:`DeviceLearner` (``device``): the keys, the replay's copy
  (:class:`~mlr_jax.device_replay.DeviceReplay`) and the metrics' tally stay on the devices;
  an update is one program with no copy to the host, and an agent step's one copy is its
  actions, packed with each seed's first non-finite update. The tally is read at log rows,
  checkpoints and the run's end, always before anything is written, so a non-finite update
  still stops the run with only finite checkpoints kept.

Both give each seed the same key sequence as a run alone: the act key and the update keys
split off the seed's key in the same order.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from mlr_jax import device_frames, device_replay, parallel
from mlr_jax.agents import dmc_aux
from mlr_jax.agents.common import FINITE
from mlr_jax.config import AtariConfig
from mlr_jax.domains import importance_beta

_split_keys = jax.jit(jax.vmap(jax.random.split))


def split_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every seed's ``key, sub = jax.random.split(key)`` on the host, as its own run does."""
    pairs = np.array(jax.device_get(_split_keys(keys)))  # writable: a resume sets rows
    return pairs[:, 0], pairs[:, 1]


class NonFinite(Exception):
    """A learner found a non-finite update: ``seed`` (position in the group), ``update``
    (its number), ``step`` (the agent step) and its ``metrics``."""

    def __init__(self, seed: int, update: int, step: int, metrics: dict[str, Any]):
        self.seed, self.update, self.step, self.metrics = seed, update, step, metrics
        super().__init__(f"update {update} of seed {seed} at step {step}")


def window_means(window: list[dict[str, Any]]) -> dict[str, float]:
    """``train/<name>`` means of the scalar metrics of the updates since the last log row;
    NaN entries (e.g. the DMC actor loss on updates without an actor step) are skipped."""
    if not window:
        return {}
    stacked = jax.device_get({k: [m[k] for m in window] for k in window[0] if k != FINITE})
    means = {}
    for k, v in stacked.items():
        v = np.asarray(v, np.float64)
        if not np.isnan(v).all():
            means[f"train/{k}"] = float(np.nanmean(v))
    return means


class HostLearner:
    """Batches from the host replays; see the module doc."""

    def __init__(self, group: Any, keys: np.ndarray, update: Callable[..., Any], tables: Any):
        self.keys = keys
        self._step = device_frames.parallel_train_step(group.layout, update, group.domain.axes, tables)
        self._windows: list[list[dict[str, Any]]] = [[] for _ in group.members]

    def act(self, group: Any) -> np.ndarray:
        self.keys, act_keys = split_keys(self.keys)
        obs = group.obs
        return group.domain.explore(group.state, obs, act_keys, group.step,
                                    [m.rng for m in group.members])

    def after_store(self, group: Any) -> None:
        """Nothing: the host replays are what this learner samples."""

    def learn(self, group: Any, stored: int) -> None:
        domain, members = group.domain, group.members
        self.keys, update_keys = split_keys(self.keys)
        with group.timed("sample"):
            batches = [domain.sample(m.replay, stored, m.rng) for m in members]
        with group.timed("update"):
            group.state, metrics = self._step(group.state, _stack(batches), update_keys)
            metrics = jax.device_get(metrics)
        update = group.updates + 1
        for i, (m, batch) in enumerate(zip(members, batches)):
            mine = {k: v[i] for k, v in metrics.items()}
            if not bool(np.asarray(mine[FINITE])):
                raise NonFinite(i, update, group.step, mine)
            domain.after_update(m.replay, batch, mine)
            self._windows[i].append({k: v for k, v in mine.items() if np.ndim(v) == 0})

    def check(self, group: Any) -> None:
        """Nothing: every update was checked as it came back."""

    def window_means(self, group: Any) -> list[dict[str, float]]:
        means = [window_means(w) for w in self._windows]
        self._windows = [[] for _ in self._windows]
        return means

    def split_host_keys(self) -> np.ndarray:
        self.keys, sub = split_keys(self.keys)
        return sub

    def host_keys(self) -> np.ndarray:
        return self.keys

    def sync_replays(self, group: Any) -> None:
        """Nothing: the host replays hold the priorities."""


class DeviceLearner:
    """Batches, priorities, keys and metrics on the devices; see the module doc."""

    def __init__(self, group: Any, keys: np.ndarray, update: Callable[..., Any]):
        cfg, domain, layout = group.cfg, group.domain, group.layout
        replays = [m.replay for m in group.members]
        self.replay = device_replay.DeviceReplay(layout, replays)
        self.keys = layout.put_seeds(keys)
        self._layout = layout
        self._atari = isinstance(cfg, AtariConfig)
        seq_batch = 0 if self._atari or not dmc_aux.objective(cfg).sequence_length(cfg) else cfg.aux_batch_size
        update = device_replay.update_from_replay(update, self.replay, cfg.batch_size, seq_batch)
        self._learn = layout.seed_program(device_replay.tallying(update), domain.axes,
                                          num_seed_args=4, num_outputs=3, num_shared=2,
                                          donate=(0, 1, 2, 4))
        extra = len(domain.policy_args(0))
        self._act = layout.map_seeds(device_replay.acting(domain.agent.act), domain.axes,
                                     0, 0, 0, *(None,) * extra)
        self._split = jax.jit(jax.vmap(lambda k: jax.random.split(k)[0]))
        tally = device_replay.new_tally(_metric_shapes(update, group.shapes, self.replay),
                                        group.updates)
        axes = jax.tree.map(lambda _: 0, tally)
        self.tally = layout.put(parallel.stack([tally] * len(replays), axes), axes)
        self._reset = layout.per_seed(device_replay.reset_tally, 1, donate=(0,))
        self._flatten = jax.jit(lambda tree: jnp.concatenate(
            [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]))
        self._beta = (lambda stored: importance_beta(cfg, stored)) if self._atari else (lambda stored: 0.0)

    def act(self, group: Any) -> np.ndarray:
        domain, members = group.domain, group.members
        obs = group.obs
        if group.step < domain.random_steps:
            self._keep(self._split(self.keys))  # the act key a run alone splits off too
            return domain.random_actions(obs, [m.rng for m in members])
        packed, keys = self._act(group.state, obs, self.keys, self.tally["bad"],
                                 *domain.policy_args(group.step))
        self._keep(keys)
        packed = jax.device_get(packed)  # the one copy of the step
        if (packed[:, -1] >= 0).any():
            self.check(group)
        return packed[:, :-1].reshape(obs.shape[:2] + _action_shape(group)).astype(_action_dtype(group))

    def _keep(self, keys: jax.Array) -> None:
        """The new keys, laid out as the update program takes them (split over the seeds;
        a device-to-device move at most), so that program compiles once."""
        self.keys = self._layout.seeds_split(keys)

    def after_store(self, group: Any) -> None:
        self.replay.write_newest([m.replay for m in group.members])

    def learn(self, group: Any, stored: int) -> None:
        with group.timed("update"):
            group.state, self.keys, self.replay.arrays, self.tally = self._learn(
                group.state, self.keys, self.replay.arrays, self.replay.tables.table, self.tally,
                np.float32(self._beta(stored)), np.int32(group.step))

    def _read_tally(self) -> dict[str, Any]:
        """The tally on the host, in one copy (its leaves packed in one float32 array;
        counts and update numbers stay below 2^24, exact in float32)."""
        flat = np.asarray(jax.device_get(self._flatten(self.tally)))
        leaves, treedef = jax.tree.flatten(self.tally)
        sizes = np.cumsum([x.size for x in leaves])[:-1]
        return jax.tree.unflatten(treedef, [part.reshape(x.shape) for part, x
                                            in zip(np.split(flat, sizes), leaves)])

    def check(self, group: Any, tally: dict[str, Any] | None = None) -> None:
        """Raise :class:`NonFinite` if a seed's update went non-finite (reads the tally)."""
        tally = self._read_tally() if tally is None else tally
        bad = tally["bad"]
        if (bad >= 0).any():
            i = int(np.flatnonzero(bad >= 0)[np.argmin(bad[bad >= 0])])
            metrics = {k: v[i] for k, v in tally["bad_metrics"].items()} | {FINITE: False}
            raise NonFinite(i, int(bad[i]), int(tally["bad_step"][i]), metrics)

    def window_means(self, group: Any) -> list[dict[str, float]]:
        tally = self._read_tally()
        self.check(group, tally)
        self.tally = self._reset(self.tally)
        means = []
        for i in range(len(group.members)):
            means.append({f"train/{k}": float(tally["sum"][k][i]) / int(tally["count"][k][i])
                          for k in tally["sum"] if int(tally["count"][k][i])})
        return means

    def split_host_keys(self) -> np.ndarray:
        keys, sub = split_keys(self.keys)
        self.keys = self._layout.put_seeds(keys)
        return sub

    def host_keys(self) -> np.ndarray:
        return np.array(jax.device_get(self.keys))

    def sync_replays(self, group: Any) -> None:
        self.check(group)
        self.replay.pull_priorities([m.replay for m in group.members])


def make_learner(group: Any, keys: np.ndarray, update: Callable[..., Any], tables: Any):
    """The learner ``run.sampler`` asks for (:func:`mlr_jax.parallel.sampler`)."""
    if parallel.sampler(group.cfg.run.sampler) == "device":
        return DeviceLearner(group, keys, update)
    return HostLearner(group, keys, update, tables)


def _stack(trees: list[Any]) -> Any:
    """Host trees of the seeds -> one tree with a leading seed axis (a view for one seed)."""
    if len(trees) == 1:
        return jax.tree.map(lambda x: np.expand_dims(np.asarray(x), 0), trees[0])
    return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _metric_shapes(update: Callable[..., Any], state_shapes: Any, replay: Any) -> dict:
    """The metrics one update returns (one seed, traced abstractly)."""
    one = lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype)  # noqa: E731
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    return jax.eval_shape(lambda *args: update(*args)[3], state_shapes, key,
                          jax.tree.map(one, replay.arrays), one(replay.tables.table), 0.5)


def _action_shape(group: Any) -> tuple[int, ...]:
    return () if isinstance(group.cfg, AtariConfig) else (group.env.first.action_dim,)


def _action_dtype(group: Any) -> Any:
    return np.int32 if isinstance(group.cfg, AtariConfig) else np.float32
