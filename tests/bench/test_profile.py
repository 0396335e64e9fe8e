"""The profile summary of the benchmark: op totals from a Perfetto trace."""

import gzip
import json

import pytest

from mlr_jax.bench.profile import top_ops


def write_trace(path, events):
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    return path


def meta(pid, name):
    return {"ph": "M", "pid": pid, "name": "process_name", "args": {"name": name}}


def op(pid, name, ts, dur, tid=1):
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur}


def test_device_kernels_only_when_the_trace_has_a_device(tmp_path):
    trace = write_trace(tmp_path / "gpu.json.gz", [
        meta(1, "/host:CPU"), meta(2, "/device:GPU:0"),
        op(1, "ThunkExecutor::Execute", 0, 9000), op(1, "gemm_fusion.3", 10, 100),  # host launches
        op(2, "sm90_xmma_gemm_bf16", 0, 3000), op(2, "sm90_xmma_gemm_bf16", 5000, 1000, tid=7),
        op(2, "void cudnn::conv_kernel<float>", 100, 2000),
        op(2, "loop_add_fusion", 3000, 500)])
    rows = top_ops(trace, updates=2)
    assert [(r["name"], r["ms_per_update"], r["calls_per_update"]) for r in rows] == [
        ("sm90_xmma_gemm_bf16", 2.0, 1.0), ("void cudnn::conv_kernel<float>", 1.0, 0.5),
        ("loop_add_fusion", 0.25, 0.5)]
    assert {r["process"] for r in rows} == {"/device:GPU:0"}


def test_cpu_trace_counts_hlo_named_events(tmp_path):
    trace = write_trace(tmp_path / "cpu.json.gz", [
        meta(1, "/host:CPU"),
        op(1, "ThunkExecutor::Execute", 0, 10_000), op(1, "$runner.py:207 one_unit", 0, 10_000),
        op(1, "ynn_fusion.67", 10, 4000), op(1, "all-reduce", 5000, 1000, tid=2),
        op(1, "ynn_fusion.67", 6000, 2000), op(1, "end: ynn_fusion.67", 8000, 1),
        op(1, "Handle inputs", 0, 50)])
    rows = top_ops(trace, updates=1, limit=1)
    assert rows == [{"process": "/host:CPU", "name": "ynn_fusion.67", "ms_per_update": 6.0,
                     "calls_per_update": 2.0}]
    assert [r["name"] for r in top_ops(trace, updates=1)] == ["ynn_fusion.67", "all-reduce"]


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        top_ops(tmp_path / "nothing.json.gz", updates=1)
