"""The PyTorch port used by the benchmark: equivalence with the JAX agents, updates, runner.

Atari: the JAX ``train_step`` draws its augmentation and mask inside, so both sides get them
switched off through the config (``shift_pad=0``, ``intensity_scale=0``, mask ratio 0 with the
``mask_floor`` rule, which keeps the un-scaled 0-255 masked branch); the head noise is reproduced
in torch from the state's keys. DMC: the agent's public ``update_*`` functions take pre-augmented
inputs and explicit policy noise, so both sides get the SAME random crops, mask and intensity.
Losses, gradient norms and the parameters after the step must agree.
"""

from __future__ import annotations

import json

import chex
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mlr_jax import host  # noqa: E402
from mlr_jax.bench import parity, runner, torch_atari, torch_dmc  # noqa: E402  (after importorskip)
from mlr_jax.config import make_config  # noqa: E402
from mlr_jax import device_frames  # noqa: E402
from tolerances import assert_adam_step_close

RTOL = parity.PARITY_RTOL
NUM_ACTIONS, ACTION_DIM = parity.NUM_ACTIONS, parity.ACTION_DIM
AUX_CLIP_GROUP = parity.AUX_CLIP_GROUP


@pytest.fixture(scope="module", params=["mlr", "spr"])
def atari_jax_step(request):
    """One JAX train_step per objective (compiled once for the module), augmentation and mask
    off, a small clip norm so both clip groups are active."""
    cfg = parity.atari_config("smoke", [f"aux={request.param}"])
    return (cfg, *parity.atari_jax_step(cfg))


def test_atari_losses_match_jax_agent(atari_jax_step):
    cfg, batch, state, new_state, metrics = atari_jax_step
    update, fixed = parity.atari_torch_twin(cfg, state, new_state)
    with torch.no_grad():
        terms = update.loss_terms(update.prepare(batch, **fixed))
    aux = f"{cfg.aux}_loss"
    assert float(terms[aux]) > 0.1  # the objective really ran
    np.testing.assert_allclose(float(terms["rl_loss"]), float(metrics["rl_loss"]), rtol=RTOL)
    np.testing.assert_allclose(float(terms[aux]), float(metrics[aux]), rtol=RTOL)
    if cfg.aux == "spr":  # a done at s_t masks the whole rollout
        per_sample = terms["spr_per_sample"].numpy()
        assert per_sample[0] == 0.0 and per_sample[3] == 0.0 and per_sample[2] > 0.1
    np.testing.assert_allclose(terms["priorities"].numpy(), np.asarray(metrics["priorities"]),
                               rtol=1e-3, atol=1e-5)


def test_atari_one_step_matches_jax_agent(atari_jax_step):
    """Gradients, both clip groups, the head's grad scale, Adam and the target copies agree."""
    cfg, batch, state, new_state, metrics = atari_jax_step
    update, fixed = parity.atari_torch_twin(cfg, state, new_state)
    out = update.update(batch, resample_noise=False, **fixed)
    group = AUX_CLIP_GROUP[cfg.aux]
    assert min(float(metrics["grad_norm"]), float(metrics[group])) > cfg.clip_norm
    for mine, theirs in (("total", "loss"), ("grad_norm", "grad_norm"), (group, group)):
        np.testing.assert_allclose(float(out[mine]), float(metrics[theirs]), rtol=RTOL, err_msg=theirs)
    expected = torch_atari.make_update(cfg, NUM_ACTIONS)
    expected.load_jax_state(new_state)
    used_by_momentum = ("conv.", "value_hidden.", "adv_hidden.")  # encoder + projection
    # not in the JAX state: noise buffers, the position table, BatchNorm's running statistics
    # (never read: the transition model only runs in updates) and SPR's unused action embedding
    skipped = ("eps", "position", "running_", "num_batches_tracked") + (
        ("action_embedding",) if cfg.aux == "spr" else ())
    for module in ("model", "target", "momentum"):
        want = getattr(expected, module).state_dict()
        for k, v in getattr(update, module).state_dict().items():
            if any(s in k for s in skipped) or (module == "momentum" and not k.startswith(used_by_momentum)):
                continue
            # one Adam step (eps 1.5e-4) moves a weight by at most about lr
            np.testing.assert_allclose(v.numpy(), want[k].numpy(), atol=1e-2 * cfg.lr,
                                       err_msg=f"{module}.{k}")


def test_atari_update_trains_every_parameter_and_refreshes_targets():
    cfg = make_config("atari", "pong", "smoke")
    torch.manual_seed(0)
    update = torch_atari.make_update(cfg, NUM_ACTIONS)
    before = {k: v.clone() for k, v in update.model.state_dict().items()}
    out = update.update(parity.atari_batch(cfg, seed=0))
    assert np.isfinite(float(out["total"])) and float(out["mlr_loss"]) > 0
    changed = {k for k, v in update.model.state_dict().items() if not torch.equal(v, before[k])}
    assert {k for k, _ in update.model.named_parameters()} <= changed
    # RL target = online after the step (noise buffers included); momentum = online BEFORE it.
    target = update.target.state_dict()
    for k, v in update.model.state_dict().items():
        assert torch.equal(target[k], v), k
    for k, v in update.momentum.state_dict().items():
        if "eps" not in k:  # the noise buffers were redrawn at the start of the update
            assert torch.equal(v, before[f"net.{k}"]), k


def test_cube_mask_counts_and_blocks():
    mask = torch_atari.cube_mask(8, 84, 12, 4, num_masked=25, device="cpu")
    cells = mask[:, ::12, ::12]  # one pixel per cell
    assert mask.shape == (8, 84, 84)
    assert torch.all((1 - cells).sum((1, 2)) == 25)
    assert torch.equal(mask[0], mask[3]) and torch.equal(mask[4], mask[7])
    assert torch.equal(mask, cells.repeat_interleave(12, 1).repeat_interleave(12, 2))


def test_crop_at_is_a_replicate_padded_window():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    tops, lefts = [0, 4], [2, 1]
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    out = torch_atari.crop_at(padded, torch.tensor(tops), torch.tensor(lefts), 6)
    expected = np.stack([np.pad(x[i].numpy(), ((0, 0), (2, 2), (2, 2)), mode="edge")[:, t:t + 6, l:l + 6]
                         for i, (t, l) in enumerate(zip(tops, lefts))])
    np.testing.assert_array_equal(out.numpy(), expected)


# ------------------------------------------------------------------ DMC


def test_dmc_update_matches_jax_agent_functions():
    """Critic, MLR, actor/alpha steps and the EMAs on the same randomly cropped, masked and
    intensity-scaled inputs and the same policy noise."""
    cfg = parity.dmc_config("smoke")
    inp, update, out, state, metrics = parity.dmc_one_update(cfg)
    assert 0.3 < float((inp.masked_seq == 0).float().mean()) < 0.7  # half of the cells hidden
    for name, value in metrics.items():
        np.testing.assert_allclose(out[name], float(value), rtol=RTOL, err_msg=name)

    expected = torch_dmc.make_update(cfg, ACTION_DIM)
    expected.load_jax_state(state)
    for module in ("actor", "critic", "critic_target", "mlr"):
        want = getattr(expected, module).state_dict()
        for k, v in getattr(update, module).state_dict().items():
            assert_adam_step_close(v.numpy(), want[k].numpy(), max(cfg.critic_lr, cfg.actor_lr),
                                    f"{module}.{k}")
    np.testing.assert_allclose(update.log_alpha.item(), expected.log_alpha.item(), atol=1e-7)


def test_dmc_update_trains_and_gates_actor_every_other_step():
    cfg = make_config("dmc", "cartpole_swingup", "smoke")
    torch.manual_seed(0)
    update = torch_dmc.make_update(cfg, ACTION_DIM)
    batch = parity.dmc_batch(cfg, seed=1)
    actor_before = [p.clone() for p in update.actor.trunk.parameters()]
    target_before = [p.clone() for p in update.critic_target.parameters()]
    first = update.update(batch)
    assert {"critic_loss", "mlr_loss", "actor_loss", "alpha_loss"} <= set(first)
    assert all(not torch.equal(a, b) for a, b in zip(actor_before, update.actor.trunk.parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(target_before, update.critic_target.parameters()))
    actor_after = [p.clone() for p in update.actor.trunk.parameters()]
    second = update.update(batch)
    assert "actor_loss" not in second and np.isfinite(float(second["mlr_loss"]))
    assert all(torch.equal(a, b) for a, b in zip(actor_after, update.actor.trunk.parameters()))
    assert update.actor.encoder.convs[0].weight is update.critic.encoder.convs[0].weight


# ------------------------------------------------------------------ runner


def test_runner_writes_a_complete_record(tmp_path):
    record = runner.run_benchmark("dmc", "cpu", "smoke", repeats=2, warmup=1, outdir=tmp_path,
                                  env_steps=0, torch_threads=1,
                                  frameworks=("jax", "torch", "torch-glibc"))
    files = list(tmp_path.glob("dmc_smoke_cpu_*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text()) == json.loads(json.dumps(record))
    assert {"config", "versions", "date", "device", "summary", "jax_speedup",
            "flops_ratio_xla_over_torch"} <= set(record)
    assert record["versions"]["torch"] == torch.__version__
    assert record["config"]["batch_size"] == 8 and record["updates_per_unit"] == 2
    # "torch" shares this process's allocator settings, "torch-glibc" ran with glibc's defaults
    assert record["host"]["malloc"] == "tuned" and record["torch-glibc"]["malloc"] == "default"
    assert record["host"]["cpu_model"] == host.cpu_model() != ""
    # the derived figures are what their names say (no timing is asserted: timings belong to
    # the JSON records, and any machine may be fast or slow)
    assert record["jax_speedup_vs_torch_glibc"] == pytest.approx(
        record["torch-glibc"]["median_ms"] / record["jax"]["median_ms"])
    assert record["jax_speedup"] == pytest.approx(record["torch"]["median_ms"] / record["jax"]["median_ms"])
    assert "torch-glibc" in record["summary"]
    for fw in ("jax", "torch", "torch-glibc"):
        r = record[fw]
        assert r["repeats"] == 2 and r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["flops_per_update"] > 1e6 and np.isfinite(r["act_ms"])
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_update"] / r["median_ms"] / 1e9)
    # XLA counts elementwise work too; both must see the same convs and matmuls
    assert 0.8 < record["flops_ratio_xla_over_torch"] < 1.5
    assert "ms/update" in record["summary"] and "\n" not in record["summary"]
    # batch preparation, both replay modes: the device mode sends indices, not pixels
    assert record["jax"]["replay_frames"] == "host"  # the CPU default
    batches = record["batches"]
    assert batches["host"]["bytes_to_device"] > 100 * batches["device"]["bytes_to_device"]
    assert np.isfinite(batches["device"]["write_ms"]) and batches["device"]["table_bytes"] > 0
    assert batches["device_speedup"] == pytest.approx(batches["host"]["median_ms"] / batches["device"]["median_ms"])
    assert "batch on device" in record["summary"]


def test_as_frame_rows_gathers_back_the_batch():
    cfg = make_config("dmc", "cartpole_swingup", "smoke")
    batch = runner.random_batch(cfg, ACTION_DIM, seed=3)
    table, rows_batch = runner.as_frame_rows(batch, (3, cfg.image_size, cfg.image_size))
    chex.assert_shape(rows_batch.sac.obs.rows, (cfg.batch_size, cfg.frame_stack))
    chex.assert_shape(rows_batch.seq.obs.rows, (cfg.aux_batch_size, cfg.mlr.seq_len, cfg.frame_stack))
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, device_frames.gather_batch(table, rows_batch)),
                                batch)


def test_runner_rejects_bad_arguments(tmp_path):
    with pytest.raises(runner.BenchmarkError, match="device"):
        runner.run_benchmark("atari", "tpu", "smoke", outdir=tmp_path)
    with pytest.raises(runner.BenchmarkError, match="frameworks"):
        runner.run_benchmark("atari", "cpu", "smoke", frameworks=("tensorflow",), outdir=tmp_path)
    jax_platform = "cpu" if jax.default_backend() == "cpu" else "gpu"
    other = {"cpu": "gpu", "gpu": "cpu"}[jax_platform]
    with pytest.raises(runner.BenchmarkError, match="JAX runs on"):
        runner.run_benchmark("atari", other, "smoke", frameworks=("jax",), outdir=tmp_path)
