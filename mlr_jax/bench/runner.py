"""Throughput of one MLR update: the JAX agent against the eager PyTorch port of the authors' code.

:func:`run_benchmark` builds both frameworks from the SAME config (``make_config(domain, None,
preset)``), feeds them the same random uint8 replay batches of the right shapes, and times full
updates after a warm-up (JAX: the loop's jitted, seed-batched train step on one device, including
the host-to-device copy of the batch, waited on with ``jax.block_until_ready``; torch:
``update(batch)``, also copying the batch, with ``torch.cuda.synchronize`` on GPU). For DMC one
timed unit is two agent steps (the actor and the EMAs run every other step) and times are
reported per step. It also records FLOPs per update (XLA cost analysis, cross-checked with
``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls and convolutions only), the
acting path (one jitted ``act`` for one observation), and envpool steps per second alone.

torch is optional: it is imported only when ``"torch"`` is among ``frameworks``.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from mlr_jax import domains, host, parallel
from mlr_jax import device_frames
from mlr_jax.agents.common import precision_record, seed_axes
from mlr_jax.bench.profile import trace_units
from mlr_jax.bench.timing import DEFAULT_OUTDIR, median_ms, time_calls, write_record
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig, make_config, to_dict
from mlr_jax.replay.frames import FrameRows

DOMAINS = ("atari", "dmc")
DEVICES = ("cpu", "gpu")
# "torch-glibc": the same PyTorch port in a child process with glibc's default allocator
# (MLR_JAX_MALLOC=default), i.e. as the authors' code runs; "torch" shares this process and
# therefore the allocator settings of mlr_jax.host.
FRAMEWORKS = ("jax", "torch", "torch-glibc")
DEFAULT_ACTIONS = {"atari": 6, "dmc": 1}  # Pong's minimal action set, cartpole's action size


TORCH_INSTALL = ("pip install 'mlr-jax[bench]' (or: bash scripts/setup.sh --bench), or leave it "
                 "out with --frameworks jax")


class BenchmarkError(ConfigError):
    """A benchmark argument cannot be honoured (names the value)."""


# ------------------------------------------------------------------ random batches


def random_batch(cfg: AtariConfig | DMCConfig, num_actions: int, seed: int = 0) -> Any:
    """A replay batch of the shapes the agents train on, uint8 frames drawn uniformly.

    Atari: ``AtariBatch`` (obs u8[B, max(K, n+1), F, 84, 84]); DMC: ``DMCBatch(SACBatch,
    SeqBatch)`` at the rendered size (100x100), ``num_actions`` = action dimension.
    """
    rng = np.random.default_rng(seed)

    def frames(*shape):
        return rng.integers(0, 256, shape, dtype=np.uint8)

    if isinstance(cfg, AtariConfig):
        from mlr_jax.agents.atari_aux import window
        from mlr_jax.replay.atari import AtariBatch

        b, length = cfg.batch_size, max(window(cfg), cfg.n_step + 1)
        return AtariBatch(
            obs=frames(b, length, cfg.frame_stack, cfg.image_size, cfg.image_size),
            actions=rng.integers(0, num_actions, (b, length)).astype(np.int32),
            returns=rng.normal(size=b).astype(np.float32),
            discounts=np.full(b, cfg.gamma ** cfg.n_step, np.float32),
            weights=rng.uniform(0.5, 1.0, b).astype(np.float32),
            indices=np.arange(b, dtype=np.int64),
            first_done=np.full(b, length, np.int32))
    from mlr_jax.agents.dmc import DMCBatch
    from mlr_jax.agents.dmc_aux import objective
    from mlr_jax.replay.dmc import SACBatch, SeqBatch

    shape = (3 * cfg.frame_stack, cfg.image_size, cfg.image_size)
    b, bs, k = cfg.batch_size, cfg.aux_batch_size, cfg.mlr.seq_len
    sac = SACBatch(obs=frames(b, *shape), action=rng.uniform(-1, 1, (b, num_actions)).astype(np.float32),
                   reward=rng.normal(size=b).astype(np.float32), discount=np.ones(b, np.float32),
                   next_obs=frames(b, *shape))
    seq = SeqBatch(obs=frames(bs, k, *shape),
                   action=rng.uniform(-1, 1, (bs, k, num_actions)).astype(np.float32))
    return DMCBatch(sac=sac, seq=seq if objective(cfg).sequence_length(cfg) else None)


def as_frame_rows(batch: Any, frame_shape: tuple[int, ...]) -> tuple[np.ndarray, Any]:
    """A pixel batch as a frame table and the same batch with ``FrameRows``, the form the train
    step takes with ``run.replay_frames=device``: every uint8 leaf ``[..., F*C, H, W]`` is cut
    into its ``frame_shape`` frames, each one row of the table (plus a final zero row), so
    gathering the rows gives back exactly ``batch``."""
    channels = frame_shape[0] if len(frame_shape) == 3 else 1
    frames: list[np.ndarray] = []

    def convert(x):
        x = np.asarray(x)
        if x.dtype != np.uint8:
            return x
        offset = sum(len(f) for f in frames)
        frames.append(x.reshape((-1,) + tuple(frame_shape)))
        rows = np.arange(offset, offset + len(frames[-1]), dtype=np.int32)
        return FrameRows(rows.reshape(x.shape[:-3] + (x.shape[-3] // channels,)))

    rows_batch = jax.tree.map(convert, batch)
    frames.append(np.zeros((1,) + tuple(frame_shape), np.uint8))
    return np.concatenate(frames), rows_batch


# ------------------------------------------------------------------ timing


def _summarise(timing: dict[str, Any], updates_per_call: int, flops: float | None) -> dict[str, Any]:
    per_update = [t / updates_per_call for t in timing["times_s"]]
    median = statistics.median(per_update)
    out = {"median_ms": 1e3 * median, "min_ms": 1e3 * min(per_update), "max_ms": 1e3 * max(per_update),
           "updates_per_s": 1.0 / median, "first_call_s": timing["first_call_s"],
           "repeats": len(per_update), "flops_per_update": flops}
    out["achieved_tflops"] = flops / median / 1e12 if flops else None
    return out


def _xla_flops(make_agent: Callable[..., Any], cfg, num_actions: int, lower: Callable[..., Any]
               ) -> float | None:
    """FLOPs of one step from XLA's cost analysis of the step with ``run.conv_impl=xla``.

    The im2col convolutions loop over chunks and the cost analysis counts a loop body once, so
    the count is taken from the same update written with plain convolutions (only lowered,
    not compiled: the analysis of the unoptimised HLO). ``lower(train_step)`` lowers the
    benchmarked step built around an agent's ``train_step``."""
    xla_cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, conv_impl="xla"))
    cost = lower(make_agent(xla_cfg, num_actions).train_step).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = (cost or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


# ------------------------------------------------------------------ JAX


def _act_ms(agent: Any, state: Any, batch: Any, key: jax.Array, domain: str, repeats: int) -> float:
    """Median ms of one jitted ``act`` for one observation (training behaviour)."""
    obs = batch.obs[:1, 0] if domain == "atari" else batch.sac.obs[:1]
    act = jax.jit(agent.act)
    args = (state, obs, key) + ((0.0,) if domain == "atari" else ())
    return median_ms(lambda: jax.block_until_ready(act(*args)), max(repeats, 20), 3)


def _bench_jax(cfg, domain: str, num_actions: int, batch: Any, repeats: int, warmup: int,
               seed: int, profile_dir: str | os.PathLike | None = None,
               num_seeds: int = 1) -> dict[str, Any]:
    """Time the loop's update of ``num_seeds`` seeds (one seed-batched step on one device, as
    :func:`mlr_jax.parallel.layout` runs a group); ``median_ms`` is per call, that is per
    update of every seed, and ``seed_updates_per_s`` counts each seed's update."""
    if domain == "atari":
        from mlr_jax.agents.atari import make_agent
    else:
        from mlr_jax.agents.dmc import make_agent
    agent = make_agent(cfg, num_actions)
    key = jax.random.PRNGKey(seed)
    state = agent.init(key)
    unit = 1 if domain == "atari" else 2
    param_counts = agent.param_counts(state)
    act_ms = _act_ms(agent, state, batch, key, domain, repeats)
    axes = seed_axes(state)
    del state

    # The loop's step on one device, compiled ahead of time once and timed (step = host batch
    # to the device, update, metrics back). With the replay frames on the device the batch
    # travels as rows of a frame table already there, as in training.
    layout = parallel.layout(num_seeds, num_devices=1)
    seed_keys = np.asarray(jax.random.split(key, num_seeds))
    holder = {"state": layout.stacked(agent.init, seed_keys, axes), "i": 0}
    replay_frames = parallel.replay_frames(cfg.run.replay_frames)
    tables = ()
    if replay_frames == "device":
        table, batch = as_frame_rows(batch, domains.frame_shape(cfg))
        tables = (layout.put_seeds(np.broadcast_to(table, (num_seeds, *table.shape))),)
    batches = jax.tree.map(lambda x: np.broadcast_to(x, (num_seeds, *np.shape(x))), batch)

    keys = np.asarray(jax.random.split(key, ((repeats + warmup + 3) * unit, num_seeds)))

    def build(train_step):
        reads = device_frames.reading_frames(train_step) if tables else train_step
        return layout.train_step(reads, axes, num_tables=len(tables))

    step = build(agent.train_step)

    def inputs(i):  # the host batches and keys of call i, on the devices
        return step.put(batches, keys[i])

    def lower(train_step):
        return build(train_step).jitted.lower(holder["state"], *inputs(0), *tables)

    flops = _xla_flops(make_agent, cfg, num_actions, lower)
    start = time.perf_counter()
    compiled = lower(agent.train_step).compile()
    compile_s = time.perf_counter() - start

    def one_unit():
        for _ in range(unit):
            holder["state"], metrics = compiled(holder["state"], *inputs(holder["i"]), *tables)
            holder["i"] += 1
        jax.device_get(metrics)
        jax.block_until_ready(holder["state"])

    timing = time_calls(one_unit, repeats, warmup)
    if profile_dir is not None:
        holder["i"] = 0
        profile = trace_units(one_unit, profile_dir, units=2, updates_per_unit=unit)
    out = _summarise(timing, unit, flops)
    out.update(act_ms=act_ms, param_counts=param_counts, num_seeds=num_seeds,
               seed_updates_per_s=num_seeds * out["updates_per_s"],
               ms_per_seed_update=out["median_ms"] / num_seeds,
               compile_s=compile_s, device=parallel.device_description(), replay_frames=replay_frames,
               flops_source="xla cost_analysis of the lowered step with conv_impl=xla"
                            + (f" (all {num_seeds} seeds)" if num_seeds > 1 else ""))
    if profile_dir is not None:
        out["profile"] = profile
    return out


# ------------------------------------------------------------------ torch


def _torch_device(device: str) -> Any:
    import torch

    if device == "gpu":
        if not torch.cuda.is_available():
            raise BenchmarkError("device='gpu' but torch.cuda.is_available() is False "
                                 f"(torch {torch.__version__})")
        return torch.device("cuda")
    return torch.device("cpu")


@contextlib.contextmanager
def torch_tf32(enabled: bool) -> Iterator[None]:
    """torch's TF32 switches (matmuls, cuDNN convolutions) set to ``enabled`` inside."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _bench_torch(cfg, domain: str, num_actions: int, batch: Any, device: str, repeats: int,
                 warmup: int, seed: int, threads: int | None) -> dict[str, Any]:
    # the port computes in float32 with TF32 as the JAX side's run.precision (tf32: torch
    # 1.7.1's defaults, the authors' pin; fp32: off); with bf16 it stays at TF32
    with torch_tf32(cfg.run.precision != "fp32"):
        return _time_torch_update(cfg, domain, num_actions, batch, device, repeats, warmup, seed,
                                  threads)


def _time_torch_update(cfg, domain: str, num_actions: int, batch: Any, device: str, repeats: int,
                       warmup: int, seed: int, threads: int | None) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    if threads is not None:
        torch.set_num_threads(threads)
    from mlr_jax.bench import torch_atari, torch_dmc

    port = torch_atari if domain == "atari" else torch_dmc
    dev = _torch_device(device)
    torch.manual_seed(seed)
    update = port.make_update(cfg, num_actions, dev)
    unit = 1 if domain == "atari" else 2

    def one_unit():
        for _ in range(unit):
            update.update(batch)
        torch_atari.sync(dev)

    counter = FlopCounterMode(display=False)
    with counter:
        one_unit()
    flops = counter.get_total_flops() / unit
    obs = batch.obs[:1, 0] if domain == "atari" else batch.sac.obs[:1]

    def act():
        update.act(obs)
        torch_atari.sync(dev)

    act_ms = median_ms(act, max(repeats, 20), 3)
    timing = _summarise(time_calls(one_unit, repeats, warmup), unit, float(flops))
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"cpu x{torch.get_num_threads()} threads")
    timing.update(act_ms=act_ms, param_counts=update.param_counts(),
                  device=name, flops_source="torch FlopCounterMode (matmul/conv only)",
                  settings={"num_threads": torch.get_num_threads(),
                            "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32})
    return timing


def _bench_torch_glibc(domain: str, device: str, preset: str, name: str | None,
                       overrides: Sequence[str], repeats: int, warmup: int, seed: int,
                       torch_threads: int | None) -> dict[str, Any]:
    """The "torch" measurement repeated in a child process that keeps glibc's allocator
    defaults (same config, seed and therefore the same batch)."""
    with tempfile.TemporaryDirectory() as tmp:
        kwargs = dict(domain=domain, device=device, preset=preset, frameworks=["torch"],
                      repeats=repeats, warmup=warmup, outdir=tmp, name=name,
                      overrides=list(overrides), env_steps=0, seed=seed, torch_threads=torch_threads)
        code = ("import json, sys; from mlr_jax.bench.runner import run_benchmark; "
                "run_benchmark(**json.loads(sys.argv[1]))")
        env = dict(os.environ, MLR_JAX_MALLOC="default")
        done = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], env=env,
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchmarkError(f"the torch-glibc child process failed:\n{done.stderr[-3000:]}")
        child = json.loads(next(pathlib.Path(tmp).glob("*.json")).read_text())
    return dict(child["torch"], malloc=child["host"]["malloc"])


# ------------------------------------------------------------------ envpool


def _bench_env(cfg, steps: int, seed: int) -> dict[str, Any]:
    """Steps per second of one environment with random actions (no agent)."""
    from mlr_jax.envs import make_env, random_actions

    env = make_env(cfg, num_envs=1, seed=seed)
    rng = np.random.default_rng(seed)
    env.reset()
    is_atari = isinstance(cfg, AtariConfig)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(random_actions(rng, env))
    elapsed = time.perf_counter() - start
    repeat = cfg.frame_skip if is_atari else cfg.action_repeat
    out = {"agent_steps": steps, "agent_steps_per_s": steps / elapsed,
           "env_frames_per_s": steps * repeat / elapsed,
           "num_actions" if is_atari else "action_dim": env.num_actions if is_atari else env.action_dim}
    env.close()
    return out


# ------------------------------------------------------------------ driver


def _check_args(domain: str, device: str, frameworks: Sequence[str], repeats: int, warmup: int) -> None:
    if domain not in DOMAINS:
        raise BenchmarkError(f"domain must be one of {DOMAINS}, got {domain!r}")
    if device not in DEVICES:
        raise BenchmarkError(f"device must be one of {DEVICES}, got {device!r}")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        raise BenchmarkError(
            f"frameworks must be a non-empty subset of {FRAMEWORKS}, got {tuple(frameworks)!r}")
    if any(f.startswith("torch") for f in frameworks) and importlib.util.find_spec("torch") is None:
        raise BenchmarkError(f"frameworks {','.join(frameworks)} include the PyTorch port but "
                             f"torch is not installed: {TORCH_INSTALL}")
    if repeats < 1 or warmup < 0:
        raise BenchmarkError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if "jax" in frameworks:
        platform_name = parallel.device_description().split(":")[0]
        on_gpu = platform_name in ("gpu", "cuda", "rocm")
        if on_gpu != (device == "gpu"):
            raise BenchmarkError(
                f"device={device!r} but JAX runs on {platform_name!r}; set JAX_PLATFORMS="
                f"{'cuda' if device == 'gpu' else 'cpu'} (or install the matching jaxlib)")


def run_benchmark(domain: str = "atari", device: str = "cpu", preset: str = "paper",
                  frameworks: Sequence[str] = FRAMEWORKS, repeats: int = 10, warmup: int = 2,
                  outdir: str | os.PathLike = DEFAULT_OUTDIR, name: str | None = None,
                  overrides: Sequence[str] = (), env_steps: int = 300, seed: int = 0,
                  torch_threads: int | None = None,
                  profile_dir: str | os.PathLike | None = None, num_seeds: int = 1) -> dict[str, Any]:
    """Time one full update of each framework on identical shapes and hyper-parameters.

    Args:
      domain: ``"atari"`` or ``"dmc"``.
      device: ``"cpu"`` or ``"gpu"`` (JAX must already run on that platform).
      preset: ``"paper"`` or ``"smoke"`` (see :data:`mlr_jax.config.PRESETS`).
      frameworks: any of ``("jax", "torch", "torch-glibc")``: "torch" runs in this process
        (with :mod:`mlr_jax.host`'s allocator settings, like JAX), "torch-glibc" in a child
        process with glibc's defaults, as the authors' code runs.
      repeats: timed units after warm-up (DMC: one unit = two agent steps).
      warmup: untimed units first (at least one is always run; its time is recorded as
        ``first_call_s``; JAX compiles ahead of time, recorded as ``compile_s``).
      outdir: the JSON goes to ``outdir/<domain>_<preset>[-baseline]_<device>_<precision>_<YYYYmmdd-HHMMSS>.json``
        (``-baseline`` for ``aux=none``).
      name: game / task (default: Pong / cartpole_swingup).
      overrides: dotted config overrides, e.g. ``["run.precision=bf16"]`` (the torch port
        computes in float32, with TF32 unless ``run.precision=fp32``).
      env_steps: agent steps of the envpool measurement; 0 skips it.
      seed: seed of the batches, parameters and keys.
      torch_threads: ``torch.set_num_threads`` for the torch run (None keeps torch's default;
        on a shared CPU, 1 avoids OpenMP stalls that make small ops take milliseconds).
      profile_dir: also trace two timed units of the JAX update with ``jax.profiler`` into
        this folder and record the largest ops per update as ``jax.profile``
        (:mod:`mlr_jax.bench.profile`).
      num_seeds: seeds updated by one JAX step, as a group of runs trains
        (:func:`mlr_jax.loop.train_group`), on one device; the record's ``jax`` then has
        ``seed_updates_per_s`` and ``ms_per_seed_update``, and its file name ``-s<S>``.
        Above 1 only JAX is timed (the authors' code trains one seed per process).

    Returns:
      The record written to disk: ``config``, ``versions``, ``date``, ``device``, per framework
      ``{median_ms, min_ms, max_ms, updates_per_s, flops_per_update, achieved_tflops,
      first_call_s, act_ms, param_counts, ...}``, ``jax_speedup`` (torch time / JAX time),
      ``flops_ratio_xla_over_torch``, ``jax_speedup_vs_torch_glibc``, ``envpool``, ``path``
      and a one-line ``summary``.
    """
    frameworks = tuple(frameworks)
    _check_args(domain, device, frameworks, repeats, warmup)
    if num_seeds < 1 or (num_seeds > 1 and frameworks != ("jax",)):
        raise BenchmarkError(f"num_seeds={num_seeds}: it must be at least 1, and above 1 only "
                             "the JAX step is timed (--frameworks jax)")
    cfg = make_config(domain, name, preset, overrides)
    record: dict[str, Any] = {
        "domain": domain, "preset": preset, "device_kind": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": host.describe(),
        "versions": host.versions(), "config": to_dict(cfg), "overrides": list(overrides),
        "precision": precision_record(cfg.run.precision),
        "repeats": repeats, "warmup": warmup, "seed": seed, "num_seeds": num_seeds,
        "updates_per_unit": 1 if domain == "atari" else 2,
    }
    num_actions = DEFAULT_ACTIONS[domain]
    if env_steps > 0:
        try:
            record["envpool"] = _bench_env(cfg, env_steps, seed)
            num_actions = record["envpool"].get("num_actions", record["envpool"].get("action_dim"))
        except Exception as e:  # a missing ROM or GL must not hide the update timings
            record["envpool"] = {"error": f"{type(e).__name__}: {e}"}
    record["num_actions" if domain == "atari" else "action_dim"] = num_actions
    batch = random_batch(cfg, num_actions, seed)
    if "jax" in frameworks:
        from mlr_jax.bench.batches import bench_batches

        record["jax"] = _bench_jax(cfg, domain, num_actions, batch, repeats, warmup, seed,
                                   profile_dir, num_seeds)
        record["batches"] = bench_batches(cfg, num_actions, max(repeats, 10), seed=seed)
    if "torch" in frameworks:
        record["torch"] = _bench_torch(cfg, domain, num_actions, batch, device, repeats, warmup, seed,
                                       torch_threads)
    if "torch-glibc" in frameworks:
        record["torch-glibc"] = _bench_torch_glibc(domain, device, preset, name, overrides, repeats,
                                                   warmup, seed, torch_threads)
    if "jax" in record and "torch" in record:
        record["jax_speedup"] = record["torch"]["median_ms"] / record["jax"]["median_ms"]
        xla, tf = record["jax"]["flops_per_update"], record["torch"]["flops_per_update"]
        record["flops_ratio_xla_over_torch"] = xla / tf if xla and tf else None
    if "jax" in record and "torch-glibc" in record:
        record["jax_speedup_vs_torch_glibc"] = (record["torch-glibc"]["median_ms"]
                                                / record["jax"]["median_ms"])
    record["device"] = record.get("jax", record.get("torch", {})).get("device")
    record["summary"] = summary_line(record)
    agent = {"mlr": "", "none": "-baseline"}.get(cfg.aux, f"-{cfg.aux}")
    seeds = f"-s{num_seeds}" if num_seeds > 1 else ""
    return write_record(record, outdir, f"{domain}_{preset}{agent}{seeds}_{device}_{cfg.run.precision}")


def summary_line(record: dict[str, Any]) -> str:
    """One human-readable line of a benchmark record."""
    aux = record["config"].get("aux", "mlr")
    agent = {"mlr": "", "none": " Baseline"}.get(aux, f" {aux.upper()}")
    parts = [f"{record['domain']}/{record['preset']}{agent} on {record['device_kind']} ({record.get('device')})"]
    for fw in FRAMEWORKS:
        if fw in record:
            r = record[fw]
            flops = f", {r['flops_per_update'] / 1e9:.1f} GFLOP" if r["flops_per_update"] else ""
            parts.append(f"{fw} {r['median_ms']:.1f} ms/update ({r['updates_per_s']:.2f}/s{flops}), "
                         f"act {r['act_ms']:.2f} ms")
            if r.get("num_seeds", 1) > 1:
                parts.append(f"{r['num_seeds']} seeds per update: {r['ms_per_seed_update']:.1f} ms "
                             f"per seed-update ({r['seed_updates_per_s']:.2f} seed-updates/s)")
    if "jax_speedup" in record:
        parts.append(f"JAX {record['jax_speedup']:.2f}x torch")
    if "jax_speedup_vs_torch_glibc" in record:
        parts.append(f"JAX {record['jax_speedup_vs_torch_glibc']:.2f}x torch-glibc")
    if "batches" in record:
        b = record["batches"]
        parts.append(f"batch on device: {b['host']['median_ms']:.1f} ms from host frames, "
                     f"{b['device']['median_ms']:.1f} ms from device frames")
    env = record.get("envpool", {})
    if "agent_steps_per_s" in env:
        parts.append(f"envpool {env['agent_steps_per_s']:.0f} agent steps/s")
    return "; ".join(parts)
