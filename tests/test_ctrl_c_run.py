"""Ctrl-C on a real training run (a subprocess on envpool's Pong): a checkpoint of the step
it stopped at, exit status 130, and ``--resume`` continues from it. A file of its own, so
that ``--dist loadfile`` can run it beside the other end-to-end runs."""
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from mlr_jax import cli
from mlr_jax.logging import read_metrics
from test_train_end_to_end import LONG_SMOKE_RUN, check_run_dir, wait_for_metrics_step

pytestmark = pytest.mark.slow


def test_ctrl_c_saves_a_checkpoint_then_resume(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "mlr_jax", *LONG_SMOKE_RUN, "--outdir", str(tmp_path)],
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        run = wait_for_metrics_step(tmp_path, 210, [proc])  # updates start at 200
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=300)[0]
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, out[-2000:]
    stopped = re.search(r"stopped by SIGINT at agent step (\d+); checkpoint saved in (\S+);", out)
    assert stopped, out[-2000:]
    step = int(stopped.group(1))
    assert pathlib.Path(stopped.group(2)) == run / "checkpoints" / str(step) and step >= 210
    assert max(r["step"] for r in read_metrics(run / "metrics.jsonl")) <= step

    assert cli.main(["train", "atari", "--resume", str(run), "--no-progress", f"steps={step + 20}"]) == 0
    check_run_dir(run, step + 20, 2)
