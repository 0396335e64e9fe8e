"""The conv-trunk benchmark: a complete record for both domains, and the CLI path to it."""
import json

import pytest

from mlr_jax import cli
from mlr_jax.bench.convs import run_conv_benchmark


@pytest.mark.parametrize("domain, layers", [("dmc", 2), ("atari", 3)])
def test_conv_benchmark_times_every_implementation(tmp_path, domain, layers):
    record = run_conv_benchmark(domain, "cpu", "smoke", batch=4, repeats=1, outdir=tmp_path)
    assert json.loads((tmp_path / record["path"].split("/")[-1]).read_text())["batch"] == 4
    assert len(record["layers"]) == layers and record["input_shape"][0] == 4
    assert {"jax_xla", "jax_im2col", "torch"} <= set(record)
    # what is timed is one function: im2col's output equals XLA's to float32 rounding of sums
    # over 9 x 64 (DMC) or 8 x 8 x 4 to 3 x 3 x 64 (Atari) products, about sqrt(576) * 6e-8
    # relative to the output's scale; a wrong patch order or stride is off by O(1)
    assert record["jax_xla"]["max_rel_diff_vs_xla"] == 0.0
    assert record["jax_im2col"]["max_rel_diff_vs_xla"] < 1e-5


def test_cli_bench_convs_prints_one_line(tmp_path, capsys):
    assert cli.main(["bench", "--domain", "dmc", "--preset", "smoke", "--convs", "2",
                     "--repeats", "1", "--outdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "jax_im2col" in out[0] and len(list(tmp_path.glob("convs_dmc_cpu_*.json"))) == 1
