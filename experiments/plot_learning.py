"""Collect finished training runs into a learning-curve report beside the random policy.

For every (domain, game/task) among the runs below RUNS_DIR: measure the uniform random
policy on the same evaluation environment (and, for Atari, every action held for whole
episodes: the best of them is what "learned to press one good button" scores), plot each run's evaluations (mean +- std) and its
training episodes against environment steps with the random policy's mean as a line, and copy
each run's metrics. Writes to RESULTS_DIR:

  <domain>_<name>.png             the curves, one line per aux setting
  <domain>_<name>_<aux>.metrics.jsonl
  results.json                    per run: config, command, evaluations, final evaluation,
                                  wall time; per task: the random policy's scores; host and
                                  versions
  summary.md                      one table

Usage: python experiments/plot_learning.py RUNS_DIR RESULTS_DIR [--random-episodes N]
(experiments/cpu_learning.sh calls it after its runs.)
"""
from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
from matplotlib.figure import Figure

from mlr_jax import envs, host, logging as runlog
from mlr_jax.config import AtariConfig
from mlr_jax.loop import load_run_config

AUX_STYLE = {"mlr": ("MLR", "tab:blue", "o-", 7), "none": ("Baseline (aux=none)", "tab:orange", "s--", 5)}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, cwd=pathlib.Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_run(run_dir: pathlib.Path) -> dict:
    """One finished run: its config, evaluations and final evaluation (env-step x axis)."""
    final_path = run_dir / "final_eval.json"
    if not final_path.is_file():
        raise SystemExit(f"{run_dir} has no final_eval.json: the run did not finish "
                         f"(continue it with: mlr-jax train ... --resume {run_dir})")
    cfg = load_run_config(run_dir)
    atari = isinstance(cfg, AtariConfig)
    unit = 1 if atari else cfg.action_repeat  # DMC curves count environment steps
    rows = runlog.read_metrics(run_dir / "metrics.jsonl")
    final = json.loads(final_path.read_text())
    evals = [(r["step"] * unit, r[runlog.EVAL_MEAN], r.get(runlog.EVAL_STD, 0.0))
             for r in rows if runlog.EVAL_MEAN in r]
    episodes = [(r["step"] * unit, r[runlog.EPISODE_SCORE]) for r in rows if runlog.EPISODE_SCORE in r]
    domain, name = ("atari", cfg.game) if atari else ("dmc", cfg.task)
    flag = "--game" if atari else "--task"
    times = [r["time"] for r in rows if "time" in r]  # across resumes too
    wall = max(times) - min(times) if times else None
    return {
        "domain": domain, "name": name, "aux": cfg.aux, "seed": cfg.run.seed,
        "run_dir": str(run_dir), "cfg": cfg, "wall_time_s": wall,
        "command": f"mlr-jax train {domain} {flag} {name} --preset cpu --aux {cfg.aux} --seed {cfg.run.seed}",
        "x_label": "agent step (4 frames)" if atari else "environment step",
        "evaluations": [{"x": x, "mean": m, "std": s} for x, m, s in evals],
        "episodes": episodes,
        "final": {"mean": final["mean"], "std": final["std"], "n": final["n"],
                  "agent_steps": final["agent_steps"], "env_steps": final["env_steps"]},
    }


def plot_task(runs: list[dict], random_scores: np.ndarray, path: pathlib.Path,
              best_constant: tuple[int, float] | None = None) -> None:
    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.subplots()
    for run in sorted(runs, key=lambda r: r["aux"]):  # mlr under none: equal values stay visible
        label, color, style, size = AUX_STYLE.get(run["aux"], (run["aux"], None, "o-", 6))
        ep = np.array(run["episodes"], dtype=float).reshape(-1, 2)
        ax.plot(ep[:, 0], ep[:, 1], ".", ms=3, alpha=0.45, color=color)
        ev = np.array([(e["x"], e["mean"], e["std"]) for e in run["evaluations"]]).reshape(-1, 3)
        ax.plot(ev[:, 0], ev[:, 1], style, ms=size, color=color, label=f"{label}: evaluation mean")
        ax.fill_between(ev[:, 0], ev[:, 1] - ev[:, 2], ev[:, 1] + ev[:, 2], color=color, alpha=0.15)
    mean, std = float(random_scores.mean()), float(random_scores.std())
    ax.axhline(mean, ls="--", color="k", lw=1,
               label=f"random policy: {mean:.1f} ± {std:.1f} ({len(random_scores)} episodes)")
    if best_constant is not None:
        action, score = best_constant
        ax.axhline(score, ls=":", color="tab:red", lw=1.2,
                   label=f"best single action, held (action {action}): {score:.1f}")
    first = runs[0]
    ax.set(xlabel=first["x_label"], ylabel="episode score",
           title=f"{first['domain']} {first['name']}, preset cpu (reduced, not the paper's setting)")
    ax.grid(alpha=0.3)
    # below the axes, where it covers no point of any curve
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize="small",
              frameon=False)
    ax.text(0.99, 0.01, "dots: training episodes; bands: evaluation ± std", transform=ax.transAxes,
            ha="right", va="bottom", fontsize="x-small", alpha=0.7)
    fig.savefig(path, bbox_inches="tight")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=pathlib.Path)
    parser.add_argument("results_dir", type=pathlib.Path)
    parser.add_argument("--random-episodes", type=int, default=100)
    parser.add_argument("--constant-episodes", type=int, default=8,
                        help="episodes per action of each held action (Atari)")
    args = parser.parse_args(argv)
    run_dirs = sorted(p.parent for p in args.runs_dir.glob("*/config.json"))
    if not run_dirs:
        raise SystemExit(f"no run directories (with config.json) below {args.runs_dir}")
    runs = [load_run(d) for d in run_dirs]
    args.results_dir.mkdir(parents=True, exist_ok=True)
    tasks: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        tasks.setdefault((run["domain"], run["name"]), []).append(run)

    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "git_commit": _git_commit(), "host": host.describe(), "versions": host.versions(),
              "driver": "bash experiments/cpu_learning.sh", "tasks": {}, "runs": []}
    lines = ["| task | agent | final evaluation | random policy | best held action | agent steps | env steps | wall time (shared CPU) |",
             "|---|---|---|---|---|---|---|---|"]
    for (domain, name), task_runs in sorted(tasks.items()):
        cfg = task_runs[0]["cfg"]
        random_scores = envs.random_policy_scores(cfg, args.random_episodes)
        stem = f"{domain}_{name}"
        record["tasks"][stem] = {"random_policy": {"mean": float(random_scores.mean()),
                                                   "std": float(random_scores.std()),
                                                   "n": len(random_scores),
                                                   "scores": random_scores.tolist()}}
        best = None
        if isinstance(cfg, AtariConfig):  # the bar above "found one good button"
            constant = {a: float(v.mean()) for a, v in
                        envs.constant_action_scores(cfg, args.constant_episodes).items()}
            best = max(constant.items(), key=lambda kv: kv[1])
            record["tasks"][stem]["constant_actions"] = {
                "episodes_per_action": args.constant_episodes, "means": constant,
                "best_action": best[0], "best_mean": best[1]}
        plot_task(task_runs, random_scores, args.results_dir / f"{stem}.png", best)
        for run in sorted(task_runs, key=lambda r: r["aux"]):
            shutil.copyfile(pathlib.Path(run["run_dir"]) / "metrics.jsonl",
                            args.results_dir / f"{stem}_{run['aux']}.metrics.jsonl")
            f = run["final"]
            minutes = f"{run['wall_time_s'] / 60:.0f} min" if run["wall_time_s"] else "?"
            lines.append(f"| {domain} {name} | {AUX_STYLE.get(run['aux'], (run['aux'],))[0]} | "
                         f"{f['mean']:.1f} ± {f['std']:.1f} (n={f['n']}) | "
                         f"{random_scores.mean():.1f} ± {random_scores.std():.1f} | "
                         f"{'-' if best is None else f'{best[1]:.1f} (action {best[0]})'} | "
                         f"{f['agent_steps']:,} | {f['env_steps']:,} | {minutes} |")
            record["runs"].append({k: v for k, v in run.items() if k not in ("cfg", "episodes")}
                                  | {"config": json.loads((pathlib.Path(run["run_dir"]) / "config.json").read_text())})
    (args.results_dir / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.results_dir / "summary.md").write_text(
        f"# CPU learning runs ({record['date']}, {record['host']['cpu_model']}, "
        f"{record['host']['cpus']} CPUs)\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"[plot_learning] wrote {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
