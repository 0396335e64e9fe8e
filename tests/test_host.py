"""The allocator settings of mlr_jax.host: applied on import, opt-out, bad values named."""
import os
import subprocess
import sys

import pytest

from mlr_jax import host


def test_import_tunes_glibc_malloc():
    assert host.tune_malloc() == "tuned"  # Linux/glibc CI; applied once by `import mlr_jax`


@pytest.mark.parametrize("value, expected", [("default", "default"), (None, "tuned")])
def test_a_fresh_process_follows_the_environment_variable(value, expected):
    env = {k: v for k, v in os.environ.items() if k != host.ENV_VAR}
    if value is not None:
        env[host.ENV_VAR] = value
    out = subprocess.run([sys.executable, "-c", "import mlr_jax.host as h; print(h.tune_malloc())"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected


def test_unknown_setting_is_an_error_naming_it(monkeypatch):
    monkeypatch.setattr(host, "_state", {})
    monkeypatch.setenv(host.ENV_VAR, "jemalloc")
    with pytest.raises(ValueError, match="'jemalloc'"):
        host.tune_malloc()
