"""Where one update's time goes: a ``jax.profiler`` trace of a few updates, summarised.

:func:`trace_units` runs a benchmark unit a few times under ``jax.profiler.trace`` with a
Perfetto trace (``perfetto_trace.json.gz``, readable at ui.perfetto.dev and by plain JSON),
and :func:`top_ops` adds up the duration of the op events by process and name, so the
benchmark record itself says which kernels (GPU: the device's streams; CPU: XLA's fusions and
library calls on the runtime threads) take the time, per update.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
from typing import Any, Callable

import jax

HLO_NAME = re.compile(r"[a-z][a-z0-9_\-]*(\.\d+)*")  # e.g. "ynn_fusion.67", "all-reduce"

def trace_units(run_unit: Callable[[], None], log_dir: str | pathlib.Path, units: int,
                updates_per_unit: int, limit: int = 25) -> dict[str, Any]:
    """Trace ``units`` calls of ``run_unit`` (which waits for its results) into ``log_dir``.

    Returns ``{"trace": path of perfetto_trace.json.gz, "updates": units * updates_per_unit,
    "top_ops": top_ops(...)}``.
    """
    log_dir = pathlib.Path(log_dir)
    with jax.profiler.trace(str(log_dir), create_perfetto_trace=True):
        for _ in range(units):
            run_unit()
    traces = sorted(log_dir.glob("plugins/profile/*/perfetto_trace.json.gz"))
    if not traces:
        raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {log_dir}")
    updates = units * updates_per_unit
    return {"trace": str(traces[-1]), "updates": updates,
            "top_ops": top_ops(traces[-1], updates, limit)}


def top_ops(trace: str | pathlib.Path, updates: int, limit: int = 25) -> list[dict[str, Any]]:
    """The ``limit`` largest ``(process, name)`` totals of the op events of a Perfetto trace.

    Op events are the kernels of a ``/device:...`` process when the trace has one (GPU, TPU);
    otherwise (CPU) the events named like HLO instructions (``ynn_fusion.67``, ``all-reduce``),
    which leaves out the runtime's own events (``ThunkExecutor::Execute``, ...) and Python
    frames (``$file.py:line``).

    Args:
      trace: a ``perfetto_trace.json.gz`` (Chrome trace-event JSON).
      updates: how many updates the trace covers (totals are reported per update).
      limit: rows returned.

    Returns:
      ``[{"process", "name", "ms_per_update", "calls_per_update"}]``, largest first.
    """
    with gzip.open(trace, "rt") as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    processes = {e["pid"]: e["args"]["name"] for e in events
                 if e.get("ph") == "M" and e.get("name") == "process_name"}
    devices = {pid for pid, name in processes.items() if name.startswith("/device:")}

    def is_op(e):
        return e.get("pid") in devices if devices else bool(HLO_NAME.fullmatch(e["name"]))

    total_us: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and is_op(e):
            key = (processes.get(e.get("pid"), str(e.get("pid"))), e["name"])
            total_us[key] += float(e.get("dur", 0.0))
            calls[key] += 1
    return [{"process": process, "name": name, "ms_per_update": us / 1e3 / updates,
             "calls_per_update": calls[(process, name)] / updates}
            for (process, name), us in total_us.most_common(limit)]
