"""mlr_jax.host: the allocator settings (applied on import, opt-out, bad values named), StopSignals and the device memory policy."""
import os
import signal
import subprocess
import sys

import pytest

from mlr_jax import cli, host


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


def test_stop_signals_turn_signals_into_a_request():
    previous = signal.getsignal(signal.SIGTERM)
    with host.StopSignals() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM changes nothing
        assert stop.requested == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is previous
    with host.StopSignals(()) as none:  # no signals: the handlers stay as they are
        assert signal.getsignal(signal.SIGTERM) is previous and none.requested is None


def test_describe_names_the_cpu_model_and_versions():
    info = host.describe()
    assert info["cpus"] == os.cpu_count() and info["malloc"] in ("tuned", "default", "unavailable")
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
        if models:
            assert info["cpu_model"] in models
    assert info["cpu_model"]
    import jax
    v = host.versions(("jax", "surely-not-installed-pkg"))
    assert v["jax"] == jax.__version__ and v["surely-not-installed-pkg"] is None and v["python"]


ALARM = (b"2026-11-30 08:01:02.345: E external/xla/xla/service/slow_operation_alarm.cc:73] \n"
         b"********************************\n"
         b"[Compiling module jit_train_step] Very slow compile? If you want to file a bug, run "
         b"with envvar XLA_FLAGS=--xla_dump_to=/tmp/foo and attach the results.\n"
         b"********************************\n")
TOOK = (b"2026-11-30 08:01:30.001: E external/xla/xla/service/slow_operation_alarm.cc:140] The "
        b"operation took 2m12.85s\n\n" + ALARM.split(b"\n", 1)[1])


def test_xla_alarms_are_dropped_and_everything_else_passes(capfd, monkeypatch):
    warning = b"2026-11-30 08:01:03: W external/xla/xla/tsl/bfc_allocator.cc:296] low memory\n"
    with host.xla_alarms_hidden():
        os.write(2, ALARM)
        os.write(2, warning)
        os.write(2, TOOK[:50])  # one alarm written in two pieces
        os.write(2, TOOK[50:] + b"Traceback (most recent call last):\n")
        os.write(2, b"step 10/100\r")  # a progress bar: no newline, shown at once
        os.write(2, b"step 20/100\r")
        os.write(2, ALARM)  # while the bar is shown
        os.write(2, b"step 30/100\n")
    err = capfd.readouterr().err
    assert err == (warning + b"Traceback (most recent call last):\n"
                   b"step 10/100\rstep 20/100\rstep 30/100\n").decode()
    monkeypatch.setenv(host.XLA_LOGS_VAR, "all")  # the user asks for everything
    with host.xla_alarms_hidden():
        os.write(2, ALARM)
    assert capfd.readouterr().err == ALARM.decode()


def test_the_alarm_filter_never_swallows_more_than_an_alarm_block():
    alarms = host._AlarmFilter()
    lines = [b"line %d\n" % i for i in range(20)]  # an alarm line without its asterisks
    out = alarms.feed(b"E slow_operation_alarm.cc:73] changed format\n" + b"".join(lines))
    assert out == b"".join(lines[host._ALARM_MAX_LINES:])


def test_an_alarm_split_across_reads_is_still_dropped():
    """The pipe may hand the filter an alarm line in pieces: a piece that may begin a log
    line (a timestamp) is held until its line is complete; a progress bar's text is not."""
    alarms = host._AlarmFilter()
    out = alarms.feed(b"step 1/9\r") + alarms.feed(TOOK[:50]) + alarms.feed(TOOK[50:])
    out += alarms.feed(b"after\n") + alarms.flush()
    assert out == b"step 1/9\rafter\n"


@pytest.mark.parametrize("command, shards, expected", [
    ("train", 1, None), ("sweep", 1, None), ("sweep", 4, "false"),
    ("eval", 1, "false"), ("report", 1, "false"), ("bench", 1, "false"),
])
def test_device_memory_policy_preallocates_only_for_training_alone(command, shards, expected):
    env = {}
    line = host.device_memory_policy(command, shards, env)
    assert env.get(host.PREALLOCATE) == expected and line.startswith("device memory: ")
    assert ("on demand" in line) == (expected == "false")
    # what the user set stands
    mine = {host.MEM_FRACTION: ".3"}
    assert "the user's" in host.device_memory_policy("eval", 1, mine) and mine == {host.MEM_FRACTION: ".3"}


def test_the_cli_sets_the_policy_before_running_a_command(monkeypatch, tmp_path):
    monkeypatch.delenv(host.PREALLOCATE, raising=False)
    monkeypatch.delenv(host.MEM_FRACTION, raising=False)
    with pytest.raises(SystemExit):  # not a run directory: the policy was set before that
        cli.main(["eval", str(tmp_path)])
    assert os.environ[host.PREALLOCATE] == "false"


def test_source_commit_names_the_checkout_and_its_changes(tmp_path):
    """Benchmark records carry the commit they were measured at (bench.timing.write_record)."""
    assert host.source_commit(tmp_path) is None  # not a git checkout
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    subprocess.run([*git, "add", "a.py"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert host.source_commit(tmp_path) == head
    (tmp_path / "a.py").write_text("x = 2\n")
    assert host.source_commit(tmp_path) == head + "+changes"
