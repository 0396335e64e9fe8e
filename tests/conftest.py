"""Test session setup: two fake CPU devices so the data-parallel tests can run anywhere, fast
compiles, a compilation cache shared by this session's processes, and one core per worker
under pytest-xdist.

The tests compile far more than they run: most take one to a few updates of small networks.
XLA:CPU at LLVM's -O0 (``--xla_backend_optimization_level=0``) compiles an update about
twice as fast and runs it 1.5-2.5x slower, and every HLO pass still runs, so the semantics
under test are the same; float32 results differ by rounding, which the tolerances allow.
The learning tests, which run thousands of updates, start their training runs with the
default optimisation (:data:`OPTIMIZED_XLA_FLAGS`).

Many tests compile the same programs again: a resumed run, ``mlr-jax eval`` of a run's
checkpoint, the processes of a multi-process run. JAX's persistent compilation cache (a fresh
directory per session, inherited by subprocesses through the environment) turns each repeat
into a disk read; compiling the MLR update dominates the end-to-end tests on a 2-core CPU.
"""
import os
import tempfile

import pytest

FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"

# `pytest -n N` (pytest-xdist, the README's command): worker i keeps every N-th core from i
# (on 2 cores, one each), and the subprocesses its tests start inherit them. XLA sizes its
# thread pool to the cores a process may use, so N workers do not each start a thread per
# core and fight over them (two 2-thread XLA processes on 2 cores ran about 5x slower each,
# not 2x).
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
if _worker.startswith("gw") and hasattr(os, "sched_setaffinity"):
    _cores = sorted(os.sched_getaffinity(0))
    _count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if 1 < _count <= len(_cores):
        os.sched_setaffinity(0, _cores[int(_worker[2:]) % _count::_count])

os.environ.setdefault("JAX_PLATFORMS", "cpu")
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    flags += " --xla_force_host_platform_device_count=2"
if "xla_backend_optimization_level" not in flags:
    flags += " " + FAST_COMPILE_FLAG
os.environ["XLA_FLAGS"] = flags.strip()
# for subprocesses that run long enough to want optimised code
OPTIMIZED_XLA_FLAGS = os.environ["XLA_FLAGS"].replace(FAST_COMPILE_FLAG, "").strip()
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="mlr_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"


def pytest_collection_modifyitems(config, items):
    """The `long` tests (gpu_check.sh's dry run), then the learning tests, then the other slow
    ones, then the rest (a stable sort): with
    `-n 2 --dist loadfile` the long files start at once and the quick ones fill in around
    them, so the two workers finish together instead of one running the learning tests alone
    at the end (about 5 minutes of one idle core)."""
    def rank(item):
        if item.get_closest_marker("long"):
            return -1
        return 0 if item.get_closest_marker("learning") else 1 if item.get_closest_marker("slow") else 2

    items.sort(key=rank)


def pytest_addoption(parser):
    parser.addoption(
        "--no-skips", action="store_true",
        help="fail every test or module that would be skipped (a missing test dependency such "
             "as torch, rliable or scipy, a skipif), so a green run means every test ran; the "
             "README's test command and .ci/run set it")


def _skip_to_failure(report, config, what):
    if report.skipped and not hasattr(report, "wasxfail") and config.getoption("--no-skips"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{what} would be skipped under --no-skips: {reason}"
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    return _skip_to_failure((yield), item.config, item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    return _skip_to_failure((yield), collector.config, collector.nodeid)
