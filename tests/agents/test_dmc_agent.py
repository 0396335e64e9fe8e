"""The DMC agent: init, update order and gating, schedules, data parallelism, acting.

Smoke config with a small rendered image (30 -> 24 crop) to keep compilation short; every
code path is the paper configuration's.
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import parallel
from mlr_jax.agents.common import seed_axes
import one_run
from mlr_jax.agents import dmc, dmc_aux
from mlr_jax.config import make_config
from mlr_jax.replay.dmc import SACBatch, SeqBatch
from tolerances import METRIC_RTOL, assert_adam_step_close

ACTION_DIM = 2
SMALL = {"image_size": 30, "crop_size": 24}


def _config(**overrides):
    return make_config("dmc", "cartpole_swingup", "smoke", {**SMALL, **overrides})


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, bm, k = cfg.batch_size, cfg.aux_batch_size, cfg.mlr.seq_len
    shape = (3 * cfg.frame_stack, cfg.image_size, cfg.image_size)
    sac = SACBatch(obs=rng.integers(0, 256, (b, *shape), dtype=np.uint8),
                   action=rng.uniform(-1, 1, (b, ACTION_DIM)).astype(np.float32),
                   reward=rng.normal(size=b).astype(np.float32),
                   discount=(rng.uniform(size=b) > 0.2).astype(np.float32),
                   next_obs=rng.integers(0, 256, (b, *shape), dtype=np.uint8))
    seq = SeqBatch(obs=rng.integers(0, 256, (bm, k, *shape), dtype=np.uint8),
                   action=rng.uniform(-1, 1, (bm, k, ACTION_DIM)).astype(np.float32))
    return dmc.DMCBatch(sac, seq)


@pytest.fixture(scope="module")
def cfg():
    return _config()


@pytest.fixture(scope="module")
def nets(cfg):
    return dmc.build_networks(cfg, ACTION_DIM)


@pytest.fixture(scope="module")
def state(nets):
    return dmc.init(nets, jax.random.key(0))


@pytest.fixture(scope="module")
def jit_step(nets):
    """One compiled 1-device train step; any retrace fails the tests that use it."""
    def step(state, batch, key):
        return dmc.train_step(nets, state, batch, key)

    return jax.jit(chex.assert_max_traces(step, n=1))


@pytest.fixture(scope="module")
def trajectory(state, jit_step, cfg):
    """States after updates 0..3 (even updates run the actor and the soft updates)."""
    states, metrics = [state], []
    for i in range(4):
        new, m = jit_step(states[-1], _batch(cfg, i), jax.random.key(100 + i))
        states.append(new)
        metrics.append(jax.device_get(m))
    return states, metrics


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _mix(target, online, tau):
    """Numpy reference of a soft update."""
    return jax.tree.map(lambda t, o: (1 - tau) * np.asarray(t) + tau * np.asarray(o), target, online)


def _changed(a, b):
    return all(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_init_copies_and_reinitialisation(state, cfg):
    critic, target, momentum = state.critic, state.critic_target, state.aux_target
    assert _same(target["q1"], critic["q1"]) and _same(target["q2"], critic["q2"])
    for copy in (target["encoder"]["convs"], momentum["encoder"]["convs"]):
        assert _same(copy, critic["encoder"]["convs"])
    # the MLR re-init redraws the critic's and the momentum encoder's Linear independently,
    # after the target was copied (which keeps the orthogonal Linear)
    fc = [t["head"]["fc"]["kernel"] for t in (critic["encoder"], target["encoder"], momentum["encoder"])]
    assert not np.allclose(fc[0], fc[1]) and not np.allclose(fc[0], fc[2]) and not np.allclose(fc[1], fc[2])
    assert float(jnp.abs(fc[0]).max()) <= 0.02 + 1e-7 and float(jnp.abs(fc[1]).max()) > 0.02
    # the momentum projection has its own random init
    assert not np.allclose(momentum["projection"]["fc0"]["kernel"], state.aux["projection"]["fc0"]["kernel"])
    assert float(state.log_alpha) == pytest.approx(np.log(cfg.init_temperature))
    assert int(state.step) == 0


def test_init_without_reinit_copies_the_encoder_exactly():
    nets = dmc.build_networks(_config(reinit_encoder_linear=False), ACTION_DIM)
    state = dmc.init(nets, jax.random.key(0))
    chex.assert_trees_all_equal(state.aux_target["encoder"], state.critic["encoder"])
    chex.assert_trees_all_equal(state.critic_target, state.critic)


def test_baseline_has_no_mlr_parameters():
    agent = dmc.make_agent(_config(aux="none"), ACTION_DIM)
    state = jax.eval_shape(agent.init, jax.random.key(0))
    assert state.aux == {} and state.aux_target == {}
    counts = agent.param_counts(state)
    assert counts["decoder"] == 0 and counts["mlr_heads"] == 0 and counts["momentum"] == 0


def test_param_counts(state, cfg):
    counts = dmc.param_counts(state)
    f, c = cfg.num_filters, 3 * cfg.frame_stack
    side = (cfg.crop_size - 3) // 2 + 1 - 2 * (cfg.num_conv_layers - 1)
    convs = (9 * c * f + f) + (cfg.num_conv_layers - 1) * (9 * f * f + f)
    head = f * side * side * cfg.feature_dim + cfg.feature_dim + 2 * cfg.feature_dim
    assert counts["encoder"] == convs + head
    h, z, a = cfg.hidden_dim, cfg.feature_dim, ACTION_DIM
    assert counts["critic_q"] == 2 * ((z + a) * h + h + h * h + h + h + 1)
    assert counts["actor"] == (f * side * side * z + z + 2 * z) + (z * h + h + h * h + h + h * 2 * a + 2 * a)
    assert counts["mlr_heads"] == (a * z + z) + 2 * (z * 100 + 100 + 100 * z + z)
    assert counts["momentum"] == counts["encoder"] + (z * 100 + 100 + 100 * z + z)


def test_warmup_schedule_values():
    schedule = dmc.inverse_sqrt_warmup(0.5e-3, 6000)
    for count, factor in [(0, 5e-4), (3000, 5e-4 + (1 - 5e-4) / 2), (6000, 1.0), (24000, 0.5)]:
        assert float(schedule(count)) == pytest.approx(0.5e-3 * factor, rel=1e-5)
    with pytest.raises(ValueError, match="aux_warmup_steps"):
        dmc.inverse_sqrt_warmup(1e-3, 0)


def test_sub_updates_touch_only_their_parameters(nets, state, cfg):
    batch = _batch(cfg)
    obs = jnp.asarray(batch.sac.obs[:, :, 3:27, 3:27])
    noise = jax.random.normal(jax.random.key(1), (cfg.batch_size, ACTION_DIM))
    online, target = dmc_aux.mlr_views(nets, jax.random.key(2), jnp.asarray(batch.seq.obs))

    @jax.jit
    def run(s):
        after_critic, _ = dmc.update_critic(nets, s, obs, batch.sac.action, batch.sac.reward,
                                            batch.sac.discount, obs, noise)
        after_mlr, mlr_metrics = dmc_aux.update_mlr(nets, s, online, target, batch.seq.action)
        after_actor, _ = dmc.update_actor_and_alpha(nets, s, obs, noise)
        return after_critic, after_mlr, mlr_metrics, after_actor

    after_critic, after_mlr, mlr_metrics, after_actor = run(state)
    convs = lambda s: s.critic["encoder"]["convs"]
    # critic: all critic parameters move, nothing else
    assert _changed(after_critic.critic, state.critic)
    assert _same(after_critic.actor, state.actor) and _same(after_critic.aux, state.aux)
    # MLR: the encoder (convs included) and the MLR modules move, not the Q heads
    assert _changed(convs(after_mlr), convs(state))
    assert _changed(after_mlr.aux, state.aux)
    assert _same(after_mlr.critic["q1"], state.critic["q1"]) and _same(after_mlr.actor, state.actor)
    assert _same(after_mlr.aux_target, state.aux_target)
    # first Adam step moves each parameter by at most lr(0) = 0.5 * 1e-3 * 5e-4
    lr0 = cfg.aux_lr * cfg.aux_lr_scale * 5e-4
    step = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), after_mlr.aux["decoder"], state.aux["decoder"])
    assert max(float(x) for x in jax.tree.leaves(step)) == pytest.approx(lr0, rel=1e-2)
    assert float(mlr_metrics["mlr_lr"]) == pytest.approx(lr0)
    assert 0.0 < float(mlr_metrics["mlr_loss"]) <= 4.0
    # actor + temperature: the convs (and the whole critic) stay as they are
    assert _same(after_actor.critic, state.critic)
    assert _changed(after_actor.actor, state.actor)
    assert float(after_actor.log_alpha) != float(state.log_alpha)


def test_actor_and_soft_updates_only_on_even_updates(trajectory, cfg):
    states, metrics = trajectory
    for i in range(4):
        before, after = states[i], states[i + 1]
        assert int(after.step) == i + 1
        assert _changed(after.critic, before.critic) and _changed(after.aux, before.aux)
        even = i % cfg.actor_update_freq == 0
        assert _changed(after.actor, before.actor) == even
        assert (float(after.log_alpha) != float(before.log_alpha)) == even
        assert np.isfinite(metrics[i]["actor_loss"]) == even
        assert np.isfinite(metrics[i]["critic_loss"]) and np.isfinite(metrics[i]["mlr_loss"])
        if i % cfg.target_update_freq:
            assert _same(after.critic_target, before.critic_target)
            assert _same(after.aux_target, before.aux_target)
            continue
        # soft updates from the online weights AFTER this update's optimiser steps
        for name, tau in (("q1", cfg.critic_tau), ("q2", cfg.critic_tau), ("encoder", cfg.encoder_tau)):
            chex.assert_trees_all_close(after.critic_target[name],
                                        _mix(before.critic_target[name], after.critic[name], tau),
                                        rtol=1e-5, atol=1e-7)
        online = {"encoder": after.critic["encoder"], "projection": after.aux["projection"]}
        chex.assert_trees_all_close(after.aux_target, _mix(before.aux_target, online, cfg.momentum_tau),
                                    rtol=1e-5, atol=1e-7)


def test_two_devices_match_one_device(nets, state, cfg, trajectory):
    """Same global batch and key: the data-parallel update equals the single-device one. Each
    update starts from the same state (the single-device trajectory's): Adam with eps 1e-8
    turns a rounding-level gradient difference into an lr-sized parameter difference, and
    the next update's gradients would then differ by far more than rounding, by an amount no
    bound derived from float32 could cover. Losses and gradient norms agree to float32
    rounding; states within what one Adam step makes of it (``tests/tolerances.py``)."""
    assert jax.local_device_count() >= 2, "tests/conftest.py should provide 2 CPU devices"
    states, single_metrics = trajectory
    step = one_run.data_parallel(functools.partial(dmc.train_step, nets), num_devices=2)
    lr = max(cfg.critic_lr, cfg.actor_lr, cfg.alpha_lr, cfg.aux_lr)
    for i in range(2):  # an update with and one without the actor step
        multi, metrics = step(states[i], _batch(cfg, i), jax.random.key(100 + i))
        for name, value in single_metrics[i].items():
            np.testing.assert_allclose(metrics[name], value, rtol=METRIC_RTOL, atol=1e-7, err_msg=name)
        paths = jax.tree_util.tree_flatten_with_path(multi)[0]
        for (path, got), want in zip(paths, jax.tree.leaves(jax.device_get(states[i + 1]))):
            assert_adam_step_close(got, want, lr, jax.tree_util.keystr(path))
    assert np.isnan(metrics["actor_loss"])


def test_act_and_eval_act(nets, state, cfg):
    obs = _batch(cfg).sac.obs[:3]
    act = jax.jit(functools.partial(dmc.act, nets))
    a1, a2 = act(state, obs, jax.random.key(0)), act(state, obs, jax.random.key(1))
    chex.assert_shape([a1, a2], (3, ACTION_DIM))
    assert np.all(np.abs(a1) < 1.0) and not np.allclose(a1, a2)
    greedy = dmc.eval_act(nets, state, obs, None)
    top = (cfg.image_size - cfg.crop_size) // 2
    cropped = obs[:, :, top:top + cfg.crop_size, top:top + cfg.crop_size]
    np.testing.assert_allclose(dmc.eval_act(nets, state, cropped, None), greedy, rtol=1e-6)
    h = dmc._conv_features(nets, state.critic, cropped)
    mean, _ = nets.actor.apply({"params": state.actor}, h)
    np.testing.assert_allclose(greedy, np.tanh(mean), rtol=1e-6)


def test_batch_shape_errors_name_the_field(nets, state, cfg):
    batch = _batch(cfg)
    bad_seq = batch.seq._replace(obs=batch.seq.obs[:, :2])
    with pytest.raises(ValueError, match="seq.obs"):
        dmc.train_step(nets, state, batch._replace(seq=bad_seq), jax.random.key(0))
    with pytest.raises(ValueError, match="sac.action"):
        dmc.train_step(nets, state, batch._replace(sac=batch.sac._replace(action=batch.sac.action[:, :1])),
                       jax.random.key(0))
    with pytest.raises(ValueError, match="action_dim"):
        dmc.make_agent(cfg, 0)


@pytest.mark.parametrize("rule,last", [("exclusive", 0), ("inclusive", 1)])
def test_sac_crops_draw_the_codes_offsets(rule, last):
    """The SAC batch's crops: offsets 0..H-size-1 by default (the code's numpy randint)."""
    cfg = _config(sac_crop_rule=rule)
    rows, cols = np.meshgrid(np.arange(cfg.image_size), np.arange(cfg.image_size), indexing="ij")
    obs = np.zeros((400, 3 * cfg.frame_stack, cfg.image_size, cfg.image_size), np.uint8)
    obs[:, 0], obs[:, 1] = rows, cols  # every pixel names its own position
    crops = np.asarray(dmc._random_crops(jax.random.key(0), jnp.asarray(obs), cfg, None))
    chex.assert_shape(crops, (400, obs.shape[1], cfg.crop_size, cfg.crop_size))
    offsets = set(range(cfg.image_size - cfg.crop_size + last))
    assert set(crops[:, 0, 0, 0].tolist()) == offsets and set(crops[:, 1, 0, 0].tolist()) == offsets


@pytest.mark.parametrize("num_devices", [1, 2], ids=["2-seeds-on-1-device", "1-seed-per-device"])
def test_seeds_in_one_step_share_the_actor_gating(nets, state, cfg, jit_step, num_devices):
    """Two seeds updated by one vmapped step (:class:`mlr_jax.parallel.Layout`), both on one
    device (every convolution a grouped one; the group's state made by ``Layout.stacked``, as
    the loop makes it) or one per device, share the update counter, so the actor's ``lax.cond``
    stays a branch: the step's program keeps the agent's conds (a per-seed counter would turn
    them into selects that run the actor every update), each seed's actor changes on even
    updates only, and each seed's update is its own."""
    layout = parallel.layout(2, num_devices)
    assert layout.seed_shards == num_devices
    axes = seed_axes(state)
    step = layout.train_step(functools.partial(dmc.train_step, nets), axes, donate_state=False)
    init = jax.jit(functools.partial(dmc.init, nets))
    stacked = layout.stacked(lambda key: init(jax.random.wrap_key_data(key)),
                             np.stack([jax.random.key_data(jax.random.key(s)) for s in (0, 1)]), axes)
    seeds = layout.unstack(stacked, axes)

    def inputs(i):
        keys = np.stack([one_run.raw_key(jax.random.key(100 + 10 * s + i)) for s in range(2)])
        batches = jax.tree.map(lambda *xs: np.stack(xs), _batch(cfg, i), _batch(cfg, 10 + i))
        return batches, keys

    def conds(jaxpr):
        return str(jaxpr).count("cond[")

    single = jax.make_jaxpr(functools.partial(dmc.train_step, nets))(state, _batch(cfg), jax.random.key(0))
    grouped = jax.make_jaxpr(step.jitted)(stacked, *step.put(*inputs(0)))
    assert conds(grouped) == conds(single) >= 2  # the actor's and the soft updates' branches

    alone = seeds[1]
    for i in range(3):
        new, metrics = step(stacked, *inputs(i))
        before, after = layout.unstack(stacked, axes), layout.unstack(new, axes)
        for s in range(2):
            assert _same(before[s].actor, after[s].actor) == (i % 2 == 1), (i, s)
        alone, expected = jit_step(alone, _batch(cfg, 10 + i), jax.random.key(110 + i))
        for name, value in jax.device_get(expected).items():
            np.testing.assert_allclose(metrics[name][1], value, rtol=METRIC_RTOL, atol=1e-7,
                                       err_msg=name)
        stacked = new
    assert int(np.asarray(stacked.step)) == 3
