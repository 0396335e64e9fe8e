"""Multi-process (multi-host) training, with CPU processes joined by ``jax.distributed``.

Each test starts its processes as subprocesses (gloo collectives over localhost), as every
host of a TPU pod slice would start them: the update they compute together equals the
single-process update, a training run writes one run directory (the primary's) and
resumes, processes that disagree stop with an error, and a SIGTERM to one process stops all
of them at the same step with a checkpoint.
"""
import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mlr_jax import checkpoint, domains, envs, loop
from mlr_jax.logging import RunDir

import multiprocess_worker as worker
import one_run
from conftest import FAST_COMPILE_FLAG
from test_train_end_to_end import LONG_SMOKE_RUN, check_run_dir, wait_for_metrics_step

pytestmark = pytest.mark.slow

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")
TIMEOUT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def start_processes(commands: list[list[str]], devices_per_process: int) -> list[subprocess.Popen]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process} "
                         f"{FAST_COMPILE_FLAG}")
    return [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True) for c in commands]


def finish(procs: list[subprocess.Popen], returncode: int = 0) -> list[str]:
    """The processes' outputs once all have exited with ``returncode``."""
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for proc in procs:
            proc.kill()
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == returncode, f"process {i} exited with {proc.returncode}:\n{out[-3000:]}"
    return outputs


@contextlib.contextmanager
def killed_on_error(procs: list[subprocess.Popen]):
    """Kill the processes if the body raises (a failing test leaves none running)."""
    try:
        yield
    except BaseException:
        for proc in procs:
            proc.kill()
        raise


def run_processes(commands: list[list[str]], devices_per_process: int) -> list[str]:
    """Run the commands concurrently (one per process); their outputs, once all succeeded."""
    return finish(start_processes(commands, devices_per_process))


def train_commands(args: list[str]) -> list[list[str]]:
    """``mlr-jax train`` in 2 processes joined through a free localhost port."""
    port = str(free_port())
    return [[sys.executable, "-m", "mlr_jax", *args, "--coordinator", f"localhost:{port}",
             "--num-processes", "2", "--process-id", str(i)] for i in range(2)]


def worker_commands(mode: str, outs: list[pathlib.Path]) -> list[list[str]]:
    port = str(free_port())
    return [[sys.executable, str(WORKER), mode, port, str(len(outs)), str(i), str(out)]
            for i, out in enumerate(outs)]


def test_two_processes_compute_the_single_process_update(tmp_path):
    """2 processes x 2 devices: each process feeds 2 of the 4 shards of the global batch."""
    outs = [tmp_path / f"process{i}.npz" for i in range(2)]
    procs = start_processes(worker_commands("update", outs), devices_per_process=2)
    with killed_on_error(procs):  # the single-process reference compiles while they do
        agent, state, batch = worker.setup()
        expected = worker.two_updates(one_run.data_parallel(agent.train_step, num_devices=2),
                                      state, batch)
    finish(procs)
    for out in outs:  # every process ends with the same state and sees every priority
        got = np.load(out)
        assert sorted(got.files) == sorted(expected)
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_processes_that_disagree_stop_with_an_error(tmp_path):
    outs = [tmp_path / f"process{i}.txt" for i in range(2)]
    run_processes(worker_commands("diverge", outs), 1)
    for out in outs:
        message = out.read_text()
        assert "no longer agree on the test" in message
        assert "process 0: score=0, step=7" in message and "process 1: score=1, step=7" in message


def test_a_two_process_run_stops_together_on_sigterm_to_one_process_then_resumes(tmp_path):
    """An Atari smoke run (Baseline), frames on the devices, in 2 processes writes one run directory
    (process 0 alone). A preemption notice (SIGTERM) reaching one host stops every process
    after the same agent step (JAX's preemption service) and process 0 saves that step; then
    ``--resume`` in both processes finishes the run."""
    # the Baseline: stopping and resuming together does not depend on the objective, and its
    # update compiles in a fraction of MLR's time
    procs = start_processes(train_commands([*LONG_SMOKE_RUN, "run.replay_frames=device", "--aux",
                                            "none", "--outdir", str(tmp_path)]), 1)
    with killed_on_error(procs):
        run = wait_for_metrics_step(tmp_path, 210, procs)  # updates start at 200
    procs[1].send_signal(signal.SIGTERM)
    outputs = finish(procs, returncode=128 + signal.SIGTERM)
    assert "[mlr-jax] 2 processes, 2 devices" in outputs[0]
    steps = {int(out.split("stopped by SIGTERM at agent step ")[1].split(";")[0]) for out in outputs}
    assert len(steps) == 1, outputs
    step = steps.pop()
    assert (run / "checkpoints" / str(step)).is_dir() and step >= 210
    assert [p.name for p in tmp_path.iterdir()] == [run.name]

    outputs = run_processes(train_commands(["train", "atari", "--no-progress", "--resume", str(run),
                                            f"steps={step + 20}"]), 1)
    assert f"resuming {run} from step {step}" in outputs[0]
    assert "final evaluation" in outputs[0] and "[mlr-jax]" not in outputs[1]
    check_run_dir(run, step + 20, 2)
    assert "| processes | 2 |" in (run / "summary.md").read_text()


def test_a_two_process_run_draws_its_batches_on_the_devices_and_resumes(tmp_path):
    """``run.sampler=device`` in 2 processes (one device each, every seed's batch split over
    both): the replay's device copy, the sampling inside the update, the priority writes
    gathered from both halves of the batch, the tally and the one copy of the actions all
    span processes. The run trains to its end, its checkpoint holds the priorities the
    updates wrote (not the initial 1s), and ``--resume`` in both processes reloads them and
    goes on."""
    base = ["train", "atari", "--game", "toy_catch", "--preset", "toy", "--no-progress",
            "run.sampler=device", "run.checkpoint_every=0", "run.log_every=10",
            "run.eval_episodes=2", "--aux", "none"]
    outputs = run_processes(train_commands([*base, "steps=330", "--outdir", str(tmp_path)]), 1)
    assert "[mlr-jax] 2 processes, 2 devices" in outputs[0] and "[mlr-jax]" not in outputs[1]
    (run,) = tmp_path.iterdir()
    check_run_dir(run, 330, 2)
    cfg = loop.load_run_config(run)
    agent = domains.make_domain(cfg, envs.make_env(cfg, 1, seed=0)).agent
    _, replay, _, _ = checkpoint.restore(RunDir.open(run).checkpoints, agent.init(jax.random.key(0)))
    assert (np.asarray(replay["priority"])[:330] != 1.0).sum() >= 30  # drawn starts re-prioritised
    outputs = run_processes(train_commands(["train", "atari", "--no-progress", "--resume", str(run),
                                            "steps=360"]), 1)
    assert f"resuming {run} from step 330" in outputs[0]
    check_run_dir(run, 360, 2)
