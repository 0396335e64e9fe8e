"""``run.precision=bf16`` against fp32: one update from the same parameters, batch and key,
through XLA's convolutions (``run.conv_impl=xla``, what an accelerator runs), with the Atari
agent's paper-width decoder (latent 64 x 7 x 7 = 3136 wide, 2 blocks, 157M parameters) at a
small batch. Gradients (read back from Adam's first moment) and the updated parameters are
compared within bounds derived from bfloat16's 8-bit significand; parameters and optimiser
state stay float32.

The bounds:
- bfloat16 keeps 8 significant bits: rounding a float32 to it moves the value by at most
  ``u = 2**-8`` relative. A bf16 matmul or convolution rounds its two inputs and its output,
  and so does each of the layers on the path of a gradient, forward and backward. Rounding
  errors of independent values add like a random walk, so a gradient tensor's error is about
  ``u * sqrt(n)`` of its norm for ``n`` roundings on its path; the bound allows twice that,
  with ``n = 3 * 2 * layers`` (three roundings a layer, forward and backward). It holds for
  the whole gradient (what the optimiser clips and steps along), not for each tensor: a
  tensor whose gradient cancels to nearly zero (a bias) has an error relative to its terms.
  The losses are held to the same bound.
- Adam's first step moves a parameter by ``lr * g / (|g| + eps)`` (bias corrections make
  ``m = g`` and ``v = g**2``), a function of ``g`` with slope at most ``1 / eps``: so a
  parameter's two updates differ by at most ``lr * min(2, |dg| / eps)`` for a gradient
  difference ``dg``, plus float32 rounding of the parameter.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mlr_jax.agents import atari, dmc
from mlr_jax.bench.runner import random_batch
from mlr_jax.config import make_config

pytestmark = pytest.mark.slow

BF16_U = 2.0 ** -8

# (domain, name, preset, overrides, actions, losses, parameter group, its optimiser state
# field, b1, lr, eps (the config's field names; None: optax's default), bf16 layers on the
# deepest gradient path, the parameters that only this optimiser's step moves)
CASES = {
    # paper sizes with batch 2: 3 convs, the value/advantage MLPs (2 layers), the decoder's
    # 2 blocks (qkv, 2 attention products, proj, fc1, fc2) and the projection/prediction heads
    "atari": ("atari", "pong", "paper", ["batch_size=2"], 6, ("rl_loss", "mlr_loss"),
              "params", "opt_state", None, "lr", "adam_eps", 3 + 2 + 2 * 6 + 3, ""),
    # the toy networks; the critic's path: 2 convs, the head's fc, the Q MLP's 3 layers (the
    # MLR step moves the encoder too, so the parameters compared are the Q heads')
    "dmc": ("dmc", "toy_reach", "toy", [], 2, ("critic_loss", "mlr_loss", "actor_loss"),
            "critic", "critic_opt", "critic_beta1", "critic_lr", None, 2 + 1 + 3, "['q"),
}


def one_update(case, precision):
    domain, name, preset, overrides, actions = CASES[case][:5]
    cfg = make_config(domain, name, preset, [*overrides, f"run.precision={precision}",
                                             "run.conv_impl=xla"])
    agent = (atari if domain == "atari" else dmc).make_agent(cfg, actions)
    state = agent.init(jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, random_batch(cfg, actions, seed=1))
    new_state, metrics = jax.jit(agent.train_step)(state, batch, jax.random.PRNGKey(2))
    return cfg, jax.device_get(state), jax.device_get(new_state), jax.device_get(metrics)


def adam_gradients(opt_state, b1):
    """The gradients of a first Adam step: its first moment is ``(1 - b1) * g``."""
    (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
               if isinstance(s, optax.ScaleByAdamState)]
    return jax.tree.map(lambda m: np.asarray(m, np.float64) / (1 - b1), adam.mu)


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_update_matches_fp32_within_bfloat16_rounding(case):
    *_, losses, group, opt_field, b1_field, lr_field, eps_field, layers, only_this_step = CASES[case]
    cfg, before, fp32_state, fp32 = one_update(case, "fp32")
    _, _, bf16_state, bf16 = one_update(case, "bf16")
    n_roundings = 3 * 2 * layers
    rel_bound = 2 * BF16_U * np.sqrt(n_roundings)
    for key in losses:
        a, b = float(fp32[key]), float(bf16[key])
        assert np.isfinite(b) and abs(b - a) <= rel_bound * abs(a), (key, a, b, rel_bound)
    # bf16 really ran: rounding moves the losses, just not far
    assert any(float(fp32[key]) != float(bf16[key]) for key in losses)
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(bf16_state) if jnp.issubdtype(leaf.dtype, jnp.floating)}
    assert dtypes == {jnp.dtype(jnp.float32)}

    b1 = getattr(cfg, b1_field) if b1_field else 0.9
    g32 = adam_gradients(getattr(fp32_state, opt_field), b1)
    g16 = adam_gradients(getattr(bf16_state, opt_field), b1)
    lr = getattr(cfg, lr_field)
    eps = getattr(cfg, eps_field) if eps_field else 1e-8
    # the gradient as the optimiser sees it (clipped by its global norm): one vector. A single
    # tensor can cancel (a bias's gradient sums signed terms to nearly zero; the advantage
    # bias's is zero in exact arithmetic), so its error is relative to the terms, not the sum
    diff = np.sqrt(sum(np.sum((b - a) ** 2) for a, b in zip(jax.tree.leaves(g32), jax.tree.leaves(g16))))
    rel = diff / np.sqrt(sum(np.sum(a ** 2) for a in jax.tree.leaves(g32)))
    print(f"{case}: bf16 gradient off by {rel:.3g} of its norm (bound {rel_bound:.3g})")
    assert 0.0 < rel <= rel_bound, f"bf16 gradient off by {rel:.3g} of its norm (bound {rel_bound:.3g})"
    compared = 0
    for (path, a), b, p0, p32, p16 in zip(jax.tree_util.tree_flatten_with_path(g32)[0], jax.tree.leaves(g16),
                                          jax.tree.leaves(getattr(before, group)),
                                          jax.tree.leaves(getattr(fp32_state, group)),
                                          jax.tree.leaves(getattr(bf16_state, group))):
        name = jax.tree_util.keystr(path)
        if not name.startswith(only_this_step):
            continue
        step_bound = lr * np.minimum(2.0, np.abs(b - a) / eps) + 4 * np.finfo(np.float32).eps * np.abs(p0)
        excess = np.abs(np.asarray(p16, np.float64) - p32) - step_bound
        assert excess.max() <= 0.0, f"{name}: an updated parameter is {excess.max():.3g} beyond its bound"
        compared += 1
    assert compared >= 4


@pytest.mark.parametrize("precision, xla", [("fp32", "HIGHEST"), ("tf32", "HIGH"), ("bf16", "DEFAULT")])
@pytest.mark.parametrize("domain", ["atari", "dmc"])
def test_the_compiled_step_carries_the_precision_asked_for(domain, precision, xla):
    """``run.precision`` reaches XLA: every dot and convolution of the lowered update (and of
    acting) carries its precision config (fp32: HIGHEST, full float32 on any backend; tf32:
    HIGH, TF32 on GPUs; bf16: DEFAULT on bfloat16 inputs)."""
    name, actions = ("toy_catch", 3) if domain == "atari" else ("toy_reach", 2)
    cfg = make_config(domain, name, "toy", [f"run.precision={precision}", "run.conv_impl=xla"])
    agent = (atari if domain == "atari" else dmc).make_agent(cfg, actions)
    key = jax.random.PRNGKey(0)
    state = jax.eval_shape(agent.init, key)
    batch = random_batch(cfg, actions, seed=0)
    obs = (batch.obs[:1, 0] if domain == "atari" else batch.sac.obs[:1])
    for program in (jax.jit(agent.train_step).lower(state, batch, key),
                    jax.jit(agent.eval_act).lower(state, obs, key)):
        ops = [line for line in program.as_text().splitlines()
               if "stablehlo.dot_general" in line or "stablehlo.convolution" in line]
        assert len(ops) >= 3 and all(f"precision {xla}>" in op or f"[{xla}, {xla}]" in op for op in ops), \
            [op for op in ops if xla not in op][:2]
