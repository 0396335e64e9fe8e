"""``mlr-jax sweep``: a grid planned into seed-batched jobs, split across processes, stopped
and continued without redoing finished runs."""
import json
import signal
import sys
import time

import pytest

from mlr_jax import sweep
from mlr_jax.config import ConfigError
from test_multiprocess import finish, killed_on_error, start_processes

# A toy Atari grid: 2 seeds x {Baseline, SPR}, one seed-batched job per objective; updates
# start at agent step 300 of 400.
GRID = ["sweep", "atari", "--games", "toy_catch", "--seeds", "0-1", "--aux", "none,spr",
        "--preset", "toy", "--steps", "400", "--no-progress", "--eval-episodes", "4",
        "run.eval_every=0", "run.log_every=20", "run.checkpoint_every=0"]


def test_plan_and_shards():
    jobs = sweep.plan(["pong", "alien"], ["mlr", "none"], [0, 1, 2], group_size=2)
    assert [str(j) for j in jobs] == [
        "pong mlr seeds 0,1", "pong mlr seeds 2", "pong none seeds 0,1", "pong none seeds 2",
        "alien mlr seeds 0,1", "alien mlr seeds 2", "alien none seeds 0,1", "alien none seeds 2"]
    assert len(sweep.plan(["pong"], ["mlr"], list(range(10)))) == 1  # all seeds in one job
    assert sweep.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(ConfigError, match="--shard"):
            sweep.parse_shard(bad)


def test_a_directory_holds_one_sweep(tmp_path):
    sweep.check_sweep_file(tmp_path, {"names": ["pong"], "seeds": [0, 1]})
    sweep.check_sweep_file(tmp_path, {"names": ["pong"], "seeds": [0, 1]})  # the same: fine
    with pytest.raises(sweep.SweepMismatch, match=r"seeds is \[0, 1\] there, \[0, 1, 2\] now"):
        sweep.check_sweep_file(tmp_path, {"names": ["pong"], "seeds": [0, 1, 2]})
    assert [p.name for p in tmp_path.iterdir()] == [sweep.SWEEP_FILE]


def ledger(root):
    return [json.loads(line) for line in (root / sweep.LEDGER_FILE).read_text().splitlines()]


def wait_for_training(root, aux, proc, timeout_s=600):
    """Wait until ``aux``'s job, run by ``proc``, has logged update metrics (its runs have a
    checkpoint to resume from once stopped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        started = [e for e in ledger(root) if e["aux"] == aux and e["event"] == "started"] \
            if (root / sweep.LEDGER_FILE).is_file() else []
        if started:
            metrics = root / "runs" / started[0]["runs"]["0"] / "metrics.jsonl"
            if metrics.is_file() and "train/" in metrics.read_text():
                return
        assert proc.poll() is None, "the process ended early"
        time.sleep(1)
    raise AssertionError(f"no {aux} updates within {timeout_s} s")


@pytest.mark.slow
def test_two_processes_split_a_sweep_stop_and_continue(tmp_path):
    """Two processes (``--shard 0/2``, ``--shard 1/2``) take a job each. Ctrl-C (SIGINT) stops
    the SPR job mid-training with checkpoints and exit status 130; the same commands again skip
    the finished Baseline runs, resume SPR's two seeds together from their checkpoints and, the
    grid complete, write the report."""
    root = tmp_path / "sweep"
    commands = [[sys.executable, "-m", "mlr_jax", *GRID, "--outdir", str(root), "--shard", f"{i}/2"]
                for i in range(2)]
    procs = start_processes(commands, devices_per_process=2)
    with killed_on_error(procs):
        wait_for_training(root, "spr", procs[1])
        procs[1].send_signal(signal.SIGINT)
        first = [finish([procs[0]])[0], finish([procs[1]], returncode=128 + signal.SIGINT)[0]]
    assert "[sweep] stopped by SIGINT; checkpoints saved" in first[1], first[1][-2000:]
    (stopped,) = [e for e in ledger(root) if (e["aux"], e["event"]) == ("spr", "stopped")]
    (started,) = [e for e in ledger(root) if (e["aux"], e["event"]) == ("spr", "started")]
    assert stopped["signal"] == "SIGINT" and stopped["step"] > 300  # updates start at 300
    for run in started["runs"].values():  # each seed saved the step it stopped at
        assert [p.name for p in (root / "runs" / run / "checkpoints").iterdir()] == [str(stopped["step"])]
    assert "this process (0/2) has 1 job(s), 2 runs" in first[0]
    assert "2/4 runs done; the report is written when the last one finishes" in first[0]
    assert "Run the same command again to continue the sweep" in first[1]
    events = [(e["aux"], e["event"]) for e in ledger(root)]
    assert ("none", "finished") in events and ("spr", "stopped") in events
    baseline = {e["runs"]["0"]: None for e in ledger(root) if e["aux"] == "none" and "runs" in e}
    finished_at = {run: (root / "runs" / run / "final_eval.json").stat().st_mtime_ns for run in baseline}

    again = finish(start_processes(commands, devices_per_process=2))
    assert "2 done; this process (0/2) has 0 job(s), 0 runs" in again[0]
    assert "toy_catch spr seeds 0,1 (resumed)" in again[1]
    spr_starts = [e for e in ledger(root) if e["aux"] == "spr" and e["event"] == "started"]
    assert len(spr_starts) == 2 and spr_starts[0]["runs"] == spr_starts[1]["runs"]
    assert len([e for e in ledger(root) if e["event"] == "started" and e["aux"] == "none"]) == 1
    for run, mtime in finished_at.items():  # the Baseline runs were not trained again
        assert (root / "runs" / run / "final_eval.json").stat().st_mtime_ns == mtime
    for run in spr_starts[0]["runs"].values():
        final = json.loads((root / "runs" / run / "final_eval.json").read_text())
        assert final["agent_steps"] == 400
    report = (root / "report.md").read_text()
    assert "| atari | 400 | toy_catch | none | 2 |" in report
    assert "| atari | 400 | toy_catch | spr | 2 |" in report


@pytest.mark.slow
def test_a_distributed_sweep_splits_the_grid_and_writes_one_report(tmp_path):
    """``sweep --distributed`` (here ``--coordinator``: two CPU processes over gloo, as the
    hosts of a pod would be started): each process works alone on its share of the jobs,
    waits for the other at the end, and process 0 alone writes the report of the whole grid."""
    from test_multiprocess import free_port

    root, port = tmp_path / "sweep", free_port()
    grid = [*GRID[:5], "0-1", "--aux", "none", *GRID[8:], "--group-size", "1"]
    commands = [[sys.executable, "-m", "mlr_jax", *grid, "--outdir", str(root), "--coordinator",
                 f"localhost:{port}", "--num-processes", "2", "--process-id", str(i)] for i in range(2)]
    outputs = finish(start_processes(commands, devices_per_process=1))
    for i, out in enumerate(outputs):
        assert f"this process ({i}/2) has 1 job(s), 1 runs" in out, out[-2000:]
        assert f"[sweep] process {i}/2 finished its share; waiting for the others" in out
    assert "[sweep] 2/2 runs done; process 0 writes the report" in outputs[1]
    started = {tuple(e["seeds"]) for e in ledger(root) if e["event"] == "started"}
    assert started == {(0,), (1,)}  # one job each, neither trained twice
    report = (root / "report.md").read_text()
    assert "| atari | 400 | toy_catch | none | 2 |" in report  # both seeds, one report
    assert report.count("| atari | 400 | toy_catch | none |") == 1
