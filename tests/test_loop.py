"""The training loop on the toy tasks (no envpool): a non-finite update stops the run, names
the update, and keeps the last finite checkpoint; the evaluation policy compiles once per run;
a stop signal during the final checkpoint or evaluation leaves a run that resumes to its end;
a mismatched resume or a run too big for memory is refused before anything is built.
"""
import dataclasses
import itertools
import json
import os
import re
import signal
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import checkpoint, cli, domains, envs, loop
from mlr_jax.agents import atari as atari_agent
from mlr_jax.config import ConfigError, make_config
from mlr_jax.logging import RunDir, read_metrics

BAD_STEP = 345  # the agent step whose first update gets a NaN in its batch
SHORT = ["run.checkpoint_every=330", "run.log_every=10", "run.progress=false", "aux=none"]


def _poison_batches(monkeypatch):
    """From agent step BAD_STEP on, every batch carries a NaN reward."""
    real = domains.sample_batch

    def sample(cfg, replay, step, rng):
        batch = real(cfg, replay, step, rng)
        if step < BAD_STEP:
            return batch
        if hasattr(batch, "returns"):
            return batch._replace(returns=np.full_like(batch.returns, np.nan))
        return batch._replace(sac=batch.sac._replace(reward=np.full_like(batch.sac.reward, np.nan)))

    monkeypatch.setattr(domains, "sample_batch", sample)


def _check_stopped_run(run_dir, cfg):
    """Only finite updates were saved or logged, and the run did not finish."""
    run = RunDir.open(run_dir)
    assert checkpoint.latest_step(run.checkpoints) == 330
    agent = domains.make_domain(cfg, envs.make_env(cfg, 1, seed=0)).agent
    state, _, loop_state, _ = checkpoint.restore(run.checkpoints, agent.init(jax.random.key(0)),
                                                 json.loads(run.config.read_text()),
                                                 with_replay=False)
    assert loop_state["step"] == 330
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state)
               if jnp.issubdtype(x.dtype, jnp.floating))
    rows = [json.loads(line) for line in run.metrics_jsonl.read_text().splitlines()]
    assert any(k.startswith("train/") for r in rows for k in r)
    assert max(r["step"] for r in rows) <= BAD_STEP
    assert all(np.isfinite(v) for r in rows for k, v in r.items() if k.startswith("train/"))
    assert not run.final_eval.exists()
    return rows


def test_cli_stops_a_non_finite_atari_run_and_compiles_the_eval_policy_once(tmp_path, monkeypatch,
                                                                             capsys):
    """``mlr-jax train`` on toy_catch, 5 evaluations (every 60 steps) before a NaN reaches
    update 45 (agent step 345): exit status 3, one line naming the update, step and loss;
    checkpoint 330 kept; the evaluation policy traced once for all evaluations."""
    traces = []
    real = atari_agent.make_agent

    def counting(cfg, num_actions):
        agent = real(cfg, num_actions)

        def eval_act(*args):
            traces.append(1)  # runs once per trace of the jitted caller
            return agent.eval_act(*args)

        return agent._replace(eval_act=eval_act)

    monkeypatch.setattr(domains.atari_agent, "make_agent", counting)
    _poison_batches(monkeypatch)
    overrides = ["steps=360", "run.eval_every=60", "run.eval_episodes=3", *SHORT]
    argv = ["train", "atari", "--game", "toy_catch", "--preset", "toy", "--outdir", str(tmp_path),
            *overrides]
    assert cli.main(argv) == cli.NON_FINITE_EXIT == 3
    last = capsys.readouterr().err.splitlines()[-1]
    cfg = make_config("atari", "toy_catch", "toy", overrides)
    update = (BAD_STEP - (cfg.learning_starts + 1)) * cfg.updates_per_step + 1
    assert last.startswith(f"mlr-jax: error: update {update} (at agent step {BAD_STEP}) "
                           "produced non-finite values")
    (run_dir,) = tmp_path.iterdir()
    assert "rl_loss=nan" in last and f"--resume {run_dir}" in last
    assert str(run_dir / "checkpoints" / "330") in last
    rows = _check_stopped_run(run_dir, cfg)
    assert sum("eval/mean" in r for r in rows) == 5 and len(traces) == 1


def _poison_updates(monkeypatch, first_bad):
    """From the update made at agent step BAD_STEP on, the DMC agent's update sees NaN
    rewards (inside the step, so a batch drawn on the devices is poisoned too)."""
    real = domains.dmc_agent.make_agent

    def poisoned(cfg, *args):
        agent = real(cfg, *args)

        def train_step(state, batch, key, axis_name=None):
            reward = jnp.where(state.step >= first_bad, jnp.nan, batch.sac.reward)
            return agent.train_step(state, batch._replace(sac=batch.sac._replace(reward=reward)),
                                    key, axis_name=axis_name)

        return agent._replace(train_step=train_step)

    monkeypatch.setattr(domains.dmc_agent, "make_agent", poisoned)


@pytest.mark.parametrize("sampler", ["host", "device"])
def test_a_non_finite_dmc_update_stops_the_loop(tmp_path, monkeypatch, capsys, sampler):
    """The same in the other domain, whose loop reads no result of the update itself; its
    progress lines count environment steps, as DMC budgets do. With the batches drawn on
    the devices the first bad update is found in the tally read with the next actions, and
    the run stops with the same message and only finite checkpoints and rows."""
    cfg = make_config("dmc", "toy_reach", "toy", ["env_steps=360", f"run.outdir={tmp_path}",
                                                  f"run.sampler={sampler}", *SHORT])
    update = BAD_STEP - cfg.seed_steps + 1  # DMC updates from step index seed_steps on
    _poison_updates(monkeypatch, first_bad=update - 1)  # state.step counts the updates before
    with pytest.raises(loop.NonFiniteUpdate) as info:
        loop.train(cfg, log=lambda *_: None)
    err = info.value
    assert (err.update, err.step) == (update, BAD_STEP)
    assert np.isnan(err.bad["critic_loss"]) and "critic_loss=nan" in str(err)
    _check_stopped_run(next(tmp_path.iterdir()), cfg)
    assert "dmc:toy_reach 250/360 env steps (69.4%) |" in capsys.readouterr().err


def _interrupting(monkeypatch, module, name):
    """Replace ``module.name`` by a function that sends this process SIGINT (Ctrl-C), then
    does what the original does."""
    real = getattr(module, name)

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def _ticking_clock(monkeypatch, seconds_per_call):
    """The loop's clock (``time.monotonic``, its only use of ``time``) advances by
    ``seconds_per_call`` each time it is read: wall times that do not depend on the machine."""
    ticks = itertools.count(start=0.0, step=float(seconds_per_call))
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))


def _wall_time(summary_md):
    return float(re.search(r"\| wall time \(s\) \| ([0-9.]+) \|", summary_md.read_text()).group(1))


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_a_stop_during_the_final_checkpoint_or_evaluation_then_resume(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the final checkpoint is written: the checkpoint is completed (no orbax
    temporary left), the run stops before its final evaluation with exit status 130, and
    --resume only evaluates; Ctrl-C during that evaluation stops it again, the same way. The
    resumed run's summary counts the wall time of every part. ``mlr-jax eval`` that cannot
    write prints the scores first. Then a resume with a changed network, and a run too big for
    memory, are refused before an environment is built. The run streams to an offline wandb
    run (run.wandb) that every resumed part continues."""
    quiet = lambda *_: None  # noqa: E731
    cfg = make_config("atari", "toy_catch", "toy", ["steps=310", "run.eval_episodes=3",
                                                    f"run.outdir={tmp_path}", *SHORT,
                                                    "run.wandb=mlr-jax-test", "run.wandb_mode=offline"])
    _interrupting(monkeypatch, checkpoint, "save")  # the only save is the final one
    _ticking_clock(monkeypatch, 1000)  # the training part's clock: 1000 s a reading
    with pytest.raises(loop.TrainingInterrupted) as info:
        loop.train(cfg, log=quiet)
    monkeypatch.undo()
    run_dir = info.value.run_dir
    assert info.value.step == 310 and info.value.exit_code == 130
    assert "checkpoint saved in" in str(info.value)
    assert f"run the final evaluation with --resume {run_dir}" in str(info.value)
    run = RunDir.open(run_dir)
    assert [p.name for p in run.checkpoints.iterdir()] == ["310"] and not run.final_eval.exists()
    state = domains.make_domain(cfg, envs.make_env(cfg, 1, seed=0)).agent.init(jax.random.key(0))
    first_wall = checkpoint.restore(run.checkpoints, state, with_replay=False)[2]["wall_time"]

    _interrupting(monkeypatch, loop, "evaluate")
    with pytest.raises(loop.TrainingInterrupted, match="at agent step 310; .* run the final evaluation"):
        loop.train(cfg, resume=run_dir, log=quiet)
    monkeypatch.undo()
    assert not run.final_eval.exists()

    _ticking_clock(monkeypatch, 1)  # the evaluation-only part's: 1 s a reading
    result = loop.train(cfg, resume=run_dir, log=quiet)
    monkeypatch.undo()
    final = json.loads(run.final_eval.read_text())
    assert result.steps == 310 and final["n"] == 3
    assert final["protocol"] == {"episodes": 3, "epsilon": cfg.eval_epsilon, "noisy_nets": "off"}
    evals = [r for r in read_metrics(run.metrics_jsonl) if "eval/mean" in r]
    assert [r["step"] for r in evals] == [310]
    # the summary adds the last part's own time (a few 1-s readings) to the training's
    # (1000-s readings), which the checkpoint carried
    assert first_wall >= 1000 and first_wall + 1 <= _wall_time(run.summary) < first_wall + 1000
    # run.wandb: each part went to the wandb run named after the run directory
    # (wandb names a part's directory by its start time to the second, adding "-1" to the
    # second of two parts that start within one second: a quick machine's evaluation-only parts)
    parts = sorted(p.name for p in (run_dir / "wandb").glob("offline-run-*"))
    name = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_dir.name)}(-\d+)?")
    assert parts and all(name.fullmatch(p) for p in parts), parts

    # `mlr-jax eval` into a run directory it cannot write: the scores are printed first
    final_scores = json.loads(run.final_eval.read_text())["scores"]

    def unwritable(path, data):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(loop.runlog, "write_json", unwritable)
    capsys.readouterr()  # the training's progress lines
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["eval", str(run_dir)])
    monkeypatch.undo()
    out, err = capsys.readouterr()
    assert exit_info.value.code == 2
    assert "scores: " + ", ".join(f"{x:g}" for x in final_scores) in out
    assert err == (f"mlr-jax: error: the scores above could not be written to {run_dir / 'evals'} "
                   "(Permission denied)\n")

    monkeypatch.setattr(envs, "make_env", lambda *a, **k: pytest.fail("an environment was built"))
    with pytest.raises(checkpoint.CheckpointMismatch, match="hidden_size: checkpoint=64 current=128"):
        loop.train(dataclasses.replace(cfg, hidden_size=128), resume=run_dir, log=quiet)
    with pytest.raises(ConfigError, match=r"does not fit in memory on this host: .* batch [\d,]+\.\d GiB.*"
                                          r"batch: batch_size=1000000000 x 11 steps x 4 frames of 20x20"):
        loop.train(dataclasses.replace(cfg, batch_size=10**9), log=quiet)


def test_device_sampler_checkpoints_its_priorities_and_resumes(tmp_path):
    """With the batches drawn on the devices the priorities live there: a checkpoint holds
    the ones the updates wrote (not the host replay's initial 1s), a resumed run reloads them
    into its device copy and trains on to its end."""
    overrides = [f"run.outdir={tmp_path}", "run.sampler=device", "run.checkpoint_every=0",
                 "run.log_every=10", "run.progress=false", "run.eval_episodes=2", "aux=none"]
    cfg = make_config("atari", "toy_catch", "toy", ["steps=330", *overrides])
    run_dir = loop.train(cfg, log=lambda *_: None).run_dir
    agent = domains.make_domain(cfg, envs.make_env(cfg, 1, seed=0)).agent
    _, replay, loop_state, _ = checkpoint.restore(RunDir.open(run_dir).checkpoints,
                                                  agent.init(jax.random.key(0)))
    priority = np.asarray(replay["priority"])
    written = priority[:330]
    assert loop_state["step"] == 330 and (written != 1.0).sum() >= 30  # drawn starts re-prioritised
    longer = dataclasses.replace(cfg, steps=360)
    result = loop.train(longer, resume=run_dir, log=lambda *_: None)
    assert result.steps == 360 and (run_dir / "final_eval.json").exists()
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert any(r["step"] > 330 and "train/rl_loss" in r for r in rows)
