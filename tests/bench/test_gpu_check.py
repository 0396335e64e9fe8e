"""``benchmarks/gpu_check.sh`` on a CPU (``PRESET=smoke DEVICE=cpu``), as a lent GPU machine
runs it: correctness first, every step writes its record (the parity records compare every
value to float32 rounding; the profiled steps hold a trace), a second call runs only the
steps whose record is missing, and a spent budget starts no step and says so."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from mlr_jax import host
from mlr_jax.bench.parity import PARITY_RTOL

pytestmark = [pytest.mark.slow, pytest.mark.long]  # about 8 minutes on 2 CPU cores

SCRIPT = pathlib.Path(__file__).parent.parent.parent / "benchmarks" / "gpu_check.sh"
RECORDS = ["parity_atari_smoke-mlr_cpu_", "parity_dmc_smoke_cpu_", "atari_smoke_cpu_tf32_",
           "atari_smoke_cpu_bf16_", "atari_smoke-baseline_cpu_tf32_", "dmc_smoke_cpu_tf32_",
           "atari_smoke-s8_cpu_bf16_", "dmc_smoke-s2_cpu_tf32_", "atari_smoke-spr_cpu_tf32_",
           "loop_atari_smoke-s2-host_cpu_", "loop_atari_smoke-s2_cpu_"]
PARITY_VALUES = {"atari": {"loss", "rl_loss", "grad_norm", "mlr_loss", "decoder_grad_norm"},
                 "dmc": {"critic_loss", "mlr_loss", "mlr_grad_norm", "actor_loss", "alpha_loss"}}


def run(outdir, **env):
    env = {"PRESET": "smoke", "DEVICE": "cpu", "REPEATS": "2", "STEP_TIMEOUT": "600",
           "LOOP_SEEDS": "2", "LOOP_STEPS": "10",
           "BUDGET": "100000", "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), str(outdir)], capture_output=True, text=True,
                          timeout=1500, env={**os.environ, **env})


def records(outdir):
    return {prefix: json.loads(next(outdir.glob(f"{prefix}*.json")).read_text()) for prefix in RECORDS
            if any(outdir.glob(f"{prefix}*.json"))}


def test_gpu_check_dry_run_writes_each_record_and_fills_in_only_what_is_missing(tmp_path):
    first = run(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert first.stdout.index("== parity atari") < first.stdout.index("== atari mlr tf32")  # correctness first
    got = records(tmp_path)
    assert list(got) == RECORDS and len(list(tmp_path.glob("*.json"))) == len(RECORDS)

    for domain in ("atari", "dmc"):  # mlr-jax bench --parity
        parity = got[RECORDS[domain == "dmc"]]
        assert parity["ok"] and parity["rtol"] == PARITY_RTOL and parity["host"]["cpu_model"] == host.cpu_model()
        assert set(parity["values"]) == PARITY_VALUES[domain]
        for v in parity["values"].values():
            assert v["rel_diff"] == pytest.approx(abs(v["jax"] - v["torch"]) / abs(v["torch"]))
    tf32, baseline = got["atari_smoke_cpu_tf32_"], got["atari_smoke-baseline_cpu_tf32_"]
    group = got["dmc_smoke-s2_cpu_tf32_"]
    assert tf32["precision"] == {"run.precision": "tf32", "matmul_precision": "tensorfloat32",
                                 "compute_dtype": "float32"}
    assert tf32["torch"]["settings"]["cudnn_allow_tf32"] and tf32["torch"]["settings"]["cuda_matmul_allow_tf32"]
    assert tf32["summary"].startswith("atari/smoke on cpu") and baseline["summary"].startswith("atari/smoke Baseline")
    assert "envpool" in tf32 and "envpool" not in baseline  # measured once per domain
    assert group["jax"]["num_seeds"] == 2 and "torch" not in group
    assert got["atari_smoke-s8_cpu_bf16_"]["config"]["run"]["precision"] == "bf16"
    for profiled in (tf32, got["dmc_smoke_cpu_tf32_"]):  # a trace of two units and the largest ops
        profile = profiled["jax"]["profile"]
        assert pathlib.Path(profile["trace"]).is_file() and profile["top_ops"]
        assert profile["updates"] == 2 * profiled["updates_per_unit"]

    host_work, whole = got["loop_atari_smoke-s2-host_cpu_"], got["loop_atari_smoke-s2_cpu_"]
    for loop in (host_work, whole):  # the training loop of 2 seeds, 10 agent steps timed
        assert loop["kind"] == "loop" and loop["num_seeds"] == 2 and loop["timed_agent_steps"] == 10
        assert loop["transfers_per_step"] > 0 and loop["envpool_ms_per_seed_step"] > 0
    assert host_work["host_only"] and not whole["host_only"]

    (tmp_path / pathlib.Path(group["path"]).name).unlink()
    spent = run(tmp_path, BUDGET="0")  # nothing may start: the missing step is reported
    assert spent.returncode == 1 and "== dmc 2 seeds: not started" in spent.stdout, spent.stdout
    assert spent.stdout.count(": done before") == len(RECORDS) - 1

    again = run(tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count(": done before") == len(RECORDS) - 1
    assert "== dmc 2 seeds: mlr-jax bench" in again.stdout and list(records(tmp_path)) == RECORDS
