"""Run directory, metric files, progress display, plot and summary."""
import csv
import io
import json
import time

import jax.numpy as jnp
import numpy as np
import pytest

from mlr_jax import evaluation
from mlr_jax import logging as mlog


def test_run_dir_create_and_open(tmp_path):
    run = mlog.RunDir.create(tmp_path / "runs", "atari", "pong", "mlr", 3, timestamp="20240101-000000")
    assert run.root == tmp_path / "runs" / "atari_pong_mlr_s3_20240101-000000"
    assert run.tb.is_dir() and run.checkpoints.is_dir()
    names = [p.name for p in (run.config, run.param_counts, run.metrics_jsonl, run.metrics_csv,
                              run.final_eval, run.learning_curve, run.summary)]
    assert names == ["config.json", "param_counts.json", "metrics.jsonl", "metrics.csv",
                     "final_eval.json", "learning_curve.png", "summary.md"]
    assert all(p.parent == run.root for p in (run.config, run.summary, run.tb))
    again = mlog.RunDir.create(tmp_path / "runs", "atari", "pong", "mlr", 3, timestamp="20240101-000000")
    assert again.root.name == run.root.name + "-2"

    with pytest.raises(FileNotFoundError, match="config.json"):
        mlog.RunDir.open(run.root)
    mlog.write_json(run.config, {"game": "pong"})
    assert mlog.RunDir.open(run.root).root == run.root
    assert json.loads(run.config.read_text()) == {"game": "pong"}
    assert not list(run.root.glob("*.tmp"))


def test_metrics_writer_round_trip_csv_and_tensorboard(tmp_path):
    run = mlog.RunDir.create(tmp_path, "dmc", "cartpole_swingup", "none", 1)
    with mlog.MetricsWriter(run) as writer:
        writer.write(100, {"train/loss": np.float32(0.5), "episode/score": 12, "sps": jnp.asarray(3.25)})
        writer.write(200, {"eval/mean": 7.5, "eval/std": 1.0})
        with pytest.raises(ValueError, match="train/q"):
            writer.write(300, {"train/q": np.zeros(3)})
        # flushed: readable while the writer is still open
        assert len(mlog.read_metrics(run.metrics_jsonl)) == 2
    rows = mlog.read_metrics(run.metrics_jsonl)
    assert [r["step"] for r in rows] == [100, 200]
    assert {k: rows[0][k] for k in ("train/loss", "episode/score", "sps")} == {
        "train/loss": 0.5, "episode/score": 12, "sps": 3.25}
    assert isinstance(rows[0]["episode/score"], int)
    with run.metrics_csv.open() as f:
        table = list(csv.reader(f))
    assert table[0] == ["step", "time", "key", "value"]
    assert [(r[0], r[2], float(r[3])) for r in table[1:]] == [
        ("100", "train/loss", 0.5), ("100", "episode/score", 12.0), ("100", "sps", 3.25),
        ("200", "eval/mean", 7.5), ("200", "eval/std", 1.0)]
    events = list(run.tb.glob("events.out.tfevents*"))
    assert events and events[0].stat().st_size > 0


def test_metrics_writer_resume_drops_rows_after_the_checkpoint(tmp_path):
    run = mlog.RunDir.create(tmp_path, "atari", "pong", "mlr", 1)
    with mlog.MetricsWriter(run) as writer:
        for step in (10, 20, 30):
            writer.write(step, {"x": step})
    with mlog.MetricsWriter(run, keep_until=20) as writer:
        writer.write(30, {"x": -1})
    assert [(r["step"], r["x"]) for r in mlog.read_metrics(run.metrics_jsonl)] == [(10, 10), (20, 20), (30, -1)]
    with run.metrics_csv.open() as f:
        assert [r[0] for r in csv.reader(f)] == ["step", "10", "20", "30"]


def test_read_metrics_drops_only_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    assert mlog.read_metrics(path) == [{"step": 1, "a": 1.0}]
    path.write_text('{"step": 1\n{"step": 2, "a": 1.0}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:1"):
        mlog.read_metrics(path)


def test_progress_prints_compact_lines_without_a_terminal():
    out = io.StringIO()
    with mlog.Progress(total=100, enabled=True, print_every=25, file=out) as progress:
        for step in range(1, 101):
            progress.update(step, **({"score": float("nan")} if step == 30 else
                                     {"score": 1.5} if step == 60 else {}))
    lines = out.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["25/100", "50/100", "75/100", "100/100"]
    assert "sps" in lines[0] and "eta" in lines[0] and "score" not in lines[0]
    assert lines[1].endswith("score=-")  # no episode has ended yet: not "score=nan"
    assert lines[-1].endswith("score=1.5")


def test_progress_bar_on_a_terminal_and_disabled():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    with mlog.Progress(total=50, initial=10, print_every=10, file=out) as progress:
        progress.update(30, score=2.0)
        progress.update(50)
    text = out.getvalue()
    assert "50/50" in text and "score=2" in text and "step" in text
    out = Terminal()
    with mlog.Progress(total=50, enabled=False, print_every=50, file=out) as progress:
        progress.update(50)
    assert out.getvalue().startswith("train 50/50 (100.0%)")


def test_progress_in_environment_steps_names_the_unit():
    out = io.StringIO()
    with mlog.Progress(total=100_000, initial=40_000, print_every=2_000, desc="dmc:walker_walk",
                       unit="env step", file=out) as progress:
        progress.update(42_000, score=512.25)
    line = out.getvalue().strip()
    assert line.startswith("dmc:walker_walk 42000/100000 env steps (42.0%) | ")
    assert " env steps/s | eta " in line and line.endswith("score=512.2")


def test_plot_learning_curve_writes_a_png(tmp_path):
    run = mlog.RunDir.create(tmp_path, "atari", "pong", "mlr", 1)
    with mlog.MetricsWriter(run) as writer:
        for step in range(100, 1100, 100):
            writer.write(step, {mlog.EPISODE_SCORE: step / 100.0 - 20})
        writer.write(500, {mlog.EVAL_MEAN: -12.0, mlog.EVAL_STD: 2.0})
        writer.write(1000, {mlog.EVAL_MEAN: -5.0, mlog.EVAL_STD: 3.0})
    mlog.plot_learning_curve(run.metrics_jsonl, run.learning_curve, title="pong",
                             reference={"paper MLR": 4.9, "paper Baseline": -3.1})
    data = run.learning_curve.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000

    # a smoke run's scores are often all the same: a readable range around them, no offset
    flat = mlog.RunDir.create(tmp_path, "atari", "pong", "mlr", 2)
    with mlog.MetricsWriter(flat) as writer:
        for step in (100, 200, 300):
            writer.write(step, {mlog.EPISODE_SCORE: -10.0})
        writer.write(300, {mlog.EVAL_MEAN: -10.0, mlog.EVAL_STD: 0.0})
    (ax,) = mlog.plot_learning_curve(flat.metrics_jsonl, flat.learning_curve).axes
    assert ax.get_ylim() == (-11.0, -9.0)
    ax.figure.canvas.draw()
    assert ax.yaxis.get_major_formatter().get_offset() == ""

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    mlog.plot_learning_curve(empty, tmp_path / "empty.png")
    assert (tmp_path / "empty.png").read_bytes()[:4] == b"\x89PNG"


def test_write_summary_markdown(tmp_path):
    final = evaluation.summarize_scores("atari", "pong", [1.0, 3.0])
    path = tmp_path / "summary.md"
    mlog.write_summary(path, "atari pong (mlr, seed 1)", final,
                       param_counts={"encoder": 1234567}, run_info={"agent steps": 100000})
    text = path.read_text()
    assert text.startswith("# atari pong (mlr, seed 1)\n")
    assert "| final evaluation | 2 ± 1 (n=2) |" in text
    assert f"| human-normalised (of the mean) | {(2.0 + 20.7) / 35.3:.3f} |" in text
    assert "| paper MLR (100k) | 4.9 |" in text and "| paper Baseline (100k) | -3.1 |" in text
    assert "| encoder | 1,234,567 |" in text and "| agent steps | 100000 |" in text

    dmc = evaluation.summarize_scores("dmc", "cheetah_run", [500.0, 520.0])
    mlog.write_summary(path, "dmc cheetah_run", dmc)
    text = path.read_text()
    assert "| paper MLR (100k) | 482.0 ± 38 |" in text and "human" not in text and ">" not in text

    smoke = {**evaluation.summarize_scores("atari", "pong", [-10.0, -10.0], budget="600"),
             **evaluation.preset_note("smoke")}
    mlog.write_summary(path, "atari pong (mlr, seed 1)", smoke, note=smoke["note"])
    text = path.read_text()
    assert text.startswith("# atari pong (mlr, seed 1)\n\n> a smoke run: ") and "paper MLR" not in text
    assert smoke["preset"] == "smoke" and "no number to compare" in smoke["note"]
    assert evaluation.preset_note("paper") == {"preset": "paper"}


def test_wandb_tracker_streams_rows_and_media_offline(tmp_path):
    """``run.wandb``: every metric row, then the learning curve and the evaluation GIF, in an
    offline wandb run below the run directory whose id is the run directory's name."""
    run = mlog.RunDir.create(tmp_path, "atari", "pong", "mlr", 1)
    tracker = mlog.WandbTracker(run, "mlr-jax-test", "offline", {"game": "pong"})
    with mlog.MetricsWriter(run, tracker=tracker) as writer:
        writer.write(100, {mlog.EPISODE_SCORE: -21.0, "train/rl_loss": 0.125})
        writer.write(200, {mlog.EVAL_MEAN: -20.5, mlog.EVAL_STD: 0.5})
        mlog.plot_learning_curve(run.metrics_jsonl, run.learning_curve)
        mlog.write_gif(run.eval_video, np.zeros((3, 1, 8, 8), np.uint8))
        tracker.media(200, run.learning_curve, run.eval_video)
    (offline,) = (run.root / "wandb").glob(f"offline-run-*-{run.root.name}")
    history = b""
    for _ in range(60):  # wandb-core, a process of its own, may still be writing
        history = (offline / f"run-{run.root.name}.wandb").read_bytes()
        if b"eval/video" in history:
            break
        time.sleep(0.5)
    for key in (b"episode/score", b"train/rl_loss", b"eval/mean", b"learning_curve", b"eval/video"):
        assert key in history, key
    media = [p.suffix for p in (offline / "files" / "media").rglob("*.*")]
    assert ".png" in media and ".gif" in media
