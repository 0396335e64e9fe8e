"""The training loop on the toy tasks (no envpool): a non-finite update stops the run, names
the update, and keeps the last finite checkpoint; the evaluation policy compiles once per run.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import checkpoint, cli, domains, envs, loop
from mlr_jax.agents import atari as atari_agent
from mlr_jax.config import make_config
from mlr_jax.logging import RunDir

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


def test_a_non_finite_dmc_update_stops_the_loop(tmp_path, monkeypatch):
    """The same in the other domain, whose loop reads no result of the update itself."""
    _poison_batches(monkeypatch)
    cfg = make_config("dmc", "toy_reach", "toy", ["env_steps=360", f"run.outdir={tmp_path}", *SHORT])
    with pytest.raises(loop.NonFiniteUpdate) as info:
        loop.train(cfg, log=lambda *_: None)
    err = info.value
    assert (err.update, err.step) == (BAD_STEP - cfg.seed_steps + 1, BAD_STEP)
    assert np.isnan(err.bad["critic_loss"]) and "critic_loss=nan" in str(err)
    _check_stopped_run(next(tmp_path.iterdir()), cfg)
