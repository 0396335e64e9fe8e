"""Timing and record helpers of the benchmarks (``runner``, ``batches``, ``convs``)."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import time
from typing import Any, Callable

import numpy as np

from mlr_jax import host

DEFAULT_OUTDIR = "runs/bench"  # the committed records in benchmarks/results/ are written there on purpose


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int) -> dict[str, Any]:
    """Wall time of ``fn()`` (which must wait for its own results): warm-up, then ``repeats``."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "times_s": times}


def median_ms(fn: Callable[[], Any], repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds (:func:`time_calls`)."""
    return 1e3 * statistics.median(time_calls(fn, repeats, warmup)["times_s"])


def write_record(record: dict[str, Any], outdir: str | os.PathLike, prefix: str) -> dict[str, Any]:
    """Write ``record`` (which holds an ISO ``date``) to ``outdir/<prefix>_<YYYYmmdd-HHMMSS>.json``
    and return it with its ``path`` and the ``commit`` it was measured at
    (:func:`mlr_jax.host.source_commit`)."""
    record.setdefault("commit", host.source_commit())
    stamp = record["date"][:19].replace("-", "").replace(":", "").replace("T", "-")
    path = pathlib.Path(outdir) / f"{prefix}_{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record["path"] = str(path)
    path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    return record


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
