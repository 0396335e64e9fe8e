"""Process-wide host settings: glibc's allocator tuned for XLA:CPU, stop signals, the
accelerator memory policy (:func:`device_memory_policy`), and the facts about this host that
every benchmark record carries (:func:`describe`).

:class:`StopSignals` turns SIGINT / SIGTERM (Ctrl-C, a scheduler's preemption notice) into a
request the training loop answers by saving a checkpoint and stopping.

Allocator:

XLA:CPU allocates its temporaries afresh for every execution from its worker threads. With
glibc's defaults, buffers above 32 MB (and every buffer of a thread's own arena, whose heaps
are trimmed when freed) go back to the kernel after each step and are page-faulted in again on
the next, and page faults are expensive in sandboxed VMs: on the 2-core CI machine the DMC
encoder gradient at batch 128 spent more time in the kernel than computing (2.28 s per call;
1.17 s with the settings below). :func:`tune_malloc` keeps freed memory in the process instead:
one arena (``M_ARENA_MAX=1``) that never mmaps blocks up to 2 GB nor trims its top.

The cost is that the process keeps its peak heap instead of returning it to the system.
``import mlr_jax`` applies it (before JAX starts its threads, as far as the caller allows);
set ``MLR_JAX_MALLOC=default`` to keep glibc's defaults. It changes the whole process, so
PyTorch running in the same process (the benchmark) gets the same allocator.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import importlib.metadata
import os
import platform
import signal
import subprocess
import sys
import threading
from typing import Any, Sequence

ENV_VAR = "MLR_JAX_MALLOC"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_INT_MAX = 2**31 - 1
_state: dict[str, str] = {}
PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "envpool", "numpy")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere), e.g.
    ``"AMD EPYC 7B13"``: timings on the same commit differ by 2x between CPU models."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def source_commit(root: str | os.PathLike | None = None) -> str | None:
    """The git commit of the checkout at ``root`` (default: this mlr_jax's), a short hash
    with ``+changes`` when its tracked files differ from it; None outside a git checkout."""
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        if head.returncode:
            return None
        changed = subprocess.run(["git", "-C", root, "diff", "--quiet", "HEAD", "--"],
                                 capture_output=True, timeout=10).returncode
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() + ("+changes" if changed else "")


def versions(packages: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Python's and each installed package's version (None: not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def available_memory() -> int | None:
    """Bytes of memory this process can still take without swapping (``MemAvailable`` of
    ``/proc/meminfo``), or None where that is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def format_bytes(n: float) -> str:
    """``"512.0 MiB"`` below a GiB, ``"28.9 GiB"`` from there on."""
    return f"{n / 2**20:,.1f} MiB" if n < 2**30 else f"{n / 2**30:,.1f} GiB"


PREALLOCATE, MEM_FRACTION = "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION"


def device_memory_policy(command: str, shards: int = 1, environ: dict | None = None) -> str:
    """Choose how JAX takes accelerator memory for ``command``, before JAX starts a backend
    (it reads these variables then); a variable the user set is left as it is.

    - ``train`` and ``sweep`` alone on their accelerators: JAX's default, 75% of each device
      preallocated up front, one pool that the update's buffers never fragment;
    - ``sweep --shard i/n`` with ``n > 1``: the shards may share a device, so each process
      allocates what it uses (``PREALLOCATE=false``) instead of claiming 75% each;
    - ``eval``, ``report``, ``bench`` and ``config``: allocate on demand, so they run beside a
      training run on the same device (``bench`` also shares it with torch).

    Returns a one-line description (what was set, or that the user's setting stands)."""
    env = os.environ if environ is None else environ
    if PREALLOCATE in env or MEM_FRACTION in env:
        return f"device memory: the user's {PREALLOCATE}/{MEM_FRACTION}"
    if command in ("train", "sweep") and shards <= 1:
        return "device memory: JAX's default (75% of each device preallocated)"
    env[PREALLOCATE] = "false"
    why = f"{shards} shards may share a device" if command == "sweep" else "it may run beside training"
    return f"device memory: allocated on demand ({PREALLOCATE}=false: {why})"


def describe() -> dict[str, Any]:
    """What a result record needs to say about this host: CPU model and count, machine,
    allocator setting."""
    return {"cpu_model": cpu_model(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "malloc": tune_malloc()}


def tune_malloc() -> str:
    """Apply the allocator settings once per process; returns what is in force:
    ``"tuned"``, ``"default"`` (opted out through ``MLR_JAX_MALLOC``) or ``"unavailable"``
    (not glibc)."""
    if "malloc" in _state:
        return _state["malloc"]
    choice = os.environ.get(ENV_VAR, "tuned")
    if choice not in ("tuned", "default"):
        raise ValueError(f"{ENV_VAR} must be 'tuned' or 'default', got {choice!r}")
    result = "default"
    if choice == "tuned":
        result = "unavailable"
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name) if name else None
            mallopt = libc.mallopt if libc is not None else None
        except (OSError, AttributeError):
            mallopt = None
        if mallopt is not None:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            ok = [mallopt(_M_ARENA_MAX, 1), mallopt(_M_MMAP_THRESHOLD, _INT_MAX),
                  mallopt(_M_TRIM_THRESHOLD, _INT_MAX)]
            result = "tuned" if all(ok) else "unavailable"
    _state["malloc"] = result
    return result


XLA_LOGS_VAR = "MLR_JAX_XLA_LOGS"  # "all": keep XLA's alarms on stderr too
SLOW_COMPILE_MARK = b"slow_operation_alarm.cc"
_ALARM_MAX_LINES = 8  # an alarm block is at most this many lines after its first


class _AlarmFilter:
    """Drops XLA's slow-operation alarm blocks from a byte stream of log lines: the line
    naming ``slow_operation_alarm.cc`` and what follows it up to the second line of
    asterisks (at most :data:`_ALARM_MAX_LINES` lines, so a changed format cannot swallow
    more). Text without a newline yet (a progress bar's carriage-return updates) passes at
    once."""

    def __init__(self):
        self._partial, self._midline, self._skip, self._stars = b"", False, 0, 0

    def feed(self, data: bytes) -> bytes:
        out = []
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            if SLOW_COMPILE_MARK in line:  # after a progress bar's updates, keep those
                out.append(line[:line.rfind(b"\r", 0, line.find(SLOW_COMPILE_MARK)) + 1])
                self._skip, self._stars, self._midline = _ALARM_MAX_LINES, 0, False
            elif self._midline:  # the start of this line was already passed on
                self._midline = False
                out.append(line + b"\n")
            elif self._skip:
                self._skip -= 1
                if line.strip() and not line.strip().strip(b"*"):
                    self._stars += 1
                    self._skip = 0 if self._stars == 2 else self._skip
            else:
                out.append(line + b"\n")
        if self._partial and not self._skip:
            # pass on at once what cannot begin a log line (a progress bar's text); hold
            # what may (a timestamp or absl's "E1130"): it may turn out to be an alarm
            cut = self._partial.rfind(b"\r") + 1
            tail = self._partial[cut:]
            if tail[:1].isdigit() or (tail[:1] in (b"E", b"W", b"I", b"F") and tail[1:2].isdigit()):
                out.append(self._partial[:cut])
                self._partial, self._midline = tail, self._midline and not cut
            else:
                out.append(self._partial)
                self._partial, self._midline = b"", True
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._partial = self._partial, b""
        return b"" if self._skip else rest


@contextlib.contextmanager
def xla_alarms_hidden():
    """Run the body with this process's stderr (fd 2, where XLA's C++ logging writes) passed
    through :class:`_AlarmFilter`: XLA's "Very slow compile?" alarms, ERROR-level lines that
    only say a compilation is taking long (common on a busy CPU), are dropped; everything
    else passes unchanged. ``MLR_JAX_XLA_LOGS=all`` keeps them."""
    if os.environ.get(XLA_LOGS_VAR) == "all":
        yield
        return
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward():
        alarms = _AlarmFilter()
        while chunk := os.read(read_end, 65536):
            os.write(real, alarms.feed(chunk))
        os.write(real, alarms.flush())
        os.close(read_end)

    thread = threading.Thread(target=forward, name="xla-alarm-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real, 2)  # the pipe's write end closes: the thread reads to the end and stops
        thread.join(timeout=5)
        if not thread.is_alive():
            os.close(real)


class StopSignals:
    """A ``with`` block in which ``signals`` request a stop instead of killing the process.

    ``requested`` is None until the first of them arrives, then its name (``"SIGINT"``,
    ``"SIGTERM"``); the code in the block decides where it is safe to stop. A second SIGINT
    raises ``KeyboardInterrupt`` at once (the user insists). The previous handlers come back
    on exit. Outside the main thread, where Python cannot install handlers, it does nothing.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)):
        self.signals = tuple(signals)
        self.requested: str | None = None
        self._previous: dict[signal.Signals, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        del frame
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = self.requested or signal.Signals(signum).name

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
