"""The memory of a seed group on its devices and hosts, from the compiled program: one
model behind the start-up refusal of every run (:func:`check_group`), ``mlr-jax sweep ...
--dry-run`` and a sweep's choice of group size (:func:`largest_group`).

Per seed, for a config (:func:`seed_figures`):

- ``state``: the agent state (online, target and momentum parameters, optimiser state), the
  bytes of :func:`jax.eval_shape` of the agent's ``init``;
- ``update``: the train step's temporaries at the per-device batch, from XLA's
  ``jit(...).lower(...).compile().memory_analysis()`` on this machine's backend (a CPU
  plans for an accelerator with the CPU compiler's figure: an estimate, its fusions differ);
- ``act``: the acting program's temporaries, likewise;
- ``batch``: one batch's pixels (uint8; the device reads its share, gathered from its frame
  table or copied from the host; the host holds a seed's whole batch while the frames stay
  there);
- ``device_frames``: with the frames on the devices, the frame table as
  :class:`mlr_jax.device_frames.FrameTables` allocates it (``replay_capacity + 1`` rows);
- ``replay`` (host): the host replay's stored frames (:func:`mlr_jax.domains.memory_needed`).

A device holds ``seeds / seed_shards`` seeds (:func:`mlr_jax.parallel.seed_shards`; every
seed under several hosts); temporaries are counted once per seed on a device (the vmapped
step's buffers grow with the seeds it holds). Every host holds every seed's replay. On the
CPU backend the devices are the host's memory, so their parts count against the host.

A resumed run needs no more: its state is restored instead of initialised (never both on the
devices), and the frame tables are reloaded in place, a block at a time
(:meth:`mlr_jax.device_frames.FrameTables.load`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import jax
import numpy as np

from mlr_jax import domains, host, parallel
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig

# the action counts planned for: Atari's full action set, the largest DMC action (walker,
# cheetah); more actions only widen the last layers
PLAN_ACTIONS = {"atari": 18, "dmc": 6}
UNITS = {"KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40,
         "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12, "B": 1}


def parse_bytes(text: str) -> int:
    """``"80GiB"``, ``"16 GB"``, ``"1.5e9"`` -> bytes; a clear error naming the text otherwise."""
    value = text.strip()
    for unit in sorted(UNITS, key=len, reverse=True):
        if value.endswith(unit):
            number, scale = value[: -len(unit)].strip(), UNITS[unit]
            break
    else:
        number, scale = value, 1
    try:
        size = float(number) * scale
    except ValueError:
        raise ConfigError(f"--device-memory {text!r}: expected a size such as 80GiB, 16GB or "
                          "17179869184") from None
    if not math.isfinite(size) or size <= 0:
        raise ConfigError(f"--device-memory {text!r} must be a positive size")
    return int(size)


def _agent(cfg: AtariConfig | DMCConfig) -> Any:
    if isinstance(cfg, AtariConfig):
        from mlr_jax.agents import atari
        return atari.make_agent(cfg, PLAN_ACTIONS["atari"])
    from mlr_jax.agents import dmc
    return dmc.make_agent(cfg, PLAN_ACTIONS["dmc"])


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


def seed_figures(cfg: AtariConfig | DMCConfig, data_shards: int = 1,
                 compiled: bool = True) -> dict[str, int]:
    """Bytes one seed needs: ``state``, ``update`` and ``act`` temporaries (compiled at the
    batch one of ``data_shards`` devices gets; 0 without ``compiled``: compiling the update
    takes 12-28 s on a CPU), ``batch``, ``device_frames`` and the host's ``replay`` (see the
    module doc)."""
    domain = "atari" if isinstance(cfg, AtariConfig) else "dmc"
    local = dataclasses.replace(cfg, batch_size=max(1, cfg.batch_size // data_shards))
    if isinstance(cfg, DMCConfig):
        local = dataclasses.replace(local, aux_batch_size=max(1, cfg.aux_batch_size // data_shards))
    agent = _agent(local)
    key = jax.ShapeDtypeStruct((2,), np.uint32)
    state = jax.eval_shape(agent.init, key)
    update = act = 0
    if compiled:
        from mlr_jax.bench.runner import random_batch

        batch = _abstract(random_batch(local, PLAN_ACTIONS[domain], seed=0))
        update = jax.jit(agent.train_step).lower(state, batch, key).compile().memory_analysis().temp_size_in_bytes
        obs_shape = (1, cfg.frame_stack * (1 if domain == "atari" else 3), cfg.image_size, cfg.image_size)
        obs = jax.ShapeDtypeStruct(obs_shape, np.uint8)
        act_args = (state, obs, key, 0.0) if domain == "atari" else (state, obs, key)
        act = jax.jit(agent.act).lower(*act_args).compile().memory_analysis().temp_size_in_bytes
    needed = domains.memory_needed(cfg)
    return {"state": int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))),
            "update": int(update), "act": int(act), "batch": needed["batch"][0],
            "device_frames": needed["device_frames"][0], "replay": needed["replay"][0]}


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """A group of ``seeds`` on ``devices`` devices per host over ``hosts`` hosts: the bytes of
    each part on one device and on one host, and whether they fit."""

    seeds: int
    per_device: dict[str, int]
    per_host: dict[str, int]
    device_memory: int | None
    host_memory: int | None

    @property
    def device_total(self) -> int:
        return sum(self.per_device.values())

    @property
    def host_total(self) -> int:
        return sum(self.per_host.values())

    @property
    def device_fits(self) -> bool:
        return self.device_memory is None or self.device_total <= self.device_memory

    @property
    def host_fits(self) -> bool:
        return self.host_memory is None or self.host_total <= self.host_memory

    @property
    def fits(self) -> bool:
        return self.device_fits and self.host_fits

    def describe(self) -> str:
        size = host.format_bytes

        def parts(d: dict[str, int]) -> str:
            return ", ".join(f"{k.replace('_', ' ')} {size(v)}" for k, v in d.items() if v)

        dev = f"of {size(self.device_memory)}" if self.device_memory else "(device size unknown)"
        hst = f"of {size(self.host_memory)}" if self.host_memory else "(host size unknown)"
        temps = "" if self.per_device["update"] else "; the update's temporaries not compiled"
        return (f"{self.seeds} seed{'s' if self.seeds > 1 else ''}: each device "
                f"{size(self.device_total)} {dev} ({parts(self.per_device)}{temps}); "
                f"each host {size(self.host_total)} {hst} ({parts(self.per_host)})")


def plan_group(figures: dict[str, int], seeds: int, devices: int, hosts: int = 1,
               frames_on_device: bool = True, device_memory: int | None = None,
               host_memory: int | None = None, devices_in_host: bool = False) -> GroupPlan:
    """The memory of a group of ``seeds`` with one seed's ``figures`` (:func:`seed_figures`,
    compiled at the batch of one data shard of this layout). ``devices_in_host``: the
    devices are the host's memory (the CPU backend), so the host also holds every device's
    parts."""
    total_devices = devices * hosts
    shards = 1 if hosts > 1 else math.gcd(seeds, total_devices)
    on_device = seeds // shards
    split = total_devices // shards  # a seed's batch is split over these
    per_device = {"state": on_device * figures["state"],
                  "update": on_device * figures["update"], "act": on_device * figures["act"],
                  "batch": on_device * figures["batch"] // split,
                  "device_frames": on_device * figures["device_frames"] if frames_on_device else 0}
    per_host = {"replay": seeds * figures["replay"],
                "batch": 0 if frames_on_device else seeds * figures["batch"]}
    if devices_in_host:
        per_host["devices"] = devices * sum(per_device.values())
    return GroupPlan(seeds, per_device, per_host, device_memory, host_memory)


def check_group(cfg: AtariConfig | DMCConfig, num_seeds: int, host_memory: int | None = None,
                device_memory: int | None = None, compiled: bool | None = None) -> GroupPlan:
    """The plan of a group of ``num_seeds`` runs of ``cfg`` on this runtime's devices and
    processes, checked before anything is allocated (:func:`mlr_jax.loop.train_group`).

    Args:
      host_memory: bytes this host can take (default :func:`mlr_jax.host.available_memory`).
      device_memory: bytes a device can hold (default, on an accelerator, its
        ``memory_stats()["bytes_limit"]``; on the CPU backend the devices are the host).
      compiled: count the update's and the act's temporaries, compiled by XLA for one seed
        (default: on an accelerator, where memory is what stops a group; a CPU run would pay
        12-28 s of compilation for it).

    Raises:
      ConfigError: the group does not fit; the message names each part and where.
    """
    accelerator = parallel.on_accelerator()
    if host_memory is None:
        host_memory = host.available_memory()
    if device_memory is None and accelerator:
        device_memory = parallel.device_memory_limit()
    hosts = parallel.process_count()
    devices = parallel.device_count() // hosts
    frames_on_device = parallel.replay_frames(cfg.run.replay_frames) == "device"
    figures = seed_figures(cfg, data_shards(num_seeds, devices, hosts),
                           compiled=accelerator if compiled is None else compiled)
    group = plan_group(figures, num_seeds, devices, hosts, frames_on_device, device_memory,
                       host_memory, devices_in_host=not accelerator)
    if not group.fits:
        where = "each device" if not group.device_fits else "this host"
        counted = {k for part in (group.per_device, group.per_host) for k, v in part.items() if v}
        how = "; ".join(f"{k.replace('_', ' ')}: {text}" for k, (_, text) in domains.memory_needed(cfg).items()
                        if k in counted)
        raise ConfigError(f"this group does not fit in memory on {where}: {group.describe()}. "
                          f"A seed's frames: {how}. Lower batch_size or replay_capacity, or the "
                          "seeds per group (mlr-jax sweep ... --dry-run plans a sweep's groups)")
    return group


def data_shards(seeds: int, devices: int, hosts: int = 1) -> int:
    """Devices a seed's batch is split over (the mesh's ``data`` axis)."""
    total = devices * hosts
    return total // (1 if hosts > 1 else math.gcd(seeds, total))


def largest_group(cfg: AtariConfig | DMCConfig, num_seeds: int, devices: int, hosts: int = 1,
                  frames_on_device: bool = True, device_memory: int | None = None,
                  host_memory: int | None = None) -> tuple[GroupPlan, list[GroupPlan]]:
    """The largest group of at most ``num_seeds`` seeds that fits (the first try is every
    seed; each smaller size is tried down to 1), and every plan tried. Figures are compiled
    once per data split."""
    cache: dict[int, dict[str, int]] = {}
    tried = []
    for size in range(num_seeds, 0, -1):
        shards = data_shards(size, devices, hosts)
        if shards not in cache:
            cache[shards] = seed_figures(cfg, shards)
        group = plan_group(cache[shards], size, devices, hosts, frames_on_device,
                           device_memory, host_memory)
        tried.append(group)
        if group.fits:
            return group, tried
    return tried[-1], tried


def updates_per_run(cfg: AtariConfig | DMCConfig) -> int:
    """The updates one run makes (Atari: from ``learning_starts``, ``updates_per_step`` a
    step; DMC: one a step after the ``seed_steps`` of random actions)."""
    if isinstance(cfg, AtariConfig):
        return max(0, cfg.steps - cfg.learning_starts) * cfg.updates_per_step
    return max(0, cfg.agent_steps - cfg.seed_steps)


RECORD_DIRS = ("benchmarks/results", "runs/bench")


def _records(pattern: str) -> list[tuple[pathlib.Path, dict[str, Any]]]:
    """The bench records in :data:`RECORD_DIRS` whose file names match ``pattern``."""
    return [(path, json.loads(path.read_text()))
            for folder in RECORD_DIRS for path in pathlib.Path(folder).glob(pattern)]


def latest_update_record(cfg: AtariConfig | DMCConfig, seeds: int) -> tuple[str, float] | None:
    """(path, ms per seed-update) of the newest accelerator bench record of this domain,
    preset and objective at the group size nearest ``seeds``; None if there is none."""
    domain = "atari" if isinstance(cfg, AtariConfig) else "dmc"
    agent = {"mlr": "", "none": "-baseline"}.get(cfg.aux, f"-{cfg.aux}")
    found = []
    for path, record in _records(f"{domain}_{cfg.run.preset}{agent}*_*_*.json"):
        parts = path.stem.split("_")
        jax_part = record.get("jax") or {}
        if len(parts) >= 4 and parts[-3] != "cpu" and "ms_per_seed_update" in jax_part:
            found.append((abs(jax_part.get("num_seeds", 1) - seeds), record.get("date", ""),
                          str(path), float(jax_part["ms_per_seed_update"])))
    if not found:
        return None
    found.sort(key=lambda r: r[1], reverse=True)  # newest first,
    found.sort(key=lambda r: r[0])  # then (stable) the nearest group size
    return found[0][2], found[0][3]


def latest_host_record(cfg: AtariConfig | DMCConfig, seeds: int) -> tuple[str, float, str] | None:
    """(path, host ms per seed-step, device) of the host-only loop record of this domain and
    preset (``mlr-jax bench --loop N --host-only``) of the sampler the plan's runs use
    (``auto``: the accelerators' ``device``) if there is one, at the group size nearest
    ``seeds``, the newest of those; None if there is none."""
    domain = "atari" if isinstance(cfg, AtariConfig) else "dmc"
    wanted = "device" if cfg.run.sampler == "auto" else cfg.run.sampler
    found = [(record["config"]["run"].get("sampler") != wanted, abs(record.get("num_seeds", 1) - seeds),
              record.get("date", ""), str(path), float(record["host_ms_per_seed_step"]),
              record.get("device", "?"))
             for path, record in _records(f"loop_{domain}_{cfg.run.preset}*-host_*.json")]
    if not found:
        return None
    found.sort(key=lambda r: r[2], reverse=True)  # newest first,
    found.sort(key=lambda r: r[:2])  # then (stable) the sampler, then the nearest group size
    return found[0][3], found[0][4], found[0][5]


def sweep_plan(domain: str, names: list[str], auxes: list[str], seeds: list[int], make: Any,
               group_size: int | None, device_memory: str | None, devices: int | None,
               hosts: int = 1) -> tuple[dict[str, int], str]:
    """The plan of a sweep: per objective the group size (``group_size``, or the largest that
    fits), its memory per device and per host with each part named, the jobs, and the update
    time from the latest bench records. Returns ``({aux: group size}`` for the objectives
    whose groups fit, empty if one does not fit even alone; the text)."""
    from mlr_jax import sweep

    if group_size is not None and group_size < 1:
        raise ConfigError(f"group size must be at least 1, got {group_size}")
    if hosts < 1 or (devices is not None and devices < 1):
        raise ConfigError(f"--devices and --hosts must be at least 1, got {devices} and {hosts}")
    memory = (parse_bytes(device_memory) if device_memory is not None
              else parallel.device_memory_limit() if parallel.on_accelerator() else None)
    devices = devices or parallel.device_count()
    size = host.format_bytes
    lines = [f"[plan] {domain}: {len(names)} x {len(auxes)} x {len(seeds)} = "
             f"{len(names) * len(auxes) * len(seeds)} runs on {hosts} host(s) x {devices} device(s) of "
             + (f"{size(memory)}" if memory else "unknown size (give --device-memory)")]
    groups: dict[str, int] = {}
    for aux in auxes:
        cfgs = [make(name, aux) for name in names]
        cfg = max(cfgs, key=lambda c: domains.memory_needed(c)["replay"][0])  # the largest replay
        on_device = cfg.run.replay_frames == "device" or (
            cfg.run.replay_frames == "auto" and (memory is not None or parallel.on_accelerator()))
        if group_size is not None:
            shards = data_shards(group_size, devices, hosts)
            tried = [plan_group(seed_figures(cfg, shards), group_size, devices, hosts, on_device, memory)]
            chosen = tried[0]
        else:
            chosen, tried = largest_group(cfg, len(seeds), devices, hosts, on_device, memory)
        for group in tried[:-1]:
            lines.append(f"[plan] {aux}: does not fit: {group.describe()}")
        frames = "frames on the devices" if on_device else "frames on the hosts"
        if not chosen.fits:
            lines.append(f"[plan] {aux}: DOES NOT FIT: {chosen.describe()} ({frames})")
            continue
        groups[aux] = chosen.seeds
        jobs = sweep.plan(names, [aux], seeds, chosen.seeds)
        lines.append(f"[plan] {aux}: groups of {chosen.seeds} ({frames}): {chosen.describe()}")
        lines.append(f"[plan] {aux}: {len(jobs)} jobs: " + ", ".join(str(j) for j in jobs[:4])
                     + (f", ... ({len(jobs) - 4} more)" if len(jobs) > 4 else ""))
        record = latest_update_record(cfg, chosen.seeds)
        updates = updates_per_run(cfg)
        if record is None:
            lines.append(f"[plan] {aux}: {updates} updates a run; no accelerator bench record of "
                         f"{domain}/{cfg.run.preset} ({aux}) in {' or '.join(RECORD_DIRS)} to time "
                         "them: run benchmarks/gpu_check.sh on one")
        else:
            path, ms = record
            hours = ms * updates * len(names) * len(seeds) / 3.6e6
            lines.append(f"[plan] {aux}: {updates} updates a run at {ms:.2f} ms a seed-update "
                         f"({path}): {hours:.1f} device-hours of updates for {len(names) * len(seeds)} runs")
        host_record = latest_host_record(cfg, chosen.seeds)
        steps = cfg.steps if isinstance(cfg, AtariConfig) else cfg.agent_steps
        if host_record is None:
            lines.append(f"[plan] {aux}: host work (environments, replay, acting): no host-only loop "
                         f"record of {domain}/{cfg.run.preset} in {' or '.join(RECORD_DIRS)}: "
                         f"run mlr-jax bench --loop 100 --host-only --domain {domain}")
        else:
            path, ms, device = host_record
            hours = ms * steps * len(names) * len(seeds) / 3.6e6
            lines.append(f"[plan] {aux}: host work {ms:.2f} ms a seed-step ({path}, {device}): "
                         f"{hours:.1f} hours for {len(names) * len(seeds)} runs of {steps} steps if "
                         "none of it overlaps the devices")
    if len(groups) < len(auxes):
        return {}, "\n".join(lines)
    return groups, "\n".join(lines)
