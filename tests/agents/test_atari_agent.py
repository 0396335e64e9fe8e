"""The Atari agent's update: target/momentum bookkeeping, learning, data parallelism, acting."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.agents.common import seed_axes
import one_run
from mlr_jax.agents import atari
from mlr_jax.agents.atari import make_agent
from mlr_jax.config import make_config
from mlr_jax.nets.atari import DuelingC51Head, NatureCNN, projection_params
from mlr_jax.agents.atari_aux import window
from mlr_jax.replay.atari import AtariBatch
from tolerances import METRIC_RTOL

NUM_ACTIONS = 3
# The smoke preset (channels 16,32,16, seq_len 4, batch 4) with a short return horizon.
SMALL = {"n_step": 3, "hidden_size": 32, "lr": 1e-3}




def fake_batch(cfg, batch_size=None, seed=0):
    rng = np.random.default_rng(seed)
    b = batch_size or cfg.batch_size
    length = max(window(cfg), cfg.n_step + 1)
    size = cfg.image_size
    # Smooth-ish images so that shifts and masks matter but the task is learnable.
    base = rng.integers(0, 256, (b, 1, cfg.frame_stack, size // 12, size // 12))
    obs = np.repeat(np.repeat(base, 12, -1), 12, -2)
    obs = obs + rng.integers(0, 8, (b, length, 1, size, size))
    discounts = np.full(b, cfg.gamma ** cfg.n_step, np.float32)
    discounts[0] = 0.0
    first_done = np.full(b, length, np.int32)
    first_done[0] = 0  # a done at s_t (its discount is 0); SPR masks every rollout step
    first_done[1] = 2  # a done at s_{t+2}: SPR masks steps 2.. of the rollout
    return AtariBatch(obs=np.clip(obs, 0, 255).astype(np.uint8),
                     actions=rng.integers(0, NUM_ACTIONS, (b, length)).astype(np.int32),
                     returns=rng.uniform(-2, 2, b).astype(np.float32), discounts=discounts,
                     weights=rng.uniform(0.3, 1.0, b).astype(np.float32),
                     indices=np.arange(b, dtype=np.int64), first_done=first_done)


def subset(params, *names):
    return {name: params[name] for name in names}


def momentum_view(params):
    """The online counterpart of the momentum parameters."""
    return {"encoder": params["encoder"], "projection": projection_params(params["head"])}


def assert_trees_close(a, b, **kw):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


@pytest.fixture(scope="module")
def setup():
    """Smoke config, its agent, an initial state and a step jitted under a trace counter."""
    cfg = make_config("atari", "pong", "smoke", SMALL)
    agent = make_agent(cfg, NUM_ACTIONS)
    nets = atari.build_networks(cfg, NUM_ACTIONS)

    @chex.assert_max_traces(n=1)
    def counted(state, batch, key, axis_name=None):
        return atari.train_step(nets, state, batch, key, axis_name)

    step = jax.jit(counted, static_argnames="axis_name")
    return cfg, agent, agent.init(jax.random.PRNGKey(0)), step


@pytest.fixture(scope="module")
def one_step(setup):
    cfg, agent, state, step = setup
    batch = fake_batch(cfg)
    new_state, metrics = step(state, batch, jax.random.PRNGKey(1))
    return state, new_state, metrics, batch


def test_state_layout_and_param_counts(setup):
    cfg, agent, state, _ = setup
    assert set(state.params) == {"encoder", "head", "decoder", "action_embedding", "predictor"}
    assert_trees_close(state.target_params, subset(state.params, "encoder", "head"), rtol=0)
    assert_trees_close(state.aux_target, momentum_view(state.params), rtol=0)
    counts = agent.param_counts(state)
    dim = 16 * 7 * 7
    assert counts["action_embedding"] == NUM_ACTIONS * dim + dim
    assert counts["predictor"] == 64 * 64 + 64
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    chex.assert_trees_all_equal_dtypes(state.params, jax.tree.map(jnp.float32, state.params))


def test_aux_none_has_no_decoder_params(setup):
    _, agent_mlr, state_mlr, _ = setup
    cfg = make_config("atari", "pong", "smoke", {**SMALL, "aux": "none"})
    agent = make_agent(cfg, NUM_ACTIONS)
    # Shapes only: eval_shape traces init and the whole update without compiling them.
    state = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    assert set(state.params) == {"encoder", "head"} and state.aux_target == {}
    assert "mlr_loss" not in jax.eval_shape(agent.train_step, state, fake_batch(cfg),
                                            jax.random.PRNGKey(1))[1]
    counts, counts_mlr = agent.param_counts(state), agent_mlr.param_counts(state_mlr)
    assert counts["total"] < counts_mlr["total"]
    assert counts["encoder"] == counts_mlr["encoder"] and counts["head"] == counts_mlr["head"]
    new_state, metrics = jax.eval_shape(agent.train_step, state, fake_batch(cfg),
                                        jax.random.PRNGKey(1))
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    assert "decoder_grad_norm" not in metrics
    chex.assert_shape(metrics["priorities"], (cfg.batch_size,))


def test_paper_config_param_counts_from_shapes():
    cfg = make_config("atari", "pong", "paper")
    agent = make_agent(cfg, 18)
    shapes = jax.eval_shape(agent.init, jax.random.PRNGKey(0))
    counts = agent.param_counts(shapes)
    dim = 3136
    # Two blocks: qkv (no bias) + proj + MLP(2D) + 2 LayerNorms = 8 D^2 + 8 D each.
    assert counts["decoder"] == 2 * (8 * dim * dim + 8 * dim)
    assert counts["decoder"] == pytest.approx(157.4e6, rel=1e-3)
    assert counts["encoder"] == (4 * 64 * 32 + 32) + (32 * 16 * 64 + 64) + (64 * 9 * 64 + 64)

    def noisy(n_in, n_out):
        return 2 * (n_in * n_out + n_out)

    assert counts["head"] == (noisy(dim, 256) * 2 + noisy(256, 51) + noisy(256, 18 * 51) + 51)
    assert counts["predictor"] == 512 * 512 + 512
    assert counts["action_embedding"] == 18 * dim + dim
    # The paper-size update traces (shapes only): L = max(16, 10 + 1) steps of 4x84x84.
    batch = AtariBatch(*(jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in [
        ((32, 16, 4, 84, 84), jnp.uint8), ((32, 16), jnp.int32), ((32,), jnp.float32),
        ((32,), jnp.float32), ((32,), jnp.float32), ((32,), jnp.int32), ((32,), jnp.int32)]))
    new_state, metrics = jax.eval_shape(agent.train_step, shapes, batch, jax.random.PRNGKey(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(new_state, shapes)
    chex.assert_shape(metrics["priorities"], (32,))


def test_momentum_and_target_after_one_step(setup, one_step):
    cfg, _, _, _ = setup
    assert cfg.momentum_tau == 1.0 and cfg.target_tau == 1.0 and cfg.target_update_period == 1
    state, new_state, metrics, batch = one_step
    assert int(new_state.step) == 1
    # MLR target: copy of the PRE-update online encoder + projection.
    assert_trees_close(new_state.aux_target, momentum_view(state.params), rtol=0)
    # RL target: copy of the POST-update online encoder + head, with this update's noise.
    assert_trees_close(new_state.target_params, subset(new_state.params, "encoder", "head"), rtol=0)
    np.testing.assert_array_equal(np.asarray(new_state.target_noise_key),
                                  np.asarray(new_state.noise_key))
    assert not np.array_equal(np.asarray(new_state.noise_key),
                              np.asarray(state.noise_key))
    # Every online group moved.
    for name in state.params:
        assert not np.allclose(jax.tree.leaves(state.params[name])[0],
                               jax.tree.leaves(new_state.params[name])[0]), name
    chex.assert_shape(metrics["priorities"], (cfg.batch_size,))
    assert np.all(np.asarray(metrics["priorities"]) > 0)
    for name in ("loss", "rl_loss", "mlr_loss", "grad_norm", "decoder_grad_norm", "q_mean"):
        chex.assert_shape(metrics[name], ())
        assert np.isfinite(float(metrics[name])), name
    expected = float(metrics["rl_loss"]) + cfg.mlr.weight * float(metrics["mlr_loss"])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)


def test_loss_has_no_gradient_wrt_target_and_momentum(setup, one_step):
    cfg = setup[0]
    nets = atari.build_networks(cfg, NUM_ACTIONS)
    _, state, _, batch = one_step

    def loss(target_params, aux_target):
        s = state.replace(target_params=target_params, aux_target=aux_target)
        return atari.train_step(nets, s, batch, jax.random.PRNGKey(2))[1]["loss"]

    grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(state.target_params, state.aux_target)
    for leaf in jax.tree.leaves(grads):
        np.testing.assert_array_equal(leaf, 0.0)


def test_train_step_lowers_the_loss_without_retracing(setup, one_step):
    cfg, _, _, step = setup
    _, state, _, batch = one_step
    key = jax.random.PRNGKey(3)  # fixed augmentation, mask and noise: a deterministic objective
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch, key)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses
    assert int(state.step) == 7  # the counted step was traced once for all these calls


def test_bad_batches_raise_clear_errors(setup):
    cfg, agent, state, _ = setup
    short = fake_batch(cfg)._replace(obs=fake_batch(cfg).obs[:, :2])
    with pytest.raises(ValueError, match="batch.obs"):
        agent.train_step(state, short, jax.random.PRNGKey(0))
    pstep = one_run.data_parallel(agent.train_step, num_devices=2)
    with pytest.raises(parallel.ParallelError, match=r"batch size of .*obs=3 is not divisible"):
        pstep(state, fake_batch(cfg, batch_size=3), jax.random.PRNGKey(0))


def test_two_devices_match_one_device_with_per_sample_masks(setup):
    state = setup[2]  # same shapes as this config's init
    cfg = make_config("atari", "pong", "smoke",
                      {**SMALL, "mlr.mask_per_sample": True, "target_update_period": 2,
                       "target_tau": 0.5, "momentum_tau": 0.5})
    agent = make_agent(cfg, NUM_ACTIONS)
    batch, key = fake_batch(cfg, seed=1), jax.random.PRNGKey(5)
    single_state, single = agent.train_step(state, batch, key)
    pstep = one_run.data_parallel(agent.train_step, num_devices=2)
    multi_state, multi = pstep(state, batch, key)
    for name in ("loss", "rl_loss", "mlr_loss", "grad_norm", "decoder_grad_norm", "q_mean"):
        np.testing.assert_allclose(multi[name], single[name], rtol=METRIC_RTOL, err_msg=name)
    np.testing.assert_allclose(multi["priorities"], single["priorities"], rtol=METRIC_RTOL, atol=1e-6)
    assert_trees_close(multi_state.params, single_state.params, rtol=1e-4, atol=1e-6)
    assert_trees_close(multi_state.aux_target, single_state.aux_target, rtol=1e-5)

    # Soft updates: momentum every update from the pre-update weights; target every 2nd.
    assert_trees_close(single_state.target_params, state.target_params, rtol=0)
    second_state, _ = agent.train_step(single_state, batch, jax.random.PRNGKey(6))
    def mix(a, b):
        return jax.tree.map(lambda x, y: 0.5 * x + 0.5 * y, a, b)

    assert_trees_close(second_state.aux_target,
                       mix(momentum_view(single_state.params), single_state.aux_target),
                       rtol=1e-6)
    assert_trees_close(second_state.target_params,
                       mix(subset(second_state.params, "encoder", "head"), state.target_params),
                       rtol=1e-6)


def test_act_uses_latest_noise_and_eval_act_none(setup, one_step):
    cfg, agent, _, _ = setup
    _, state, _, batch = one_step
    obs = np.concatenate([batch.obs[:, 0], batch.obs[:, 1]])
    encoder = NatureCNN(cfg.channels, cfg.kernels, cfg.strides)
    head = DuelingC51Head(NUM_ACTIONS, cfg.num_atoms, cfg.hidden_size)
    support = np.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)

    @jax.jit
    def greedy(noise_key):
        latent = encoder.apply({"params": state.params["encoder"]}, obs / 255.0)
        log_probs = head.apply({"params": state.params["head"]}, latent, noise_key)
        return jnp.argmax(jnp.exp(log_probs) @ support, -1)

    key = jax.random.PRNGKey(9)
    actions = agent.act(state, obs, key, 0.0)
    assert actions.dtype == jnp.int32 and actions.shape == (obs.shape[0],)
    np.testing.assert_array_equal(actions, greedy(state.noise_key))
    np.testing.assert_array_equal(agent.eval_act(state, obs, key), greedy(None))
    random = np.concatenate([agent.act(state, obs, k, 1.0) for k in jax.random.split(key, 20)])
    assert set(random.tolist()) == set(range(NUM_ACTIONS))


def test_spr_state_update_and_two_devices():
    """SPR through the objective seam: its modules, its momentum target (copy of the PRE-update
    encoder + projection), its own clip group and weight, every group trained; and the update
    (BatchNorm statistics included) does not depend on the number of devices."""
    cfg = make_config("atari", "pong", "smoke", {**SMALL, "aux": "spr", "spr.jumps": 3})
    agent = make_agent(cfg, NUM_ACTIONS)
    state = agent.init(jax.random.PRNGKey(0))
    assert set(state.params) == {"encoder", "head", "dynamics", "predictor"}
    assert_trees_close(state.aux_target, momentum_view(state.params), rtol=0)
    batch, key = fake_batch(cfg), jax.random.PRNGKey(1)
    assert batch.obs.shape[1] == max(cfg.spr.jumps + 1, cfg.n_step + 1)
    new_state, metrics = agent.train_step(state, batch, key)
    assert_trees_close(new_state.aux_target, momentum_view(state.params), rtol=0)
    for name in state.params:
        assert not np.allclose(jax.tree.leaves(state.params[name])[0],
                               jax.tree.leaves(new_state.params[name])[0]), name
    assert {"spr_loss", "dynamics_grad_norm"} <= set(metrics) and "mlr_loss" not in metrics
    expected = float(metrics["rl_loss"]) + cfg.spr.weight * float(metrics["spr_loss"])
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-6)
    assert float(metrics["spr_loss"]) > 0.1

    pstep = one_run.data_parallel(agent.train_step, num_devices=2)
    multi_state, multi = pstep(state, batch, key)
    for name in ("loss", "rl_loss", "spr_loss", "grad_norm", "dynamics_grad_norm"):
        np.testing.assert_allclose(multi[name], metrics[name], rtol=METRIC_RTOL, err_msg=name)
    assert_trees_close(multi_state.params, new_state.params,
                       rtol=1e-4, atol=1e-6)


def test_update_stages_called_alone():
    """Each stage of the update is a function of the networks tuple: the RL target, SPR's
    inputs and the target refresh, checked without a gradient step."""
    cfg = make_config("atari", "pong", "smoke", {**SMALL, "aux": "spr", "target_update_period": 2})
    nets = atari.build_networks(cfg, NUM_ACTIONS)
    state = jax.jit(functools.partial(atari.init, nets))(jax.random.PRNGKey(0))
    batch = jax.tree.map(jnp.asarray, fake_batch(cfg))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)

    # a terminal s_t (sample 0, discount 0): the target is the return projected on the support
    _, target = jax.jit(functools.partial(atari.rl_inputs, nets), static_argnums=4)(
        state, batch, keys, keys[0], None)
    z = np.linspace(cfg.v_min, cfg.v_max, cfg.num_atoms)
    ret = float(np.clip(batch.returns[0], cfg.v_min, cfg.v_max))
    expected = np.clip(1 - np.abs(ret - z) / (z[1] - z[0]), 0, 1)
    # float32 (|ret - z| / delta up to 50, rounded at ~6e-8 relative) against float64
    np.testing.assert_allclose(np.asarray(target[0]), expected, atol=1e-5)

    # SPR's inputs: the same-trajectory mask from first_done (0 for sample 0, 2 for sample 1)
    (actions, nonterminal), targets = jax.jit(nets.objective.prepare, static_argnums=3)(
        state, batch, keys, None)
    jumps = cfg.spr.jumps
    chex.assert_shape(targets, (cfg.batch_size, jumps, 2 * cfg.hidden_size))
    np.testing.assert_array_equal(actions, batch.actions[:, :jumps])
    np.testing.assert_array_equal(nonterminal[0], np.zeros(jumps))
    np.testing.assert_array_equal(nonterminal[1], [1.0] + [0.0] * (jumps - 1))
    np.testing.assert_array_equal(nonterminal[2:], np.ones((cfg.batch_size - 2, jumps)))

    # refresh: the objective's target from the PRE-update weights every update, the RL target
    # from the post-update weights every second update
    refresh = jax.jit(functools.partial(atari.refresh_targets, nets))
    first = jax.tree.map(lambda x: x + 1.0, state.params)
    one = refresh(state, first, keys[1])
    assert int(one.step) == 1
    assert_trees_close(one.aux_target, momentum_view(state.params), rtol=0)
    assert_trees_close(one.target_params, state.target_params, rtol=0)
    second = jax.tree.map(lambda x: x + 1.0, first)
    two = refresh(one, second, keys[2])
    assert_trees_close(two.aux_target, momentum_view(first), rtol=0)
    assert_trees_close(two.target_params, subset(second, "encoder", "head"), rtol=0)
    np.testing.assert_array_equal(np.asarray(two.target_noise_key), np.asarray(keys[2]))


def test_two_seeds_on_one_device_update_each_seed_as_alone(setup):
    """Two seeds (their own initial states, batches and keys) updated by one vmapped step
    (:class:`mlr_jax.parallel.Layout`) on one device, where every convolution becomes a
    grouped one: each seed's metrics and parameters after 3 updates equal its own updates
    alone, within float32 rounding (Adam's eps 1.5e-4 keeps chained steps there). One seed
    per device: ``tests/test_seed_groups.py``."""
    cfg, agent, _, _ = setup
    layout = parallel.layout(2, num_devices=1)
    assert layout.seed_shards == 1
    keys = np.stack([one_run.raw_key(jax.random.PRNGKey(s)) for s in (1, 2)])
    axes = seed_axes(jax.eval_shape(agent.init, jax.random.PRNGKey(0)))
    group = layout.stacked(agent.init, keys, axes)
    step = layout.train_step(agent.train_step, axes, donate_state=False)
    alone = [agent.init(jax.random.PRNGKey(s)) for s in (1, 2)]
    for i in range(3):
        batches = [fake_batch(cfg, seed=10 * s + i) for s in (1, 2)]
        step_keys = np.stack([one_run.raw_key(jax.random.PRNGKey(100 * s + i)) for s in (1, 2)])
        group, metrics = step(group, jax.tree.map(lambda *xs: np.stack(xs), *batches), step_keys)
        for s in range(2):
            alone[s], expected = agent.train_step(alone[s], batches[s], jax.random.PRNGKey(100 * (s + 1) + i))
            for name in ("loss", "rl_loss", "mlr_loss", "grad_norm", "decoder_grad_norm"):
                np.testing.assert_allclose(metrics[name][s], expected[name], rtol=METRIC_RTOL,
                                           err_msg=f"seed {s} update {i} {name}")
    for s, member in enumerate(layout.unstack(group, axes)):
        assert_trees_close(member.params, alone[s].params, rtol=1e-4, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(alone[0].params)[0], jax.tree.leaves(alone[1].params)[0])
