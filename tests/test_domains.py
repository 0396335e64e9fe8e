"""The Atari schedules of the loop against transcriptions of rlpyt (the commit the authors'
code pins), which drove their runs: epsilon per agent step, the first update, and the
importance-sampling exponent of every update."""
import dataclasses

import numpy as np
import pytest

from mlr_jax import device_frames, domains, envs, parallel
from mlr_jax.config import AtariConfig, make_config


class RlpytEpsilon:
    """``EpsilonGreedyAgentMixin.sample_mode``: the epsilon is only recomputed while
    ``itr <= itr_max`` and otherwise keeps its last value."""

    def __init__(self, itr_min, itr_max, eps_init, eps_final):
        self.itr_min, self.itr_max = itr_min, itr_max
        self.eps_init, self.eps_final = eps_init, eps_final
        self.eps = eps_init

    def sample_mode(self, itr):
        if itr <= self.itr_max:
            prog = min(1, max(0, itr - self.itr_min) / (self.itr_max - self.itr_min))
            self.eps = prog * self.eps_final + (1 - prog) * self.eps_init
        return self.eps


def rlpyt_run(n_itr, min_itr_learn, beta_itr, beta_init, beta_final):
    """rlpyt's runner with the DQN algo: ``{itr: beta used by that itr's updates}`` for the
    itrs that update (``optimize_agent`` returns early below ``min_itr_learn``, and
    ``update_itr_hyperparams`` runs after the updates)."""
    beta, used = beta_init, {}
    for itr in range(n_itr):
        if itr < min_itr_learn:
            continue
        used[itr] = beta
        if itr <= beta_itr:
            prog = min(1, max(0, itr - min_itr_learn) / (beta_itr - min_itr_learn))
            beta = prog * beta_final + (1 - prog) * beta_init
    return used


def test_epsilon_is_one_for_2001_steps_then_zero():
    cfg = AtariConfig()
    eps = [domains.epsilon(cfg, step) for step in range(3000)]
    np.testing.assert_array_equal(eps[:2001], 1.0)  # step indices 0..2000: uniform random
    np.testing.assert_array_equal(eps[2001:], 0.0)  # then the noisy nets explore


@pytest.mark.parametrize("ramp_start,eps_steps,eps_end", [(2000, 2001, 0.0), (100, 400, 0.1),
                                                          (0, 250, 0.01)])
def test_epsilon_matches_rlpyt(ramp_start, eps_steps, eps_end):
    cfg = dataclasses.replace(AtariConfig(), eps_ramp_start=ramp_start, eps_steps=eps_steps,
                              eps_end=eps_end)
    reference = RlpytEpsilon(ramp_start, eps_steps, 1.0, eps_end)
    for itr in range(eps_steps + 300):
        assert domains.epsilon(cfg, itr) == pytest.approx(reference.sample_mode(itr), abs=1e-12)


@pytest.mark.parametrize("beta_steps, last", [(0, (0.99, 1.0)), (100_000, (0.42, 0.43))])
def test_first_update_and_importance_beta_match_rlpyt(beta_steps, last):
    """The paper's schedule in a shorter run: the loop updates once ``step`` transitions are
    stored, i.e. at step index ``itr = step - 1``; beta anneals over the authors'
    ``pri_beta_steps`` (100k, whatever the run's length) or, with ``beta_steps=0``, over the run."""
    cfg = make_config("atari", "toy_catch", "toy", ["steps=5000", "learning_starts=500",
                                                    f"beta_steps={beta_steps}"])
    used = rlpyt_run(cfg.steps, cfg.learning_starts, beta_steps or cfg.steps, cfg.beta_start, cfg.beta_end)
    domain = domains.make_domain(cfg, envs.make_env(cfg, 1, seed=0))
    first_itr = min(used)
    assert first_itr + 1 == domain.learning_starts  # the first updates once 501 steps are stored
    for itr, beta in used.items():
        assert domains.importance_beta(cfg, itr + 1) == pytest.approx(beta, abs=1e-12), itr
    assert used[first_itr] == used[first_itr + 1] == 0.4 and last[0] < used[cfg.steps - 1] < last[1]


def test_beta_anneals_over_the_authors_100k_steps_by_default():
    assert AtariConfig().beta_steps == 100_000 == AtariConfig().steps
    assert make_config("atari", "pong", "cpu").beta_steps == 100_000  # a 15k run: beta ends near 0.48
    assert make_config("atari", "toy_catch", "toy").beta_steps == 0  # the toy task: over its run


def test_paper_config_starts_learning_at_step_index_2000():
    cfg = make_config("atari", "pong")
    assert (cfg.learning_starts, cfg.eps_ramp_start, cfg.eps_steps) == (2000, 2000, 2001)
    assert domains.importance_beta(cfg, 2001) == 0.4


def test_memory_needed_counts_the_replay_and_batch_frames_by_hand():
    atari = make_config("atari", "pong", "paper", ["batch_size=100000"])
    need = domains.memory_needed(atari)
    assert need["replay"][0] == 100_000 * 84 * 84  # capacity = budget: every frame stored once
    assert need["batch"][0] == 100_000 * max(16, 10 + 1) * 4 * 84 * 84  # 42.1 GiB
    assert need["device_frames"][0] == 100_001 * 84 * 84  # the whole table, its zero row too
    dmc = make_config("dmc", "cartpole_swingup", "paper")
    need = domains.memory_needed(dmc)
    assert need["replay"][0] == 12_500 * 3 * 100 * 100  # 100k env steps / action repeat 8
    assert need["device_frames"][0] == 100_001 * 3 * 100 * 100  # 3.0 GB allocated, 0.38 GB written
    assert need["batch"][0] == (2 * 512 + 128 * 16) * 3 * 3 * 100 * 100
    assert domains.memory_needed(dataclasses.replace(dmc, aux="none"))["batch"][0] == 2 * 512 * 9 * 10**4


@pytest.mark.parametrize("domain, name", [("atari", "pong"), ("dmc", "cartpole_swingup")])
def test_planned_device_frames_are_what_the_tables_allocate(domain, name):
    cfg = make_config(domain, name, "smoke")
    tables = device_frames.FrameTables(parallel.layout(2))
    for seed in range(2):
        domains.make_replay(cfg, 2, mirror=tables.mirror(seed))
    assert tables.table.nbytes == 2 * domains.memory_needed(cfg)["device_frames"][0]
