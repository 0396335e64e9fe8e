"""GroupEnv: a group's seeds stepped together equal each seed's environment alone (envpool
seeds environment ``i`` of a vector with ``seed + i``), whether its seeds share one vector
environment (consecutive seeds) or not."""
import numpy as np
import pytest

from mlr_jax.config import make_config
from mlr_jax.envs import make_env
from mlr_jax.envs.group import GroupEnv, consecutive_runs


def test_consecutive_runs():
    assert consecutive_runs([0, 1, 2, 7, 8]) == [(0, 3), (7, 2)]
    assert consecutive_runs([5]) == [(5, 1)]
    assert consecutive_runs([3, 2, 4]) == [(3, 1), (2, 1), (4, 1)]  # the group's order is kept


# agent steps: past a game over in random Breakout; past the end of the smoke DMC episode (125)
@pytest.mark.parametrize("domain, name, steps", [("atari", "breakout", 260), ("dmc", "cartpole_swingup", 140)])
def test_a_group_steps_as_its_seeds_alone(domain, name, steps):
    cfg = make_config(domain, name, "smoke", [])
    seeds = [3, 4, 9]  # 3 and 4 share a vector environment, 9 has its own
    make = lambda n, seed: make_env(cfg, n, seed)  # noqa: E731
    group = GroupEnv(make, seeds)
    assert [env.num_envs for env in group.envs] == [2, 1]
    alone = [make(1, seed) for seed in seeds]
    obs = group.reset()
    assert obs.shape == (3, 1, *group.first.obs_shape)
    for i, env in enumerate(alone):
        np.testing.assert_array_equal(obs[i], env.reset())
    rng = np.random.default_rng(0)
    ends = 0
    for t in range(steps):
        if domain == "atari":
            actions = rng.integers(0, group.first.num_actions, (3, 1)).astype(np.int32)
        else:
            actions = rng.uniform(-1, 1, (3, 1, group.first.action_dim)).astype(np.float32)
        step = group.step(actions)
        ends += int(step.episode_end.sum())
        for i, env in enumerate(alone):
            expected = env.step(actions[i])
            for field, value in expected._asdict().items():
                np.testing.assert_array_equal(getattr(step, field)[i], value,
                                              err_msg=f"seed {seeds[i]} {field} at step {t}")
    assert ends > 0
    with pytest.raises(ValueError, match=r"expected \[seeds=3, 1"):
        group.step(actions[:2])
    group.close()
