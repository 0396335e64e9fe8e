"""mlr_jax.plan: a seed group's memory per device and per host from the compiled program, the
largest group that fits, and ``mlr-jax sweep ... --dry-run``."""
import json
import pathlib

import jax
import pytest

from mlr_jax import cli, plan
from mlr_jax.agents import atari
from mlr_jax.config import ConfigError, make_config


def test_sizes_parse_with_units_and_refuse_nonsense():
    assert plan.parse_bytes("80GiB") == 80 * 2 ** 30 and plan.parse_bytes("16 GB") == 16 * 10 ** 9
    assert plan.parse_bytes("1024") == 1024 and plan.parse_bytes("1.5KiB") == 1536
    for bad in ("lots", "-1GiB", "0", "nanGB"):
        with pytest.raises(ConfigError, match="--device-memory"):
            plan.parse_bytes(bad)


@pytest.fixture(scope="module")
def figures():
    return plan.seed_figures(make_config("atari", "pong", "smoke", ["aux=none"]))


def test_seed_figures_are_what_a_seed_allocates(figures):
    cfg = make_config("atari", "pong", "smoke", ["aux=none"])
    state = atari.make_agent(cfg, plan.PLAN_ACTIONS["atari"]).init(jax.random.PRNGKey(0))
    assert figures["state"] == sum(x.nbytes for x in jax.tree.leaves(state))
    assert figures["device_frames"] == (cfg.replay_capacity + 1) * 84 * 84  # FrameTables' rows
    assert figures["replay"] == min(cfg.replay_capacity, cfg.steps) * 84 * 84
    assert figures["update"] > figures["act"] > 0  # XLA's compiled temporaries


def per_seed_on_device(figures, split):
    """A seed's bytes on a device whose batch is split over ``split`` devices."""
    return (figures["state"] + figures["update"] + figures["act"] + figures["device_frames"]
            + figures["batch"] // split)


def test_a_device_holds_its_share_of_the_seeds(figures):
    four_on_two = plan.plan_group(figures, 4, devices=2)  # 2 seeds a device, batches whole
    assert four_on_two.device_total == 2 * per_seed_on_device(figures, 1)
    assert four_on_two.per_host["replay"] == 4 * figures["replay"]
    three_on_two = plan.plan_group(figures, 3, devices=2)  # gcd 1: every device holds all 3
    assert three_on_two.device_total == 3 * per_seed_on_device(figures, 2)  # half of each batch
    two_hosts = plan.plan_group(figures, 4, devices=2, hosts=2)  # several hosts: every seed everywhere
    assert two_hosts.device_total == 4 * per_seed_on_device(figures, 4)
    on_host = plan.plan_group(figures, 2, devices=1, frames_on_device=False)
    assert on_host.per_device["device_frames"] == 0 and on_host.per_host["batch"] == 2 * figures["batch"]
    cpu = plan.plan_group(figures, 2, devices=2, frames_on_device=False, devices_in_host=True)
    assert cpu.per_host["devices"] == 2 * cpu.device_total  # the CPU's devices are host memory
    assert plan.data_shards(4, 2) == 1 and plan.data_shards(1, 2) == 2 and plan.data_shards(4, 2, hosts=2) == 4
    per_seed = per_seed_on_device(figures, 1)
    fits = plan.plan_group(figures, 2, devices=1, device_memory=2 * per_seed)
    assert fits.fits and not plan.plan_group(figures, 3, devices=1, device_memory=2 * per_seed).fits


def test_start_up_check_refuses_with_every_part_named():
    """The refusal every run makes before allocating, from the same plan (the test session
    has 2 CPU devices, which are host memory: no compilation is asked for on a CPU)."""
    atari = make_config("atari", "pong", "paper", ["batch_size=100000"])
    with pytest.raises(ConfigError) as err:
        plan.check_group(atari, 1, host_memory=24 * 2 ** 30)
    message = str(err.value)
    assert message.startswith("this group does not fit in memory on this host: 1 seed: ")
    assert "batch 42.1 GiB" in message and "replay 672.9 MiB" in message  # 100000 x 16 x 4 x 84 x 84
    assert "Lower batch_size or replay_capacity, or the seeds per group" in message
    fits = plan.check_group(make_config("atari", "pong", "paper"), 1, host_memory=24 * 2 ** 30)
    assert fits.per_device["update"] == 0 and fits.per_device["state"] > 10 ** 9  # 2 GB of Adam and params
    assert fits.per_host["devices"] == 2 * fits.device_total
    dmc = make_config("dmc", "cartpole_swingup", "paper", ["run.replay_frames=device"])
    table = 100_001 * 3 * 100 * 100
    group = plan.check_group(dmc, 4, host_memory=2 ** 40, device_memory=2 * table + 2 ** 30)
    assert group.per_device["device_frames"] == 2 * table  # 4 seeds on 2 devices: 2 tables each
    with pytest.raises(ConfigError, match=r"on each device: 4 seeds: each device .* device frames 5\.6 GiB"):
        plan.check_group(dmc, 4, host_memory=2 ** 40, device_memory=2 * table)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_start_up_check_compiles_on_accelerators(monkeypatch, figures, backend):
    """On an accelerator the start-up check counts XLA's temporaries (and the device's limit);
    on a CPU it does not pay the compilation."""
    from mlr_jax import parallel

    asked = []
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(parallel, "device_memory_limit", lambda: 16 * 2 ** 30)
    monkeypatch.setattr(plan, "seed_figures", lambda cfg, shards, compiled: asked.append(compiled) or figures)
    cfg = make_config("atari", "pong", "smoke", ["aux=none"])
    group = plan.check_group(cfg, 2, host_memory=2 ** 40)
    assert asked == [backend == "gpu"]
    assert group.device_memory == (16 * 2 ** 30 if backend == "gpu" else None)
    assert ("devices" in group.per_host) == (backend == "cpu")


def test_dry_run_prints_the_largest_group_that_fits_or_exits_2(capsys, figures):
    per_seed = per_seed_on_device(figures, 1)
    argv = ["sweep", "atari", "--games", "pong,alien", "--seeds", "0-3", "--aux", "none",
            "--preset", "smoke", "--dry-run", "--devices", "1"]
    assert cli.main([*argv, "--device-memory", str(int(2.5 * per_seed))]) == 0
    out = capsys.readouterr().out
    assert "[plan] none: does not fit: 4 seeds" in out and "[plan] none: does not fit: 3 seeds" in out
    assert "[plan] none: groups of 2 (frames on the devices)" in out
    assert "4 jobs: pong none seeds 0,1, pong none seeds 2,3, alien none seeds 0,1, alien none seeds 2,3" in out
    assert "no accelerator bench record of atari/smoke (none)" in out
    assert "no host-only loop record of atari/smoke" in out
    assert cli.main([*argv, "--device-memory", str(per_seed // 2)]) == 2
    assert "[plan] none: DOES NOT FIT: 1 seed:" in capsys.readouterr().out


def test_host_work_comes_from_the_runs_sampler_and_group_size(monkeypatch, tmp_path):
    """Of the host-only loop records, the plan reads the one of the sampler its runs use
    (``auto`` plans for accelerators: ``device``), then of the group size nearest its own,
    then the newest."""
    records = {"a": ("device", 1, "2026-12-06T15:00"), "b": ("device", 8, "2026-12-06T14:00"),
               "c": ("device", 8, "2026-12-06T13:00"), "d": ("host", 8, "2026-12-06T16:00"),
               "e": ("device", 4, "2026-12-05T10:00")}
    for i, (name, (sampler, seeds, date)) in enumerate(records.items()):
        (tmp_path / f"loop_atari_paper-none-s{seeds}-host_cpu_{name}.json").write_text(json.dumps({
            "config": {"run": {"sampler": sampler}}, "num_seeds": seeds, "date": date,
            "host_ms_per_seed_step": float(i + 1), "device": "cpu:cpu x1"}))
    monkeypatch.setattr(plan, "RECORD_DIRS", (str(tmp_path),))
    cfg = make_config("atari", "pong", "paper", ["aux=none"])
    chosen = {seeds: pathlib.Path(plan.latest_host_record(cfg, seeds)[0]).stem[-1] for seeds in (1, 2, 4, 8, 16)}
    assert chosen == {1: "a", 2: "a", 4: "e", 8: "b", 16: "b"}
    path, ms, device = plan.latest_host_record(cfg, 8)
    assert ms == 2.0 and device == "cpu:cpu x1"
    host = make_config("atari", "pong", "paper", ["aux=none", "run.sampler=host"])
    assert pathlib.Path(plan.latest_host_record(host, 1)[0]).stem.endswith("_d")
    assert plan.latest_host_record(make_config("dmc", "cartpole_swingup", "paper", []), 8) is None


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerator_defaults_with_the_backend_patched(monkeypatch, backend):
    """What an accelerator gets, checked on a CPU with JAX's backend name patched: XLA's
    convolutions, the replay frames on the devices, the device's memory limit planned for
    (frames on the devices counted), and TF32-class matmuls by default."""
    from mlr_jax import parallel
    from mlr_jax.agents.common import precision_record

    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    monkeypatch.setattr(parallel, "device_memory_limit", lambda: 80 * 2 ** 30)
    assert parallel.on_accelerator()
    assert parallel.conv_impl("auto") == "xla" and parallel.replay_frames("auto") == "device"
    cfg = make_config("atari", "pong", "smoke", ["aux=none"])
    assert precision_record(cfg.run.precision)["matmul_precision"] == "tensorfloat32"
    groups, text = plan.sweep_plan("atari", ["pong"], ["none"], [0, 1], lambda name, aux: cfg,
                                   None, None, 1)
    assert groups == {"none": 2} and "of 80.0 GiB" in text and "(frames on the devices)" in text
