"""``mlr-jax report``: many finished runs -> tables, intervals, figures, a CSV.

:func:`collect_runs` reads every run directory below a root (``final_eval.json``,
``config.json``, the periodic evaluations of ``metrics.jsonl``). :func:`build_report` groups
the runs by benchmark (domain and budget) and method (``aux``) and computes, with
:mod:`mlr_jax.stats`:

* per game/task and method: the mean over seeds with a 95% bootstrap interval, the seed
  count and the paper's number;
* per benchmark and method: Atari IQM, median, mean and optimality gap of human-normalised
  scores, DMC mean and median of raw scores, each with 95% stratified-bootstrap intervals;
* the probability of improvement between methods;
* sample-efficiency curves (IQM / mean with intervals at every evaluation step all runs share).

A stratified bootstrap needs the same runs in every task: where a method's games have uneven
seed counts, the aggregates use the seeds every game has, and the report says so. Runs whose
evaluation protocols differ (``final_eval.json["protocol"]``) are refused, naming the fields.
:func:`write_report` writes ``report.md``, ``report.json``, ``scores.csv`` and the figures.
"""

from __future__ import annotations

import csv
import json
import pathlib
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from mlr_jax import evaluation, stats
from mlr_jax import logging as runlog

ATARI_METRICS = ("iqm", "median", "mean", "optimality_gap")
DMC_METRICS = ("mean", "median")
METRIC_NAMES = {"iqm": "IQM", "median": "Median", "mean": "Mean", "optimality_gap": "Optimality gap"}


class ReportError(ValueError):
    """The runs cannot be reported together; the message names the runs and fields."""


# --------------------------------------------------------------------------- reading runs

def collect_runs(root: str | pathlib.Path) -> list[dict[str, Any]]:
    """Finished runs below ``root``: per run directory holding ``final_eval.json``, its
    summary plus ``aux``, ``seed``, ``run_dir``, ``unit`` (environment steps per logged step)
    and ``evals`` (``[(step, mean)]`` of the periodic and final evaluations)."""
    records = []
    for final in sorted(pathlib.Path(root).rglob("final_eval.json")):
        run = final.parent
        config = json.loads((run / "config.json").read_text())
        result = json.loads(final.read_text())
        unit = config.get("action_repeat", 1) if result["domain"] == "dmc" else 1
        evals = []
        if (run / "metrics.jsonl").is_file():
            evals = [(r["step"] * unit, r[runlog.EVAL_MEAN])
                     for r in runlog.read_metrics(run / "metrics.jsonl") if runlog.EVAL_MEAN in r]
        records.append({**result, "aux": config["aux"], "seed": config["run"]["seed"],
                        "run_dir": str(run), "evals": evals})
    return records


def normalized(domain: str, name: str, score: float | np.ndarray) -> float | np.ndarray:
    """The score aggregates use: Atari human-normalised, DMC raw."""
    return evaluation.human_normalized(name, score) if domain == "atari" else score


def _normalizable(domain: str, name: str) -> bool:
    return domain == "dmc" or name in evaluation.reference_scores()["atari100k"]["games"]


def check_protocols(records: Sequence[dict[str, Any]]) -> None:
    """Raise :class:`ReportError` if runs of one benchmark were evaluated differently."""
    for (domain, budget), group in _by(records, "domain", "budget").items():
        first = group[0]
        for r in group[1:]:
            a, b = first.get("protocol", {}), r.get("protocol", {})
            diff = sorted(k for k in set(a) | set(b) if a.get(k, "<missing>") != b.get(k, "<missing>"))
            if diff:
                fields = "; ".join(f"{k}: {a.get(k, '<missing>')!r} vs {b.get(k, '<missing>')!r}"
                                   for k in diff)
                raise ReportError(f"{domain} {budget}: {first['run_dir']} and {r['run_dir']} were "
                                  f"evaluated under different protocols ({fields}); report them "
                                  "separately")


def _by(records: Sequence[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return dict(sorted(groups.items()))


def score_matrix(runs: Sequence[dict[str, Any]], tasks: Sequence[str],
                 value=lambda r: r["mean"]) -> tuple[np.ndarray, list[int], str | None]:
    """``[seeds, tasks]`` normalised scores of one method, over the seeds every task has.

    Returns the matrix, the seeds used and a warning when some task has runs of other seeds
    (they are left out: a stratified bootstrap needs equal runs per task)."""
    per_task = {t: {r["seed"]: r for r in runs if r["name"] == t} for t in tasks}
    seeds = sorted(set.intersection(*(set(v) for v in per_task.values())))
    counts = {t: len(v) for t, v in per_task.items()}
    warning = None
    if len(set(counts.values())) > 1 or any(len(v) != len(seeds) for v in per_task.values()):
        warning = (f"uneven seeds: {', '.join(f'{t} {n}' for t, n in counts.items())}; the "
                   f"aggregates use the {len(seeds)} seed(s) every game/task has ({seeds})")
    domain = runs[0]["domain"]
    x = np.array([[normalized(domain, t, value(per_task[t][s])) for t in tasks] for s in seeds],
                 np.float64).reshape(len(seeds), len(tasks))
    return x, seeds, warning


# --------------------------------------------------------------------------- the report

def build_report(records: Sequence[dict[str, Any]], compare: Sequence[str] | None = None,
                 reps: int = stats.DEFAULT_REPS) -> dict[str, Any]:
    """Everything :func:`write_report` writes, as one JSON-ready dict: ``rows`` (per game or
    task and method), ``aggregates`` (per benchmark and method), ``improvements``,
    ``curves`` and ``warnings``. ``compare=("mlr", "none")`` restricts the probability of
    improvement to P(mlr > none); by default every ordered pair of methods present."""
    if not records:
        raise ReportError("no finished runs to report")
    for r in records:
        evaluation.paper_method(r["aux"])  # an unknown aux fails here, with close matches
    check_protocols(records)
    rows, aggregates, improvements, curves, warnings = [], [], [], [], []
    for (domain, budget, name, aux), runs in _by(records, "domain", "budget", "name", "aux").items():
        est = stats.mean_interval([r["mean"] for r in runs], reps)
        paper = (evaluation.paper_reference(domain, name, budget)[evaluation.paper_method(aux)]["mean"]
                 if evaluation.has_reference(domain, name, budget) else None)
        rows.append({"domain": domain, "budget": budget, "name": name, "aux": aux,
                     "seeds": len(runs), "mean": est["value"], "low": est["low"],
                     "high": est["high"], "paper": paper})
    for (domain, budget), bench in _by(records, "domain", "budget").items():
        methods = _by(bench, "aux")
        matrices = {}
        for (aux,), runs in methods.items():
            tasks = sorted({r["name"] for r in runs if _normalizable(domain, r["name"])})
            if not tasks:
                continue
            x, seeds, warning = score_matrix(runs, tasks)
            if warning:
                warnings.append(f"{domain} {budget} {aux}: {warning}")
            if not seeds:
                continue
            matrices[aux] = (x, tasks)
            names = ATARI_METRICS if domain == "atari" else DMC_METRICS
            est = stats.interval_estimates(x, {m: stats.METRICS[m] for m in names}, reps)
            ref = evaluation.reference_scores()
            key = evaluation.benchmark_key(domain, budget)
            paper = ({m: ref[key]["aggregates"].get(m, {}).get(evaluation.paper_method(aux))
                      for m in names} if key else {})
            aggregates.append({"domain": domain, "budget": budget, "aux": aux, "tasks": tasks,
                               "seeds": seeds, "metrics": est, "paper": paper})
            curve = _curve(runs, tasks, seeds, domain, reps)
            if curve:
                curves.append({"domain": domain, "budget": budget, "aux": aux, **curve})
        pairs = ([tuple(compare)] if compare else
                 [(a, b) for a in matrices for b in matrices if a != b])
        for a, b in pairs:
            if a not in matrices or b not in matrices:
                raise ReportError(f"--compare {a},{b}: {domain} {budget} has runs of "
                                  f"{sorted(matrices) or 'no method'}")
            (x, tx), (y, ty) = matrices[a], matrices[b]
            common = sorted(set(tx) & set(ty))
            if not common:
                continue
            est = stats.probability_of_improvement(
                x[:, [tx.index(t) for t in common]], y[:, [ty.index(t) for t in common]], reps)
            improvements.append({"domain": domain, "budget": budget, "x": a, "y": b,
                                 "tasks": len(common), **est})
    return {"rows": rows, "aggregates": aggregates, "improvements": improvements,
            "curves": curves, "warnings": warnings, "reps": reps}


def _curve(runs, tasks, seeds, domain, reps) -> dict[str, Any] | None:
    """IQM (Atari) or mean (DMC) with intervals at every evaluation step that every
    (task, seed) run has."""
    chosen = [r for r in runs if r["name"] in tasks and r["seed"] in seeds]
    steps = sorted(set.intersection(*(set(s for s, _ in r["evals"]) for r in chosen)))
    if not steps:
        return None
    metric = "iqm" if domain == "atari" else "mean"
    points = []
    for step in steps:
        x, _, _ = score_matrix(chosen, tasks, value=lambda r: dict(r["evals"])[step])
        points.append(stats.interval_estimates(x, {metric: stats.METRICS[metric]}, reps)[metric])
    return {"metric": metric, "steps": steps, "value": [p["value"] for p in points],
            "low": [p["low"] for p in points], "high": [p["high"] for p in points]}


# --------------------------------------------------------------------------- writing

FIGURES = ("aggregates.png", "performance_profile.png", "sample_efficiency.png")


def report_directory(root: str | pathlib.Path, compare: Sequence[str] | None = None,
                     reps: int = stats.DEFAULT_REPS, out: str | pathlib.Path | None = None
                     ) -> tuple[str, list[pathlib.Path], list[str]]:
    """``mlr-jax report``: the finished runs below ``root`` reported into ``out`` (default
    ``root``). Returns the markdown tables, the paths written and the warnings.

    Raises:
      ReportError: no finished run below ``root``, or runs that cannot be reported together.
    """
    records = collect_runs(root)
    if not records:
        raise ReportError(f"no finished runs (final_eval.json) below {root}")
    try:
        result = build_report(records, compare, reps)
    except ValueError as e:
        raise ReportError(str(e)) from None
    paths = write_report(result, records, root if out is None else out)
    text = report_markdown(result) + (f"\n[mlr-jax] {len(records)} run"
                                      f"{'s' if len(records) != 1 else ''}; written to "
                                      + ", ".join(str(p) for p in paths))
    return text, paths, result["warnings"]


def write_report(report: dict[str, Any], records: Sequence[dict[str, Any]],
                 out: str | pathlib.Path) -> list[pathlib.Path]:
    """``report.md``, ``report.json``, ``scores.csv`` and the figures into ``out``; returns
    the paths written."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "scores.csv", out / "report.json", out / "report.md"]
    with open(paths[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["domain", "budget", "task", "aux", "seed", "score", "normalized_score"])
        for r in sorted(records, key=lambda r: (r["domain"], r["budget"], r["name"], r["aux"], r["seed"])):
            norm = (normalized(r["domain"], r["name"], r["mean"])
                    if _normalizable(r["domain"], r["name"]) else "")
            w.writerow([r["domain"], r["budget"], r["name"], r["aux"], r["seed"], r["mean"], norm])
    runlog.write_json(paths[1], report)
    figures = [p for p in (_plot_aggregates(report, out / FIGURES[0]),
                           _plot_profiles(report, records, out / FIGURES[1]),
                           _plot_curves(report, out / FIGURES[2])) if p is not None]
    paths[2].write_text(report_markdown(report, [p.name for p in figures]))
    return paths + figures


def _num(x: float | None, scale: float | None = None) -> str:
    """``x`` with 1 decimal from 10 on, 3 below (judged by ``scale``, default ``|x|``)."""
    if x is None:
        return "-"
    return f"{x:,.1f}" if (abs(x) if scale is None else scale) >= 10 else f"{x:.3f}"


def _ci(est: dict[str, float]) -> str:
    """``value [low, high]``, the three with the same number of decimals."""
    scale = max(abs(est["value"]), abs(est["low"]), abs(est["high"]))
    return f"{_num(est['value'], scale)} [{_num(est['low'], scale)}, {_num(est['high'], scale)}]"


def report_markdown(report: dict[str, Any], figures: Sequence[str] = ()) -> str:
    """The tables of :func:`build_report` as markdown, figures linked."""
    pct = "95%"
    lines = ["# mlr-jax results", ""]
    lines += [f"> **warning:** {w}" for w in report["warnings"]]
    lines += ["", f"## Per game / task (mean over seeds, {pct} bootstrap interval)", "",
              "| domain | budget | game/task | aux | seeds | score [95% CI] | paper |",
              "|---|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['domain']} | {r['budget']} | {r['name']} | {r['aux']} | {r['seeds']} | "
              f"{_ci({'value': r['mean'], **r})} | {_num(r['paper'])} |" for r in report["rows"]]
    if report["aggregates"]:
        lines += ["", f"## Aggregates ({pct} stratified-bootstrap intervals, {report['reps']} "
                  "replicates; Atari: human-normalised)", "",
                  "| domain | budget | aux | games/tasks x seeds | metric | ours [95% CI] | paper |",
                  "|---|---|---|---:|---|---:|---:|"]
        for a in report["aggregates"]:
            for m, est in a["metrics"].items():
                lines.append(f"| {a['domain']} | {a['budget']} | {a['aux']} | "
                             f"{len(a['tasks'])} x {len(a['seeds'])} | {METRIC_NAMES[m]} | "
                             f"{_ci(est)} | {_num(a['paper'].get(m))} |")
    if report["improvements"]:
        lines += ["", "## Probability of improvement", "",
                  "| domain | budget | P(X > Y) | games/tasks | estimate [95% CI] |",
                  "|---|---|---|---:|---:|"]
        lines += [f"| {i['domain']} | {i['budget']} | P({i['x']} > {i['y']}) | {i['tasks']} | "
                  f"{_ci(i)} |" for i in report["improvements"]]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def _benchmarks(items: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted({(i["domain"], i["budget"]) for i in items})


def _colors(auxes: Sequence[str]) -> dict[str, str]:
    palette = {"mlr": "tab:blue", "none": "tab:orange", "spr": "tab:green"}
    return {a: palette.get(a, f"C{i + 2}") for i, a in enumerate(sorted(auxes))}


def _plot_aggregates(report, path) -> pathlib.Path | None:
    aggs = report["aggregates"]
    if not aggs:
        return None
    benches = _benchmarks(aggs)
    ncols = max(len(ATARI_METRICS if d == "atari" else DMC_METRICS) for d, _ in benches)
    fig = Figure(figsize=(3.2 * ncols, 1.2 + 1.1 * len(benches) * max(2, len({a['aux'] for a in aggs}))))
    axes = fig.subplots(len(benches), ncols, squeeze=False)
    colors = _colors({a["aux"] for a in aggs})
    for row, (domain, budget) in enumerate(benches):
        mine = [a for a in aggs if (a["domain"], a["budget"]) == (domain, budget)]
        names = ATARI_METRICS if domain == "atari" else DMC_METRICS
        for col in range(ncols):
            ax = axes[row, col]
            if col >= len(names):
                ax.set_visible(False)
                continue
            m = names[col]
            for y, a in enumerate(mine):
                est = a["metrics"][m]
                ax.barh(y, est["high"] - est["low"], left=est["low"], height=0.6,
                        color=colors[a["aux"]], alpha=0.75)
                ax.plot([est["value"]] * 2, [y - 0.3, y + 0.3], color="k", lw=1.5)
            ax.set_yticks(range(len(mine)), [a["aux"] for a in mine] if col == 0 else [])
            ax.set_title(METRIC_NAMES[m], fontsize="medium")
            ax.grid(axis="x", alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"{domain} {budget}")
        axes[row, 0].set_xlabel("human-normalised score" if domain == "atari" else "score")
    fig.suptitle("Aggregates with 95% stratified-bootstrap intervals (black: point estimate)",
                 fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _panels(items, path, title, draw) -> pathlib.Path | None:
    """One panel per benchmark among ``items`` (dicts with domain, budget, aux), side by
    side; ``draw(ax, domain, budget, mine, colors)`` fills one with ``mine``, the items of
    its benchmark. Nothing is written when there are no items."""
    if not items:
        return None
    benches = _benchmarks(items)
    fig = Figure(figsize=(5.5 * len(benches), 4.0))
    axes = fig.subplots(1, len(benches), squeeze=False)[0]
    colors = _colors({i["aux"] for i in items})
    for ax, (domain, budget) in zip(axes, benches):
        draw(ax, domain, budget, [i for i in items if (i["domain"], i["budget"]) == (domain, budget)],
             colors)
        ax.set_title(f"{domain} {budget}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_profiles(report, records, path) -> pathlib.Path | None:
    def draw(ax, domain, budget, mine, colors):
        runs = [r for r in records if (r["domain"], r["budget"]) == (domain, budget)]
        mats = {a["aux"]: score_matrix([r for r in runs if r["aux"] == a["aux"]], a["tasks"])[0]
                for a in mine}
        lo = min(float(x.min()) for x in mats.values())
        lo = min(lo, 0.0) if domain == "atari" else lo  # Atari profiles start at random (0)
        hi = max(float(x.max()) for x in mats.values())
        pad = 0.05 * (hi - lo) or 0.05
        taus = np.linspace(lo - pad, hi + pad, 101)
        for a in mine:
            prof = stats.performance_profile(mats[a["aux"]], taus, report["reps"])
            ax.plot(taus, prof["value"], color=colors[a["aux"]], label=a["aux"])
            ax.fill_between(taus, prof["low"], prof["high"], color=colors[a["aux"]], alpha=0.2)
        ax.set(xlabel="human-normalised score (tau)" if domain == "atari" else "score (tau)",
               ylabel="fraction of runs with score > tau", ylim=(0, 1.02))

    return _panels(report["aggregates"], path,
                   "Performance profiles (score distributions, 95% intervals)", draw)


def _plot_curves(report, path) -> pathlib.Path | None:
    def draw(ax, domain, budget, mine, colors):
        for c in mine:
            ax.plot(c["steps"], c["value"], "o-", ms=3, color=colors[c["aux"]], label=c["aux"])
            ax.fill_between(c["steps"], c["low"], c["high"], color=colors[c["aux"]], alpha=0.2)
        ax.set(xlabel="agent step" if domain == "atari" else "environment step",
               ylabel=f"{METRIC_NAMES[mine[0]['metric']]} "
                      f"({'human-normalised' if domain == 'atari' else 'score'})")

    return _panels(report["curves"], path,
                   "Sample efficiency (evaluations, 95% stratified-bootstrap intervals)", draw)
