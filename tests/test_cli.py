"""The ``mlr-jax`` command line: config resolution, help, and clear errors for bad input."""

import json
import re

import pytest

from mlr_jax import cli
from mlr_jax.config import (AtariConfig, ConfigError, DMCConfig, apply_overrides, from_dict,
                            make_config, to_dict)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr()


def test_config_prints_paper_defaults(capsys):
    code, out = run_cli(capsys, "config", "atari", "--game", "ms_pacman")
    cfg = json.loads(out.out)
    assert code == 0
    assert cfg["game"] == "ms_pacman" and cfg["aux"] == "mlr"
    assert cfg["steps"] == 100_000 and cfg["n_step"] == 10 and cfg["batch_size"] == 32
    assert cfg["repeat_action_probability"] == 0.0 and cfg["fire_reset"] is False
    assert cfg["mlr"] == {**cfg["mlr"], "seq_len": 16, "patch_size": 12, "block_size": 8,
                          "mask_ratio": 0.5, "num_layers": 2, "num_heads": 1}


def test_config_dmc_task_presets_and_budget(capsys):
    _, out = run_cli(capsys, "config", "dmc", "--task", "cartpole_swingup", "--budget", "500k")
    cfg = json.loads(out.out)
    assert cfg["env_steps"] == 500_000 and cfg["action_repeat"] == 8
    assert cfg["mlr"]["block_size"] == 4 and cfg["mlr"]["patch_size"] == 10
    cheetah = make_config("dmc", "cheetah_run")
    assert (cheetah.critic_lr, cheetah.actor_lr, cheetah.aux_lr) == (2e-4, 2e-4, 2e-4)
    assert make_config("dmc", "walker_walk").momentum_tau == 0.1
    assert cheetah.agent_steps == 100_000 // 4


def test_flags_and_overrides(capsys):
    _, out = run_cli(capsys, "config", "atari", "--aux", "none", "--steps", "5000", "--seed", "3",
                     "mlr.block_size=4", "lr=3e-4", "channels=16,32,16")
    cfg = json.loads(out.out)
    assert (cfg["aux"], cfg["steps"], cfg["run"]["seed"]) == ("none", 5000, 3)
    assert cfg["mlr"]["block_size"] == 4 and cfg["lr"] == 3e-4 and cfg["channels"] == [16, 32, 16]
    # overrides anywhere on the line, also after options
    _, out = run_cli(capsys, "config", "atari", "lr=3e-4", "--seed", "3", "mlr.block_size=4",
                     "--aux", "none", "hidden_size=64")
    cfg = json.loads(out.out)
    assert (cfg["lr"], cfg["run"]["seed"], cfg["mlr"]["block_size"], cfg["aux"], cfg["hidden_size"]) == \
        (3e-4, 3, 4, "none", 64)


@pytest.mark.parametrize("argv, message", [
    (["config", "atari", "--game", "pongg"], "did you mean 'pong'"),
    (["config", "dmc", "--task", "walker_wlak"], "did you mean 'walker_walk'"),
    (["config", "atari", "mlr.blok_size=4"], "did you mean 'block_size'"),
    (["config", "atari", "mlr.block_size=3"], "mlr.seq_len=16 must be a positive multiple of mlr.block_size=3"),
    (["config", "atari", "mlr.patch_size=10"], "image_size=84 is not divisible by mlr.patch_size=10"),
    (["config", "atari", "batch_size=abc"], "batch_size: expected int, got 'abc'"),
    (["config", "atari", "--preset", "smok"], "unknown preset 'smok'"),
    (["train", "atari", "--num-processes", "2"], "--coordinator, --num-processes and --process-id go together"),
    (["train", "atari", "--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id=2 must be in [0, 2)"),
    (["train", "atari", "--seeds", "0-2,2"], "seeds '0-2,2': 2 given more than once"),
    (["train", "atari", "--seeds", "3-1"], "seeds '3-1': the range '3-1' is empty"),
    (["train", "atari", "--seeds", "0-x"], "seeds '0-x': '0-x' is not a seed or a range like 0-7"),
    (["train", "atari", "--seeds", "0,1", "--seed", "3"], "--seed 3 and --seeds 0,1: give one of them"),
    (["train", "atari", "--resume", "runs/x", "--seeds", "0,1"], "leave out --seed and --seeds"),
    (["sweep", "atari", "--games", "pong,pongg", "--seeds", "0-1"], "did you mean 'pong'"),
    (["sweep", "dmc", "--tasks", "all", "--seeds", "0-1", "--aux", "mlr,spr"],
     "aux must be one of mlr, none"),
    (["sweep", "atari", "--games", "pong", "--seeds", "0", "--shard", "2/2"], "--shard '2/2': need 0 <= i < n"),
    (["sweep", "atari", "--games", "pong", "--seeds", "0-3", "--group-size", "0"],
     "group size must be at least 1, got 0"),
    (["train", "atari", "--outdir", "gs://bucket/runs"],
     "run.outdir='gs://bucket/runs' is a gs:// URL, but mlr-jax writes run directories through "
     "the local filesystem: mount the bucket"),
    (["sweep", "dmc", "--tasks", "all", "--seeds", "0-1", "--outdir", "s3://b/sweep"],
     "--outdir='s3://b/sweep' is a s3:// URL"),
    (["sweep", "atari", "--games", "pong", "--seeds", "0", "--shard", "0/2", "--distributed"],
     "--shard and --distributed both pick this process's share"),
])
def test_bad_input_fails_early_naming_the_value(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_batch_not_divisible_by_devices_fails_before_training(capsys, tmp_path):
    # the test session has 2 (fake CPU) devices
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "dmc", "--preset", "smoke", "--outdir", str(tmp_path), "aux_batch_size=3"])
    assert exit_info.value.code == 2
    assert "aux_batch_size=3 is not divisible by the number of devices (2)" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing may be created for a run that cannot start"


def test_an_unwritable_outdir_fails_before_training(capsys, tmp_path):
    blocker = tmp_path / "a_file"  # a file where the directory should be (root may write anywhere)
    blocker.write_text("")
    for outdir in (blocker, blocker / "runs"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "atari", "--preset", "smoke", "--outdir", str(outdir)])
        assert exit_info.value.code == 2
        assert f"run.outdir={str(outdir)!r} is not a writable directory" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]


@pytest.mark.parametrize("text, message", [
    ('{"game": "pong", "steps": ', "is not valid JSON (Expecting value at line 1 column 27)"),
    ("[1, 2]", "holds list, not a run's configuration"),
])
def test_a_resume_of_a_run_with_an_unreadable_config_fails_with_one_line(capsys, tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    for argv in (["train", "atari", "--resume", str(tmp_path)], ["eval", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and f"{tmp_path / 'config.json'} {message}" in err
        assert err.count("\n") == 1 and "Traceback" not in err


def test_a_resumed_run_shows_progress_unless_told_again(tmp_path):
    """``--no-progress`` is a display choice of one command: a resume does not inherit it."""
    parser = cli.build_parser()
    for flags, shown in (([], True), (["--no-progress"], False)):
        args = parser.parse_args(["train", "dmc", "--resume", str(tmp_path), *flags])
        assert f"run.progress={shown}" in cli.requested_overrides(args)[1]


def test_bench_without_torch_stops_before_timing_anything(capsys, monkeypatch, tmp_path):
    import importlib.util

    from mlr_jax.bench import runner

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    monkeypatch.setattr(runner, "_bench_jax", lambda *a: pytest.fail("JAX was timed first"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", "--domain", "atari", "--preset", "smoke", "--outdir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert "include the PyTorch port but torch is not installed: pip install 'mlr-jax[bench]'" in err
    assert "--frameworks jax" in err and not any(tmp_path.iterdir())
    # the records go to runs/bench unless told otherwise (benchmarks/results is committed)
    seen = {}
    monkeypatch.setattr(runner, "run_benchmark",
                        lambda **kw: seen.update(kw) or {"summary": "timed"})
    assert cli.main(["bench", "--domain", "dmc", "--frameworks", "jax"]) == 0
    assert seen["outdir"] == runner.DEFAULT_OUTDIR == "runs/bench"


def test_wandb_without_the_package_fails_at_start(capsys, monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "atari", "--preset", "smoke", "--outdir", str(tmp_path),
                  "run.wandb=my-project"])
    assert exit_info.value.code == 2 and not any(tmp_path.iterdir())
    assert ("run.wandb='my-project' streams the run to Weights & Biases, but wandb is not "
            "installed: pip install wandb") in capsys.readouterr().err


def test_a_full_disk_exits_4_with_one_line(capsys, monkeypatch):
    import errno

    from mlr_jax import checkpoint

    for error, text in (
            (checkpoint.DiskFull("disk full: checkpoint 20 cannot be written to /r/checkpoints"),
             "mlr-jax: error: disk full: checkpoint 20 cannot be written to /r/checkpoints\n"),
            (OSError(errno.ENOSPC, "No space left on device", "/r/metrics.jsonl"),
             "mlr-jax: error: disk full writing /r/metrics.jsonl: No space left on device; ")):
        def fail(args, error=error):
            raise error

        monkeypatch.setattr(cli, "_train", fail)
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["train", "atari", "--preset", "smoke"])
        assert exit_info.value.code == cli.DISK_FULL_EXIT == 4
        assert capsys.readouterr().err.startswith(text)


def test_output_into_a_closed_pipe_exits_quietly(tmp_path):
    """`mlr-jax config atari | head -1`: no BrokenPipeError traceback, exit status 0. Here the
    reader is gone before the command writes anything."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "mlr_jax", "config", "atari"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == "", err


def test_unknown_subcommand_and_option(capsys):
    for argv in (["frobnicate"], ["train", "atari", "--bogus"], ["train"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_help_lists_subcommands_and_budget_units(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(c in text for c in ("train", "config", "bench"))
    with pytest.raises(SystemExit):
        cli.main(["train", "dmc", "--help"])
    text = capsys.readouterr().out
    assert "ENVIRONMENT-step budget" in text and "ENVIRONMENT steps between evaluations" in text


def test_config_round_trip():
    for cfg in (make_config("atari", "pong", "smoke"), make_config("dmc", "reacher_easy")):
        assert from_dict(type(cfg), to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(AtariConfig(), ["mlr=3"])
    assert apply_overrides(DMCConfig(), {"run.seed": "7"}).run.seed == 7


def test_configs_build_without_envpool(monkeypatch):
    """A machine without envpool (a GPU image used to benchmark updates) can still build
    configs; names are checked wherever envpool is installed (test above)."""
    import sys

    import mlr_jax

    monkeypatch.setitem(sys.modules, "envpool", None)  # `import envpool` raises ImportError
    for name in [m for m in sys.modules if m == "mlr_jax.envs" or m.startswith("mlr_jax.envs.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(mlr_jax, "envs", raising=False)
    with pytest.raises(ImportError):
        import mlr_jax.envs  # noqa: F401
    assert make_config("atari", "pong", "paper").game == "pong"
    assert make_config("dmc", "cartpole_swingup", "smoke").task == "cartpole_swingup"


@pytest.mark.parametrize("domain, names", [
    ("atari", ("road_runner", "pong", "toy_catch")),
    ("dmc", ("cartpole_swingup", "walker_walk", "toy_reach")),
])
def test_every_preset_builds_a_valid_config_for_every_kind_of_name(domain, names):
    """Every preset passes validation (e.g. an Atari image size divisible by the mask patch)
    here, not an hour into a run; `cpu` keeps the paper's update rules and shrinks sizes."""
    from mlr_jax.config import PRESETS
    for preset in PRESETS[domain]:
        for name in names:
            assert make_config(domain, name, preset).aux == "mlr"
    paper, cpu = make_config(domain, names[0]), make_config(domain, names[0], "cpu")
    same = ("n_step", "gamma", "lr", "batch_size", "target_update_period") if domain == "atari" else \
        ("gamma", "critic_lr", "actor_lr", "critic_tau", "encoder_tau", "action_repeat", "frame_stack")
    assert all(getattr(paper, k) == getattr(cpu, k) for k in same)
    assert cpu.image_size == 64 and cpu.mlr.num_layers == 1


@pytest.mark.parametrize("cfg", [AtariConfig(), DMCConfig()], ids=["atari", "dmc"])
def test_every_field_refuses_a_bad_value_naming_it(cfg):
    """Table-driven validation: every field of every config has a rule (a type and range, or
    its names), and each value a rule refuses (wrong type, NaN, out of range) fails at once
    with the field's key in the message, before anything is built."""
    from mlr_jax.config import BOUNDS, CHOICES, field_keys, validate
    keys = field_keys(cfg)
    assert [k for k in keys if k not in BOUNDS and k not in CHOICES] == []
    validate(cfg)
    for key in keys:
        bad_values = ["nonsense", 3] if key in CHOICES else BOUNDS[key].bad_values()
        assert len(bad_values) >= 2, key
        for bad in bad_values:
            # set the raw value (no coercion), as a JSON config or a dataclass could carry it
            broken = _replace(cfg, key.split("."), bad)
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                validate(broken)


def test_aux_names_the_objectives_of_its_domain():
    assert make_config("atari", "pong", "smoke", ["aux=spr"]).aux == "spr"
    with pytest.raises(ConfigError, match="aux must be one of mlr, none; got 'spr'"):
        make_config("dmc", "cartpole_swingup", "smoke", ["aux=spr"])
    with pytest.raises(ConfigError, match="did you mean 'spr'"):
        make_config("atari", "pong", "smoke", ["aux=sprr"])


def _replace(cfg, path, value):
    import dataclasses
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    return dataclasses.replace(cfg, **{path[0]: _replace(getattr(cfg, path[0]), path[1:], value)})


@pytest.mark.parametrize("overrides, message", [
    (["lr=nan"], "lr must be a finite number > 0, got nan"),
    (["lr=-1"], "lr must be a finite number > 0, got -1.0"),
    (["v_min=10"], "v_min=10.0 must be less than v_max=10.0"),
    (["run.log_every=0"], "run.log_every must be an integer >= 1, got 0"),
    (["target_update_period=0"], "target_update_period must be an integer >= 1"),
    (["updates_per_step=0"], "updates_per_step must be an integer >= 1"),
    (["mlr.patch_size=0"], "mlr.patch_size must be an integer >= 1, got 0"),
    (["mlr.num_heads=3"], "mlr.num_heads=3 does not divide the decoder's width 3136"),
    (["frame_stack=0"], "frame_stack must be an integer >= 1"),
    (["image_size=0"], "image_size must be an integer >= 1"),
    (["image_size=24"], "image_size=24 is too small for kernels=(8, 4, 3)"),
    (["n_step=0"], "n_step must be an integer >= 1"),
    (["run.seed=-1"], "run.seed must be an integer >= 0, got -1"),
    (["channels=32,64"], "must have one entry per convolution each"),
])
def test_values_that_used_to_fail_late_fail_in_validation(overrides, message):
    with pytest.raises(ConfigError) as error:
        make_config("atari", "pong", "paper", overrides)
    assert message in str(error.value)


def test_dmc_relations_are_checked():
    for overrides, message in ((["log_std_min=3"], "log_std_min=3.0 must be less than log_std_max=2.0"),
                               (["mlr.num_heads=3"], "does not divide the decoder's width 50"),
                               (["critic_beta1=1"], "critic_beta1 must be a finite number in [0, 1)")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            make_config("dmc", "cartpole_swingup", "paper", overrides)
