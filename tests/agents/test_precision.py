"""``run.precision=bf16`` keeps the losses of an update within tolerance of fp32 (same
parameters, batch and key), with float32 parameters and optimizer state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax.agents import atari, dmc
from mlr_jax.bench.runner import random_batch
from mlr_jax.config import make_config

pytestmark = pytest.mark.slow


def one_update(domain, precision, make_agent, num_actions, name):
    cfg = make_config(domain, name, "toy", [f"run.precision={precision}"])
    agent = make_agent(cfg, num_actions)
    state = agent.init(jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, random_batch(cfg, num_actions, seed=1))
    # jitted as the loop runs it (the DMC agent's functions are plain; op-by-op is 4x slower)
    new_state, metrics = jax.jit(agent.train_step)(state, batch, jax.random.PRNGKey(2))
    return new_state, metrics


# The toy preset's small networks: every conv, matmul and attention of the update runs in
# bfloat16 all the same, and the CPU's bfloat16 emulation stays cheap.
@pytest.mark.parametrize("domain, make_agent, num_actions, name, losses", [
    ("atari", atari.make_agent, 3, "toy_catch", ("rl_loss", "mlr_loss")),
    ("dmc", dmc.make_agent, 2, "toy_reach", ("critic_loss", "mlr_loss", "actor_loss")),
])
def test_bf16_losses_match_fp32(domain, make_agent, num_actions, name, losses):
    fp32_state, fp32 = one_update(domain, "fp32", make_agent, num_actions, name)
    bf16_state, bf16 = one_update(domain, "bf16", make_agent, num_actions, name)
    for key in losses:
        a, b = float(fp32[key]), float(bf16[key])
        assert np.isfinite(b) and b == pytest.approx(a, rel=3e-2, abs=1e-3), (key, a, b)
    # bf16 really ran: rounding moves the losses, just not far
    assert any(float(fp32[key]) != float(bf16[key]) for key in losses)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(bf16_state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}
