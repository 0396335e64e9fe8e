"""End-to-end throughput of the training loop: agent steps per second with S seeds at once.

:func:`run_loop_benchmark` trains a group of ``num_seeds`` seeds (:func:`mlr_jax.loop.train_group`:
acting, environment, replay, sampling, updates, logging; no evaluation or checkpoint inside
the timed window) and reads the rate off the run's own log rows: agent steps between the
first log row after ``warmup_steps`` of updates (compilation done) and the last one, over the
wall time between those rows. ``seed_steps_per_s`` multiplies by S: the number to compare
with S separate runs.
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


def run_loop_benchmark(domain: str, preset: str, num_seeds: int, steps: int, warmup_steps: int = 20,
                       name: str | None = None, overrides: Sequence[str] = (),
                       outdir: str | os.PathLike = DEFAULT_OUTDIR) -> dict[str, Any]:
    """Agent steps per second of ``steps`` agent steps of updates, after ``warmup_steps``.

    Args:
      domain, preset, name, overrides: the config (``make_config``); the run's length, log
        interval and evaluation are set here.
      num_seeds: seeds trained together (seeds 0..S-1).
      steps: timed agent steps, all with updates.
      warmup_steps: agent steps of updates before the timed window (the first compiles).

    Returns the record written to ``outdir/loop_<domain>_<preset>[-<aux>]-s<S>_<device>_<date>.json``:
    ``agent_steps_per_s`` (of the group: every seed takes one step per agent step),
    ``seed_steps_per_s``, ``updates_per_agent_step``, the config, host and versions.
    """
    base = make_config(domain, name, preset, overrides)
    start = base.learning_starts + 1 if domain == "atari" else base.seed_steps
    unit = 1 if domain == "atari" else base.action_repeat
    first, total = start + warmup_steps, start + warmup_steps + steps
    length = f"steps={total}" if domain == "atari" else f"env_steps={total * unit}"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = make_config(domain, name, preset, [*overrides, length, f"run.log_every={unit}",
                                                 "run.eval_every=0", "run.eval_episodes=1",
                                                 "run.checkpoint_every=0", "run.progress=False",
                                                 f"run.outdir={tmp}"])
        results = loop.train_group(loop.seed_configs(cfg, list(range(num_seeds))), log=lambda *_: None)
        rows = [r for r in runlog.read_metrics(results[0].run_dir / "metrics.jsonl") if "perf/sps" in r]
    window = [r for r in rows if first <= r["step"] <= total]
    (a, b) = window[0], window[-1]
    rate = (b["step"] - a["step"]) / (b["time"] - a["time"])
    record = {
        "kind": "loop", "domain": domain_of(cfg), "name": name_of(cfg), "preset": preset,
        "aux": cfg.aux, "num_seeds": num_seeds, "timed_agent_steps": b["step"] - a["step"],
        "warmup_agent_steps": warmup_steps,
        "updates_per_agent_step": getattr(cfg, "updates_per_step", 1),
        "agent_steps_per_s": rate, "seed_steps_per_s": rate * num_seeds,
        "device": parallel.device_description(), "host": host.describe(),
        "versions": host.versions(), "config": to_dict(cfg), "overrides": list(overrides),
        "precision": precision_record(cfg.run.precision),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    aux = "" if cfg.aux == "mlr" else f"-{cfg.aux}"
    record["summary"] = (f"loop {domain}/{preset}{aux}, {num_seeds} seed(s): {rate:.2f} agent steps/s, "
                         f"{rate * num_seeds:.2f} seed-steps/s ({record['device']})")
    platform = parallel.device_description().split(":")[0]
    return write_record(record, outdir, f"loop_{domain}_{preset}{aux}-s{num_seeds}_{platform}")
