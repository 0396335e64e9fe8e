"""End-to-end throughput of the training loop: agent steps per second with S seeds at once.

:func:`run_loop_benchmark` trains a group of ``num_seeds`` seeds (:func:`mlr_jax.loop.train_group`:
acting, environment, replay, sampling, updates, logging; no evaluation or checkpoint inside
the timed window) and reads the rate off the run's own log rows: agent steps between the
first log row after ``warmup_steps`` of updates (compilation done) and the last one, over the
wall time between those rows. ``seed_steps_per_s`` multiplies by S: the number to compare
with S separate runs. The rows also give the milliseconds of each phase of an agent step
(``perf/ms_*``) and, counted by :func:`mlr_jax.parallel.counting_transfers`, the
device-to-host copies per agent step.

With ``host_only`` every update is a no-op of the same inputs and outputs
(:func:`mlr_jax.loop.train_group`): what is left is the host's work, ``host_ms_per_seed_step``,
with envpool's own step time reported apart (``envpool_ms_per_seed_step``) -- the time an
accelerator would wait for the host if nothing overlapped.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from typing import Any, Sequence

from mlr_jax.agents.common import precision_record
from mlr_jax import host, loop, parallel
from mlr_jax import logging as runlog
from mlr_jax.bench.timing import DEFAULT_OUTDIR, write_record
from mlr_jax.config import domain_of, make_config, name_of, to_dict


ROW_STEPS = 10  # agent steps between the log rows the rate is read from (a row costs a little)


def run_loop_benchmark(domain: str, preset: str, num_seeds: int, steps: int, warmup_steps: int = 20,
                       name: str | None = None, overrides: Sequence[str] = (),
                       outdir: str | os.PathLike = DEFAULT_OUTDIR, host_only: bool = False) -> dict[str, Any]:
    """Agent steps per second of ``steps`` agent steps of updates, after ``warmup_steps``.

    Args:
      domain, preset, name, overrides: the config (``make_config``); the run's length, log
        interval and evaluation are set here.
      num_seeds: seeds trained together (seeds 0..S-1).
      steps: timed agent steps, all with updates.
      warmup_steps: agent steps of updates before the timed window (the first compiles).
      host_only: no-op updates (see the module doc).

    Returns the record written to
    ``outdir/loop_<domain>_<preset>[-<aux>]-s<S>[-host]_<device>_<date>.json``:
    ``agent_steps_per_s`` (of the group: every seed takes one step per agent step),
    ``seed_steps_per_s``, ``updates_per_agent_step``, ``host_ms_per_seed_step`` (the wall
    time of an agent step over S), ``envpool_ms_per_seed_step``, their difference
    ``host_ms_per_seed_step_outside_envpool``, ``phase_ms_per_agent_step``,
    ``transfers_per_step`` (device-to-host copies per agent step), the config, host and
    versions.
    """
    base = make_config(domain, name, preset, overrides)
    start = base.learning_starts + 1 if domain == "atari" else base.seed_steps
    unit = 1 if domain == "atari" else base.action_repeat
    first = -(-(start + warmup_steps) // ROW_STEPS) * ROW_STEPS  # on a log row: all steps timed
    total = first + steps
    length = f"steps={total}" if domain == "atari" else f"env_steps={total * unit}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(domain, name, preset, [*overrides, length, f"run.log_every={ROW_STEPS * unit}",
                                                 "run.eval_every=0", "run.eval_episodes=1",
                                                 "run.checkpoint_every=0", "run.progress=False",
                                                 f"run.outdir={tmp}"])
        with parallel.counting_transfers():
            results = loop.train_group(loop.seed_configs(cfg, list(range(num_seeds))),
                                       log=lambda *_: None, host_only=host_only)
        rows = [r for r in runlog.read_metrics(results[0].run_dir / "metrics.jsonl") if "perf/sps" in r]
    window = [r for r in rows if first <= r["step"] <= total]
    (a, b) = window[0], window[-1]
    rate = (b["step"] - a["step"]) / (b["time"] - a["time"])
    # each row covers the agent steps since the row before: per-step means weighted by them
    spans = list(zip(window, window[1:]))

    def per_step(key):
        return sum(r[key] * (r["step"] - q["step"]) for q, r in spans) / (b["step"] - a["step"])

    phases = {k[len("perf/ms_"):]: per_step(k) for k in b if k.startswith("perf/ms_")}
    host_ms = 1000 / rate / num_seeds
    record = {
        "kind": "loop", "domain": domain_of(cfg), "name": name_of(cfg), "preset": preset,
        "aux": cfg.aux, "num_seeds": num_seeds, "timed_agent_steps": b["step"] - a["step"],
        "warmup_agent_steps": first - start,
        "updates_per_agent_step": getattr(cfg, "updates_per_step", 1),
        "agent_steps_per_s": rate, "seed_steps_per_s": rate * num_seeds, "host_only": host_only,
        "host_ms_per_seed_step": host_ms, "envpool_ms_per_seed_step": phases["env"] / num_seeds,
        "host_ms_per_seed_step_outside_envpool": host_ms - phases["env"] / num_seeds,
        "phase_ms_per_agent_step": phases,
        "transfers_per_step": per_step("perf/device_to_host"),
        "device": parallel.device_description(), "host": host.describe(),
        "versions": host.versions(), "config": to_dict(cfg), "overrides": list(overrides),
        "precision": precision_record(cfg.run.precision),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    aux = "" if cfg.aux == "mlr" else f"-{cfg.aux}"
    record["summary"] = (f"loop {domain}/{preset}{aux}{' host only' if host_only else ''}, "
                         f"{num_seeds} seed(s): {rate:.2f} agent steps/s, {rate * num_seeds:.2f} "
                         f"seed-steps/s, {host_ms:.2f} ms a seed-step ({record['envpool_ms_per_seed_step']:.2f} "
                         f"in envpool), {record['transfers_per_step']:.1f} device-to-host copies a step "
                         f"({record['device']})")
    platform = parallel.device_description().split(":")[0]
    suffix = "-host" if host_only else ""
    return write_record(record, outdir, f"loop_{domain}_{preset}{aux}-s{num_seeds}{suffix}_{platform}")
