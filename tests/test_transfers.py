"""The loop's copies from the devices to the host with the batches drawn on the devices
(``run.sampler=device``): at most one per agent step (the actions, with the tally's
non-finite flag packed in), none per update and none when a step is stored; the tally is read
at log rows only. Two seeds of each domain's toy task, counted by
:func:`mlr_jax.parallel.counting_transfers` around each phase of :class:`mlr_jax.learners.DeviceLearner`.
"""
import collections

import pytest

from mlr_jax import learners, loop, parallel
from mlr_jax.config import make_config
from mlr_jax.logging import read_metrics

pytestmark = pytest.mark.slow


def counted(monkeypatch, calls):
    """Wrap the device learner's phases: ``calls[phase]`` lists the copies of each call."""
    for phase in ("act", "after_store", "learn", "window_means"):
        real = getattr(learners.DeviceLearner, phase)

        def wrapper(self, *args, _real=real, _phase=phase):
            before = parallel.transfers()
            out = _real(self, *args)
            calls[_phase].append(parallel.transfers() - before)
            return out

        monkeypatch.setattr(learners.DeviceLearner, phase, wrapper)


@pytest.mark.parametrize("domain, name, overrides", [
    ("atari", "toy_catch", ["steps=400", "aux=none"]),  # DMC below samples MLR sequences too
    ("dmc", "toy_reach", ["env_steps=420"]),  # 120 updates
])
def test_one_copy_per_agent_step_and_none_per_update(tmp_path, monkeypatch, domain, name, overrides):
    calls = collections.defaultdict(list)
    counted(monkeypatch, calls)
    cfg = make_config(domain, name, "toy", [*overrides, f"run.outdir={tmp_path}", "run.sampler=device",
                                            "run.log_every=50", "run.eval_every=0",
                                            "run.eval_episodes=2", "run.progress=false"])
    with parallel.counting_transfers():
        results = loop.train_group(loop.seed_configs(cfg, [0, 1]), log=lambda *_: None)
    steps = results[0].steps
    assert len(calls["act"]) == len(calls["after_store"]) == steps
    # compiling a program may read an array it captures as a constant (the C51 support)
    # once: the first call of each phase is its compilation
    acting = [n for n in calls["act"] if n]  # none: DMC's random first steps
    assert set(acting[1:]) == {1} and acting[0] <= 2
    assert set(calls["after_store"][1:]) == {0}, calls["after_store"][:20]
    assert set(calls["learn"][1:]) == {0}, [(i, n) for i, n in enumerate(calls["learn"]) if n]
    assert len(calls["learn"]) >= 20  # the updates ran
    assert len(calls["window_means"]) == sum(1 for r in read_metrics(results[0].run_dir / "metrics.jsonl")
                                             if "perf/sps" in r)
    rows = [r for r in read_metrics(results[0].run_dir / "metrics.jsonl") if "perf/device_to_host" in r]
    # a log row reads the tally in one copy, counted in the next row's window: at most one a
    # step plus one per row once learning (the first rows also hold compilations)
    learning = [(a, b) for a, b in zip(rows, rows[1:]) if a["step"] >= cfg_learning_starts(cfg)]
    assert learning and all(b["perf/device_to_host"] <= 1 + 1 / (b["step"] - a["step"]) + 1e-9
                            for a, b in learning[1:])


def cfg_learning_starts(cfg):
    """The agent step of the first update."""
    return getattr(cfg, "learning_starts", getattr(cfg, "seed_steps", 0))
