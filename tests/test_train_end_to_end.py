"""End-to-end smoke runs on real envpool environments: every run-directory file is written,
``--resume`` continues the step count from the checkpoint instead of restarting, ``mlr-jax
eval`` reproduces the final evaluation. (A stop signal during training, its checkpoint and the
resume: Ctrl-C in ``tests/test_sweep.py``, SIGTERM across processes in
``tests/test_multiprocess.py``.)"""

import json
import pathlib
import subprocess
import time

import pytest

from mlr_jax import cli
from mlr_jax.logging import read_metrics

pytestmark = pytest.mark.slow

RUN_FILES = ("config.json", "param_counts.json", "metrics.jsonl", "metrics.csv",
             "final_eval.json", "learning_curve.png", "summary.md", "eval.gif")


def only_run_dir(outdir: pathlib.Path) -> pathlib.Path:
    runs = [p for p in outdir.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def check_run_dir(run: pathlib.Path, steps: int, episodes: int) -> dict:
    for name in RUN_FILES:
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert any((run / "tb").iterdir()), "no TensorBoard events"
    assert (run / "checkpoints" / str(steps)).is_dir()
    final = json.loads((run / "final_eval.json").read_text())
    assert final["agent_steps"] == steps and final["n"] == episodes == len(final["scores"])
    rows = read_metrics(run / "metrics.jsonl")
    assert max(r["step"] for r in rows) == steps
    assert any("train/rl_loss" in r or "train/critic_loss" in r for r in rows), "no update metrics"
    aux = json.loads((run / "config.json").read_text())["aux"]
    if aux != "none":
        assert any(f"train/{aux}_loss" in r for r in rows), f"no {aux} metrics logged"
    assert any("perf/sps" in r for r in rows)
    return final


XLA_CONVS = "run.conv_impl=xla"
# (domain, name, first run, resumed run, agent steps of each); DMC counts environment steps.
# The Atari run keeps its replay frames on the (CPU) devices, the DMC run on the host (the
# CPU default), so both batch paths train and resume end to end. The Atari run trains SPR
# (train, resume, eval of the third objective), DMC and the Ctrl-C run below train MLR.
# Updates start at agent step 200 (Atari) / 100 (DMC) in the smoke preset; each run makes a
# few of them and logs every 20 steps, so the run directory holds update metrics. These runs
# use XLA's convolutions (the CPU default is im2col, tests/nets/test_conv.py): compiling the
# update, not running it, is what costs time here, and XLA's convs compile in about half.
CASES = [
    ("atari", "pong", ["steps=220", "run.eval_every=0", "run.replay_frames=device", XLA_CONVS,
                       "--aux", "spr"],
     ["steps=240"], 220, 240),
    ("dmc", "cartpole_swingup", ["env_steps=1200", "run.eval_every=600", XLA_CONVS],
     ["env_steps=1400"], 150, 175),
]


@pytest.mark.parametrize("domain, name, first, more, steps, more_steps", CASES)
def test_smoke_run_then_resume(tmp_path, capsys, domain, name, first, more, steps, more_steps):
    flag = "--game" if domain == "atari" else "--task"
    base = ["train", domain, flag, name, "--preset", "smoke", "--outdir", str(tmp_path),
            "--no-progress", "run.checkpoint_every=0", "run.log_every=20"]
    assert cli.main(base + first) == 0
    run = only_run_dir(tmp_path)
    first_final = check_run_dir(run, steps, 2)
    # a smoke score means nothing: final_eval.json, summary.md and the console say so
    assert first_final["preset"] == "smoke" and "paper" not in first_final
    assert "no number to compare" in first_final["note"]
    assert "> a smoke run: " in (run / "summary.md").read_text()
    assert "over 2 episodes (a smoke run: " in capsys.readouterr().out
    protocol = first_final["protocol"]  # read from the evaluation environment itself
    if domain == "atari":
        assert protocol == {"episodes": 2, "episode_end": "game over", "noop_max": 30,
                            "sticky_actions": 0.0, "max_frames_per_episode": 400 * 4,
                            "frame_skip": 4, "epsilon": 0.001, "noisy_nets": "off"}
    else:
        assert protocol == {"episodes": 2, "backend": "envpool", "max_control_steps_per_episode": 1000,
                            "action_repeat": 8, "frame_size": 100, "actions": "mean of the policy",
                            "crop": "centre 84x84 of 100"}
    counts = json.loads((run / "param_counts.json").read_text())
    assert counts["dynamics" if domain == "atari" else "decoder"] > 0
    if domain == "dmc":  # the periodic evaluation ran too
        assert any("eval/mean" in r and r["step"] == 75 for r in read_metrics(run / "metrics.jsonl"))

    # resume to a later step: the count continues, nothing is restarted
    assert cli.main(["train", domain, "--resume", str(run), "--no-progress"] + more) == 0
    assert only_run_dir(tmp_path) == run
    check_run_dir(run, more_steps, 2)
    logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "perf/sps" in r]
    assert logged == sorted(logged) and logged[-1] == more_steps and steps in logged

    # `mlr-jax eval`: the final checkpoint reproduces final_eval.json, an earlier one the
    # first run's; other settings and bad requests
    final = json.loads((run / "final_eval.json").read_text())
    assert cli.main(["eval", str(run)]) == 0
    again = json.loads((run / "evals" / f"step_{more_steps}.json").read_text())
    assert again["scores"] == final["scores"] and again["checkpoint_step"] == more_steps
    assert cli.main(["eval", str(run), "--step", str(steps), "--gif"]) == 0
    earlier = json.loads((run / "evals" / f"step_{steps}.json").read_text())
    assert earlier["scores"] == first_final["scores"]
    assert (run / "evals" / f"step_{steps}.gif").stat().st_size > 0
    assert cli.main(["eval", str(run), "--episodes", "3", "--seed", "5"]) == 0
    other = json.loads((run / "evals" / f"step_{more_steps}.json").read_text())
    assert other["n"] == 3 and other["eval_seed"] == 5
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", str(run), "--step", "123"])
    assert exit_info.value.code == 2
    assert "no checkpoint of step 123" in capsys.readouterr().err


def wait_for_metrics_step(outdir: pathlib.Path, step: int, procs: list[subprocess.Popen],
                          timeout_s: float = 600) -> pathlib.Path:
    """The run directory below ``outdir`` once its metrics.jsonl has a row at ``step`` or
    later (fails if a process exits first or time runs out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a training process exited early"
        runs = [p for p in outdir.iterdir() if p.is_dir()] if outdir.is_dir() else []
        metrics = runs[0] / "metrics.jsonl" if runs else None
        if metrics is not None and metrics.exists() and any(
                r["step"] >= step for r in read_metrics(metrics)):
            return runs[0]
        time.sleep(0.5)
    raise AssertionError(f"no metrics row at step {step} within {timeout_s} s")


LONG_SMOKE_RUN = ["train", "atari", "--game", "pong", "--preset", "smoke", "--no-progress",
                  "steps=100000", "run.log_every=10", "run.checkpoint_every=0", XLA_CONVS]
