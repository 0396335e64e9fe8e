"""Run directory layout, metric files, TensorBoard, progress display, plots and summaries.

A run directory holds everything one training run writes::

    <outdir>/<domain>_<name>_<aux>_s<seed>_<YYYYmmdd-HHMMSS>/
      config.json  param_counts.json  metrics.jsonl  metrics.csv  tb/  checkpoints/
      final_eval.json  learning_curve.png  summary.md  eval.gif

Metric rows are dicts of scalars keyed by ``"<group>/<name>"``. The plot reads the keys
:data:`EPISODE_SCORE` (raw score of a finished training episode), :data:`EVAL_MEAN` and
:data:`EVAL_STD` (evaluation episodes at that step).
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Mapping, TextIO

import numpy as np
import tqdm
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from mlr_jax.config import ConfigError

class NotWritten(OSError):
    """Results were computed (and printed) but could not be written; names the file."""


EPISODE_SCORE = "episode/score"
EVAL_MEAN = "eval/mean"
EVAL_STD = "eval/std"


def write_json(path: str | pathlib.Path, data: Any) -> None:
    """Write ``data`` as indented JSON atomically (temporary file, then rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


@dataclasses.dataclass(frozen=True)
class RunDir:
    """Paths of one run directory (``root``); :meth:`create` makes it with ``tb/`` and
    ``checkpoints/``, :meth:`open` checks an existing one, and the constructor alone touches
    nothing (the view of a run that another process writes)."""

    root: pathlib.Path

    @classmethod
    def create(cls, outdir: str | pathlib.Path, domain: str, name: str, aux: str, seed: int,
               timestamp: str | None = None) -> "RunDir":
        """A new directory ``outdir/<domain>_<name>_<aux>_s<seed>_<timestamp>`` (``-2``, ``-3``
        ... appended if that name is taken)."""
        stem = f"{domain}_{name}_{aux}_s{seed}_{timestamp or time.strftime('%Y%m%d-%H%M%S')}"
        root, n = pathlib.Path(outdir) / stem, 1
        pathlib.Path(outdir).mkdir(parents=True, exist_ok=True)
        while True:
            try:
                root.mkdir()
                run = cls(root)
                run.tb.mkdir()
                run.checkpoints.mkdir()
                return run
            except FileExistsError:
                n += 1
                root = pathlib.Path(outdir) / f"{stem}-{n}"

    @staticmethod
    def check_outdir(outdir: str | pathlib.Path) -> None:
        """Raise :class:`~mlr_jax.config.ConfigError` naming ``outdir`` unless run directories
        can be written in it (it is made if missing): checked before anything slow is built."""
        path = pathlib.Path(outdir)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".mlr-jax-write-check-"):
                pass
        except OSError as e:
            raise ConfigError(f"run.outdir={str(outdir)!r} is not a writable directory "
                              f"({e.strerror or e})") from None

    @classmethod
    def open(cls, path: str | pathlib.Path) -> "RunDir":
        """An existing run directory (to resume); it must hold ``config.json``."""
        root = pathlib.Path(path)
        if not (root / "config.json").is_file():
            raise FileNotFoundError(f"{root} is not a run directory (no config.json)")
        return cls(root)

    config = property(lambda self: self.root / "config.json")
    param_counts = property(lambda self: self.root / "param_counts.json")
    metrics_jsonl = property(lambda self: self.root / "metrics.jsonl")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    tb = property(lambda self: self.root / "tb")
    checkpoints = property(lambda self: self.root / "checkpoints")
    final_eval = property(lambda self: self.root / "final_eval.json")
    learning_curve = property(lambda self: self.root / "learning_curve.png")
    summary = property(lambda self: self.root / "summary.md")
    eval_video = property(lambda self: self.root / "eval.gif")


# --------------------------------------------------------------------------- metrics

def read_metrics(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl file; a truncated last line (a crash mid-write) is dropped."""
    lines = pathlib.Path(path).read_text().splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a JSON row: {line[:80]!r}") from e
    return rows


def _scalar(key: str, value: Any) -> float | int:
    arr = np.asarray(value)
    if arr.ndim != 0 or arr.dtype.kind not in "biuf":
        raise ValueError(f"metric {key!r} must be a real scalar, got {type(value).__name__} "
                         f"with shape {arr.shape} and dtype {arr.dtype}")
    return int(arr) if arr.dtype.kind in "biu" else float(arr)


class MetricsWriter:
    """Appends metric rows to metrics.jsonl, metrics.csv (long format: step, time, key, value)
    and TensorBoard, flushing after every row so a crash loses nothing already written.

    Args:
      run: the run directory.
      keep_until: when resuming from a checkpoint at this step, rows logged after it by the
        interrupted run are removed first (and TensorBoard purges them).
      tracker: also send every row there (:class:`WandbTracker`); closed with the writer.
    """

    def __init__(self, run: RunDir, keep_until: int | None = None,
                 tracker: "WandbTracker | None" = None):
        self._tracker = tracker
        self._jsonl_path, self._csv_path = run.metrics_jsonl, run.metrics_csv
        if keep_until is not None:
            self._truncate(keep_until)
        new_csv = not self._csv_path.exists()
        self._jsonl = self._jsonl_path.open("a")
        self._csv_file = self._csv_path.open("a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new_csv:
            self._csv.writerow(["step", "time", "key", "value"])
        purge = None if keep_until is None else keep_until + 1
        self._tb = SummaryWriter(str(run.tb), purge_step=purge)

    def _truncate(self, step: int) -> None:
        if self._jsonl_path.exists():
            rows = [r for r in read_metrics(self._jsonl_path) if r["step"] <= step]
            self._jsonl_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        if self._csv_path.exists():
            with self._csv_path.open(newline="") as f:
                lines = list(csv.reader(f))
            with self._csv_path.open("w", newline="") as f:
                csv.writer(f).writerows(lines[:1] + [r for r in lines[1:] if int(r[0]) <= step])

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Log scalar ``metrics`` (python, numpy or jax scalars) at agent step ``step``."""
        values = {k: _scalar(k, v) for k, v in metrics.items()}
        now = round(time.time(), 3)
        self._jsonl.write(json.dumps({"step": int(step), "time": now, **values}) + "\n")
        self._jsonl.flush()
        self._csv.writerows([step, now, k, v] for k, v in values.items())
        self._csv_file.flush()
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._tb.flush()
        if self._tracker is not None:
            self._tracker.log(int(step), values)

    def close(self) -> None:
        self._jsonl.close()
        self._csv_file.close()
        self._tb.close()
        if self._tracker is not None:
            self._tracker.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


WANDB_INSTALL = "pip install wandb (or: pip install 'mlr-jax[track]')"


def check_wandb(project: str) -> None:
    """Raise :class:`~mlr_jax.config.ConfigError` with the install command when
    ``run.wandb`` names a project but wandb is not installed (checked at start-up)."""
    if project and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"run.wandb={project!r} streams the run to Weights & Biases, but wandb "
                          f"is not installed: {WANDB_INSTALL}")


class WandbTracker:
    """A run's metric rows, evaluations, learning curve and evaluation GIF, also in Weights &
    Biases (``run.wandb``). The wandb run's id is the run directory's name, so ``--resume``
    continues the same wandb run; its files go below the run directory (``wandb/``).
    wandb keeps only rows at steps after the last one it has, so after a resume the rows
    between the checkpoint and the interruption keep their first values there (the run
    directory's files hold the resumed ones)."""

    def __init__(self, run: RunDir, project: str, mode: str, config: Mapping[str, Any]):
        import wandb

        self._wandb = wandb
        self._run = wandb.init(project=project, mode=mode, dir=str(run.root), id=run.root.name,
                               name=run.root.name, config=dict(config), resume="allow")

    def log(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def media(self, step: int, curve: pathlib.Path, video: pathlib.Path) -> None:
        """The learning curve (PNG) and the evaluation video (GIF) at ``step``."""
        self._run.log({"learning_curve": self._wandb.Image(str(curve)),
                       "eval/video": self._wandb.Video(str(video), format="gif")}, step=step)

    def close(self) -> None:
        self._run.finish()


class NoMetrics:
    """A :class:`MetricsWriter` that writes nothing (the processes other than the primary)."""

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        del step, metrics

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- progress

def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """Progress of a run: a tqdm bar (steps, steps/s, ETA, latest values as postfix) on a
    terminal; otherwise (or with ``enabled=False``) one compact line every ``print_every``
    steps.

    Args:
      total: final step.
      initial: step the run starts (or resumes) from.
      enabled: False forces the compact lines (``cfg.run.progress``).
      print_every: steps between compact lines.
      desc: what runs, e.g. ``"atari:pong"``.
      unit: what a step is: ``"step"`` (an agent step; the lines say ``sps``) or e.g.
        ``"env step"`` (DMC, whose budgets count environment steps; the lines name it).
      file: output stream (stderr by default).
      show: False shows nothing at all (the processes other than the primary).
    """

    def __init__(self, total: int, initial: int = 0, enabled: bool = True, print_every: int = 1000,
                 desc: str = "train", unit: str = "step", file: TextIO | None = None,
                 show: bool = True):
        self.total, self.desc, self.print_every = total, desc, max(1, print_every)
        self.unit = unit
        self._show = show
        self._file = file or sys.stderr
        self._start_step, self._start_time = initial, time.monotonic()
        self._next_print = (initial // self.print_every + 1) * self.print_every
        self._postfix: dict[str, Any] = {}
        self._bar = None
        if show and enabled and self._file.isatty():
            self._bar = tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit,
                                  dynamic_ncols=True, smoothing=0.05, file=self._file)

    def update(self, step: int, **postfix: Any) -> None:
        """Move to ``step``; keyword values (e.g. ``score=12.0``) are shown until replaced."""
        self._postfix.update(postfix)
        if not self._show:
            return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix(self._shown(), refresh=False)
            self._bar.update(step - self._bar.n)
        elif step >= self._next_print or step >= self.total:
            self._next_print = (step // self.print_every + 1) * self.print_every
            print(self.line(step), file=self._file, flush=True)

    def line(self, step: int) -> str:
        """``train 1200/100000 (1.2%) | 345.2 sps | eta 4m46s | score=3``; with another
        unit ``dmc:walker_walk 56000/100000 env steps (56.0%) | 16.8 env steps/s | ...``."""
        elapsed = time.monotonic() - self._start_time
        sps = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / sps if sps > 0 else float("inf")
        extra = " ".join(f"{k}={v}" for k, v in self._shown().items())
        named, rate = ("", "sps") if self.unit == "step" else (f" {self.unit}s", f"{self.unit}s/s")
        return (f"{self.desc} {step}/{self.total}{named} ({100 * step / self.total:.1f}%) | "
                f"{sps:.1f} {rate} | eta {_duration(eta)}" + (f" | {extra}" if extra else ""))

    def _shown(self) -> dict[str, str]:
        """The postfix values as shown: floats to 4 digits, ``-`` for a value not known yet
        (NaN, e.g. the score before the first episode ends)."""
        return {k: (f"{v:.4g}" if math.isfinite(v) else "-") if isinstance(v, float) else str(v)
                for k, v in self._postfix.items()}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------- reports

def plot_learning_curve(metrics_path: str | pathlib.Path, png_path: str | pathlib.Path,
                        title: str = "", reference: Mapping[str, float] | None = None,
                        step_scale: int = 1, xlabel: str = "agent step") -> Figure:
    """Plot raw training episode scores and evaluation mean +- std against agent step;
    returns the figure (also written to ``png_path``).

    Args:
      metrics_path: a metrics.jsonl written by :class:`MetricsWriter`.
      png_path: output PNG.
      title: plot title.
      reference: e.g. ``{"paper MLR": 990.1, "paper Baseline": 678.5}``: horizontal lines.
      step_scale, xlabel: the x axis shows ``step * step_scale`` (DMC: environment steps).
    """
    rows = read_metrics(metrics_path)
    episodes = np.array([(r["step"] * step_scale, r[EPISODE_SCORE]) for r in rows if EPISODE_SCORE in r]).reshape(-1, 2)
    evals = np.array([(r["step"] * step_scale, r[EVAL_MEAN], r.get(EVAL_STD, 0.0)) for r in rows
                      if EVAL_MEAN in r]).reshape(-1, 3)
    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.subplots()
    ax.plot(episodes[:, 0], episodes[:, 1], ".-", lw=0.6, ms=3, alpha=0.6, label="training episodes")
    ax.errorbar(evals[:, 0], evals[:, 1], yerr=evals[:, 2], fmt="o", capsize=3, color="k",
                label="evaluation (mean ± std)")
    styles = (("--", "tab:red"), (":", "tab:purple"), ("-.", "tab:green"))
    for (label, value), (style, color) in zip((reference or {}).items(), styles):
        ax.axhline(value, ls=style, color=color, lw=1, label=f"{label} ({value:g})")
    ax.set(xlabel=xlabel, ylabel="episode score", title=title)
    _readable_y(ax, np.concatenate([episodes[:, 1], evals[:, 1] - evals[:, 2],
                                    evals[:, 1] + evals[:, 2], list((reference or {}).values())]))
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(png_path)
    return fig


def _readable_y(ax: Any, values: np.ndarray) -> None:
    """Plain tick labels (no ``1e-5 + -10`` offset), and a range of +-1 (or 10%) around the
    value when every score is the same (e.g. a smoke run's -10s), instead of a hair's width."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    values = values[np.isfinite(values)]
    if values.size and np.ptp(values) < 1e-9:
        pad = max(1.0, 0.1 * abs(float(values[0])))
        ax.set_ylim(float(values[0]) - pad, float(values[0]) + pad)


def write_gif(path: str | pathlib.Path, frames: np.ndarray, fps: int = 25) -> None:
    """Write ``frames`` uint8[T, C, H, W] (C = 1 gray or 3 RGB) as an animated GIF."""
    import imageio.v2 as imageio  # only needed for the evaluation video

    frames = np.asarray(frames, np.uint8)
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"frames must be uint8[T, 1|3, H, W], got shape {frames.shape}")
    hwc = np.repeat(frames, 3, axis=1) if frames.shape[1] == 1 else frames
    imageio.mimsave(path, list(hwc.transpose(0, 2, 3, 1)), duration=1000 / fps, loop=0)


def _fmt(x: float) -> str:
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.3g}"


def write_summary(path: str | pathlib.Path, title: str, final_eval: Mapping[str, Any],
                  param_counts: Mapping[str, int] | None = None,
                  run_info: Mapping[str, Any] | None = None, note: str | None = None) -> None:
    """Write a markdown summary of a finished run.

    Args:
      path: output .md file.
      title: heading, e.g. ``"atari ms_pacman (mlr, seed 1)"``.
      final_eval: :func:`mlr_jax.evaluation.summarize_scores` output.
      param_counts: parameters per module.
      run_info: other facts to list (steps, wall time, device, ...).
      note: a sentence shown under the heading (e.g. why a smoke run's score means little).
    """
    e = final_eval
    rows = [("final evaluation", f"{_fmt(e['mean'])} ± {_fmt(e['std'])} (n={e['n']})"),
            ("median [min, max]", f"{_fmt(e['median'])} [{_fmt(e['min'])}, {_fmt(e['max'])}]")]
    if "human_normalized" in e:
        rows.append(("human-normalised (of the mean)", f"{e['human_normalized']:.3f}"))
    for method, ref in e.get("paper", {}).items():
        std = "" if ref["std"] is None else f" ± {_fmt(ref['std'])}"
        rows.append((f"paper {method} ({e.get('budget', '')})", f"{_fmt(ref['mean'])}{std}"))
    lines = [f"# {title}", ""] + ([f"> {note}", ""] if note else [])
    lines += ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if param_counts:
        lines += ["", "## Parameters", "", "| module | parameters |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in param_counts.items()]
    if run_info:
        lines += ["", "## Run", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in run_info.items()]
    pathlib.Path(path).write_text("\n".join(lines) + "\n")
