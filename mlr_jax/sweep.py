"""Whole benchmark grids in one command: games or tasks x objectives x seeds.

``mlr-jax sweep atari --games all --seeds 0-9 --aux mlr,none`` is the paper's Atari-100k
benchmark (26 x 10 x 2 runs). :func:`plan` groups the grid into seed-batched jobs (one game or
task and one objective, ``group_size`` seeds trained together by
:func:`mlr_jax.loop.train_group` on every local device); :func:`run_sweep` runs this
process's share of them, one after another.

The sweep directory holds:

- ``sweep.json``: what the sweep is (domain, names, objectives, seeds, group size, the config
  overrides), written by whichever process starts first; a restart, or another process,
  must ask for the same sweep (else :class:`SweepMismatch`, naming the fields);
- ``ledger.jsonl``: one line per event of a job (started with its run directories,
  finished, stopped, failed), appended by every process;
- ``runs/``: the run directories;
- the report of the whole grid (``report.md``, ``scores.csv``, figures), written when its
  last run finishes.

Restarting the same command continues the sweep: a run with a ``final_eval.json`` is done and
skipped, a run with a checkpoint resumes from it (runs that stopped at the same step resume as
a group), and the rest start afresh. Processes take their share by index: ``--shard i/n``
(any scheduler's array job; the processes know nothing of each other) or ``--distributed``
(the process index of a JAX multi-process runtime, e.g. one process per host of a TPU pod
slice; each then trains alone on its own devices, :func:`mlr_jax.parallel.work_alone`, and
waits for the others at the end, since JAX's coordination service, which process 0 hosts,
must outlive every share. The runtime lives and dies as one: a process that fails ends the
others too, and starting the sweep again resumes their runs from their latest checkpoints).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Any, Callable, Sequence

from mlr_jax import checkpoint, loop, parallel, report
from mlr_jax import logging as runlog
from mlr_jax.config import AtariConfig, ConfigError, DMCConfig, domain_of

SWEEP_FILE = "sweep.json"
LEDGER_FILE = "ledger.jsonl"
RUNS = "runs"
SHARE_WAIT_S = 30 * 24 * 3600  # how long a --distributed process waits for the others' shares


class SweepMismatch(ConfigError):
    """The sweep directory holds another sweep; the message names the differing fields."""


@dataclasses.dataclass(frozen=True)
class Job:
    """Seeds of one game or task and objective, trained together."""

    name: str
    aux: str
    seeds: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.name} {self.aux} seeds {loop.seed_list(list(self.seeds))}"


def plan(names: Sequence[str], auxes: Sequence[str], seeds: Sequence[int],
         group_size: int | None = None) -> list[Job]:
    """The grid as jobs, in a fixed order (name, then objective, then seed groups):
    ``group_size`` seeds per job (None: all of them)."""
    size = len(seeds) if group_size is None else group_size
    if size < 1:
        raise ConfigError(f"group size must be at least 1, got {group_size}")
    return [Job(name, aux, tuple(seeds[i:i + size]))
            for name in names for aux in auxes for i in range(0, len(seeds), size)]


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


class Ledger:
    """``ledger.jsonl`` of a sweep directory: one JSON line per event, appended (each line one
    ``write`` of an ``O_APPEND`` file, so processes sharing the directory do not interleave)."""

    def __init__(self, root: pathlib.Path, process: str):
        self.path, self.process = root / LEDGER_FILE, process

    def append(self, event: str, job: Job, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "process": self.process, "event": event,
                           "name": job.name, "aux": job.aux, "seeds": list(job.seeds), **fields})
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def run_dirs(self) -> dict[tuple[str, str, int], str]:
        """``(name, aux, seed) -> run directory name`` of the latest start of each run."""
        if not self.path.is_file():
            return {}
        found = {}
        for row in runlog.read_metrics(self.path):  # JSON lines, a torn last line dropped
            if row["event"] == "started":
                for seed, run in row["runs"].items():
                    found[(row["name"], row["aux"], int(seed))] = run
        return found


def check_sweep_file(root: pathlib.Path, spec: dict[str, Any]) -> None:
    """Write ``sweep.json`` if this is the first process of a new sweep; else check that it
    describes ``spec``. The file is created whole or not at all (a link of a finished
    temporary file), so a process starting at the same time reads either nothing or all."""
    path = root / SWEEP_FILE
    tmp = root / f".{SWEEP_FILE}.{os.getpid()}"
    runlog.write_json(tmp, spec)
    try:
        os.link(tmp, path)
    except FileExistsError:
        saved = json.loads(path.read_text())
        differ = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
        if differ:
            raise SweepMismatch(
                f"{root} holds another sweep: " + "; ".join(
                    f"{k} is {saved.get(k)!r} there, {spec.get(k)!r} now" for k in differ)
                + ". Use another --outdir, or the same arguments to continue it") from None
    finally:
        tmp.unlink()


def _status(runs_dir: pathlib.Path, run_dir: str | None) -> tuple[str, int | None]:
    """``("done" | "resume" | "new", checkpoint step)`` of a run directory of the ledger."""
    if run_dir is None or not (runs_dir / run_dir).is_dir():
        return "new", None
    path = runs_dir / run_dir
    if (path / "final_eval.json").is_file():
        return "done", None
    step = checkpoint.latest_step(path / "checkpoints")
    return ("new", None) if step is None else ("resume", step)


def pending(jobs: Sequence[Job], runs_dir: pathlib.Path, ledger: Ledger
            ) -> tuple[list[tuple[Job, list[pathlib.Path] | None]], int]:
    """What is left of ``jobs``: each job's unfinished seeds, split by how they continue
    (seeds that stopped at the same checkpoint step resume together; the rest start afresh),
    as ``(job, run directories to resume or None)``; and the number of runs already done."""
    known = ledger.run_dirs()
    left, done = [], 0
    for job in jobs:
        groups: dict[int | None, list[int]] = {}
        dirs = {}
        for seed in job.seeds:
            dirs[seed] = known.get((job.name, job.aux, seed))
            status, step = _status(runs_dir, dirs[seed])
            if status == "done":
                done += 1
            else:
                groups.setdefault(step, []).append(seed)
        for step, seeds in groups.items():
            part = Job(job.name, job.aux, tuple(seeds))
            left.append((part, None if step is None else [runs_dir / dirs[s] for s in seeds]))
    return left, done


@dataclasses.dataclass
class SweepResult:
    """What :func:`run_sweep` did: runs done in the whole grid, runs this process trained,
    failed jobs (``(job, message)``), and the report's paths (empty until the grid is done)."""

    total_runs: int
    done_runs: int
    trained_runs: int
    failed: list[tuple[str, str]]
    report: list[pathlib.Path]


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{int(seconds % 60):02d}s"


def run_sweep(root: str | pathlib.Path, domain: str, names: Sequence[str], auxes: Sequence[str],
              seeds: Sequence[int], make_config: Callable[[str, str], AtariConfig | DMCConfig],
              spec: dict[str, Any], group_size: int | None = None,
              shard: tuple[int, int] = (0, 1), log: Callable[[str], None] = print,
              together: bool = False) -> SweepResult:
    """Run shard ``shard = (i, n)`` of the sweep of ``names x auxes x seeds`` in ``root``.

    Args:
      root: the sweep directory (created).
      domain: ``"atari"`` or ``"dmc"``.
      make_config: ``(name, aux) -> config`` of a run (its ``run.seed`` is replaced per
        seed, its ``run.outdir`` is set to ``root/runs``).
      spec: the sweep's settings as given (names, objectives, seeds, preset, overrides);
        recorded in ``sweep.json`` and checked on a restart.
      group_size: seeds trained together (None: all).
      shard: this process takes jobs ``i, i + n, i + 2n, ...`` of :func:`plan`.
      log: where progress lines go.
      together: the processes of a JAX runtime (``--distributed``): each waits for the others
        at the end (the coordination service must outlive every process's share) and only
        process 0 writes the report. Without it (``--shard``), whichever process finishes the
        grid's last run writes it.

    Returns the :class:`SweepResult`. A stop signal ends the sweep after the running job
    saves its checkpoints: :class:`mlr_jax.loop.TrainingInterrupted` propagates, and
    running the same sweep again continues it. A job whose update goes non-finite is
    recorded as failed and the sweep goes on.
    """
    root = pathlib.Path(root)
    runs_dir = root / RUNS
    runs_dir.mkdir(parents=True, exist_ok=True)
    spec = {"domain": domain, "names": list(names), "aux": list(auxes), "seeds": list(seeds),
            "group_size": group_size, **spec}
    check_sweep_file(root, spec)
    index, count = shard
    ledger = Ledger(root, f"{index}/{count}")
    jobs = plan(names, auxes, seeds, group_size)
    total = len(names) * len(auxes) * len(seeds)
    mine, _ = pending(jobs[index::count], runs_dir, ledger)
    _, done = pending(jobs, runs_dir, ledger)
    queued = sum(len(job.seeds) for job, _ in mine)
    log(f"[sweep] {domain}: {len(names)} x {len(auxes)} x {len(seeds)} = {total} runs in {root}; "
        f"{done} done; this process ({index}/{count}) has {len(mine)} job(s), {queued} runs")
    failed, trained, start = [], 0, time.monotonic()
    for number, (job, resume) in enumerate(mine, 1):
        running = len(job.seeds)
        queued -= running
        eta = ""
        if trained:
            eta = f", ETA {_duration((time.monotonic() - start) / trained * (queued + running))}"
        log(f"[sweep] job {number}/{len(mine)}: {job} ({'resumed' if resume else 'new'}); "
            f"runs done {done}/{total}, running {running}, queued here {queued}{eta}")
        base = make_config(job.name, job.aux)
        base = dataclasses.replace(base, run=dataclasses.replace(base.run, outdir=str(runs_dir)))
        cfgs = loop.seed_configs(base, list(job.seeds))
        desc = f"[{done}/{total} done] {domain_of(base)}:{job}"
        try:
            results = loop.train_group(cfgs, resume=resume, log=log, desc=desc,
                                       on_start=lambda dirs, job=job: ledger.append(
                                           "started", job, runs={str(s): d.name for s, d in
                                                                 zip(job.seeds, dirs)}))
        except loop.TrainingInterrupted as e:
            ledger.append("stopped", job, step=e.step, signal=e.signal_name)
            raise
        except loop.NonFiniteUpdate as e:
            ledger.append("failed", job, error=str(e))
            failed.append((str(job), str(e)))
            log(f"[sweep] job {job} failed: {e}")
            continue
        ledger.append("finished", job, scores={str(r.seed): r.final_eval["mean"] for r in results})
        done += running
        trained += running
    if together:
        log(f"[sweep] process {index}/{count} finished its share; waiting for the others")
        parallel.barrier("mlr_jax_sweep_end", timeout_s=SHARE_WAIT_S, runtime=True)
    _, done = pending(jobs, runs_dir, ledger)  # other processes may have finished theirs
    paths: list[pathlib.Path] = []
    if done == total and (index == 0 or not together):
        text, paths, warnings = report.report_directory(runs_dir, out=root)
        for warning in warnings:
            log(f"[sweep] warning: {warning}")
        log(text)
    elif done == total:
        log(f"[sweep] {done}/{total} runs done; process 0 writes the report")
    else:
        log(f"[sweep] {done}/{total} runs done; the report is written when the last one finishes")
    return SweepResult(total, done, trained, failed, paths)
