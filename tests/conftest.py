"""Test session setup: two fake CPU devices so the data-parallel tests can run anywhere, and a
compilation cache shared by this session's processes.

Many tests compile the same programs again: a resumed run, ``mlr-jax eval`` of a run's
checkpoint, the processes of a multi-process run. JAX's persistent compilation cache (a fresh
directory per session, inherited by subprocesses through the environment) turns each repeat
into a disk read; compiling the MLR update dominates the end-to-end tests on a 2-core CPU.
"""
import os
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=2").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlr_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
