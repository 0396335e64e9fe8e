"""``mlr-jax bench --loop N --host-only``: the loop with no-op updates, its host time per
seed-step, envpool's share, the phases and the device-to-host copies per step, each figure
derived from the run's own log rows."""
import json

import pytest

from mlr_jax import cli
from mlr_jax.bench.loop_sps import ROW_STEPS

pytestmark = pytest.mark.slow


# device: the actions each step, and one read of the tally per log row (every ROW_STEPS
# steps, and the run's last step)
@pytest.mark.parametrize("sampler, copies", [("host", 5), ("device", 1 + 2 / ROW_STEPS)])
def test_host_only_loop_record(tmp_path, sampler, copies):
    argv = ["bench", "--domain", "atari", "--preset", "toy", "--name", "toy_catch", "--loop", "40",
            "--seeds", "2", "--host-only", "--outdir", str(tmp_path), f"run.sampler={sampler}"]
    assert cli.main(argv) == 0
    (path,) = tmp_path.glob("loop_atari_toy-s2-host_cpu_*.json")
    record = json.loads(path.read_text())
    assert record["host_only"] and record["num_seeds"] == 2 and record["timed_agent_steps"] == 40  # from a log row on: every step timed
    assert record["config"]["run"]["sampler"] == sampler
    rate = record["agent_steps_per_s"]
    assert record["host_ms_per_seed_step"] == pytest.approx(1000 / rate / 2)
    phases = record["phase_ms_per_agent_step"]
    assert set(phases) == {"act", "env", "store", "sample", "update", "log"}
    assert record["envpool_ms_per_seed_step"] == pytest.approx(phases["env"] / 2)
    assert record["host_ms_per_seed_step_outside_envpool"] == pytest.approx(
        record["host_ms_per_seed_step"] - phases["env"] / 2)
    assert all(v >= 0 for v in phases.values())  # timings are not compared: no test reads a clock
    # host sampler: actions, 3 key splits and each update's metrics; device: the actions
    assert 1 <= record["transfers_per_step"] <= copies or sampler == "host"
    assert (record["transfers_per_step"] > 1 + 2 / ROW_STEPS) == (sampler == "host")
