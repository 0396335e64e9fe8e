"""Mutation checks of the learning tests: does each one fail when learning is broken?

For every mutation and every case of ``tests/test_learning.py``, runs that test with the
mutation applied to the training run it starts, and records the final evaluation and whether
the test failed ("killed"). A mutation is a deliberate bug, patched into the library from
outside (nothing in ``mlr_jax`` knows about it): the learning test starts its run through
``python experiments/mutations.py --apply NAME -- train ...`` when ``MLR_JAX_MUTATION=NAME``
is set, instead of ``python -m mlr_jax train ...``.

    python experiments/mutations.py                  # all 12 cells, 2 at a time
    python experiments/mutations.py --only zero_rewards --cases toy_catch-none
    python experiments/mutations.py --readme         # also rewrite the README's table

Results go to ``benchmarks/mutations/results.json`` and ``table.md`` (the README's table).
Each cell is one learning run: 2-4 minutes on a 2-core CPU, about 20 minutes in all.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import pathlib
import queue
import re
import subprocess
import sys
from typing import Callable

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "mutations"
CASES = ("toy_catch-none", "toy_catch-mlr", "toy_reach-none", "toy_reach-mlr")
BEGIN, END = "<!-- mutations:begin -->", "<!-- mutations:end -->"


def _wrap_replay_add(make_add: Callable) -> None:
    """Both domains' replays store through ``make_add(real_add)`` instead of ``add``."""
    from mlr_jax.replay.atari import AtariReplay
    from mlr_jax.replay.dmc import DMCReplay

    for cls in (AtariReplay, DMCReplay):
        cls.add = make_add(cls.add)


def shift_actions() -> None:
    """Each step is stored with the action of the step after it (one step held back)."""
    def make_add(real):
        def add(self, frame, action, reward, *rest, **kwargs):
            held = getattr(self, "_mutation_held", None)
            self._mutation_held = (np.array(frame), reward, rest, kwargs)
            if held is not None:
                frame, reward, rest, kwargs = held
                real(self, frame, action, reward, *rest, **kwargs)
        return add
    _wrap_replay_add(make_add)


def zero_rewards() -> None:
    def make_add(real):
        def add(self, frame, action, reward, *rest, **kwargs):
            real(self, frame, action, 0.0, *rest, **kwargs)
        return add
    _wrap_replay_add(make_add)


def detach_online() -> None:
    import jax

    from mlr_jax.agents import atari
    from mlr_jax.rl import sac

    c51_loss, critic_loss = atari.c51_loss, sac.critic_loss
    atari.c51_loss = lambda log_probs, target: c51_loss(jax.lax.stop_gradient(log_probs), target)
    sac.critic_loss = lambda q1, q2, target: critic_loss(jax.lax.stop_gradient(q1),
                                                         jax.lax.stop_gradient(q2), target)


# name -> (what the README says, the patch)
MUTATIONS: dict[str, tuple[str, Callable[[], None]]] = {
    "shift_actions": ("actions shifted by one step in the replay (each state stored with the "
                      "next step's action)", shift_actions),
    "zero_rewards": ("rewards zeroed when stored", zero_rewards),
    "detach_online": ("the online prediction detached in the RL loss (no RL gradient: C51's "
                      "log-probabilities, the critic's Q values)", detach_online),
}


def run_cell(mutation: str, case: str, cores: queue.Queue) -> dict:
    """One learning test with ``mutation`` applied to the run it starts, on a core of its own
    (two XLA processes sharing 2 cores each run several times slower than on one each)."""
    test = f"tests/test_learning.py::test_agent_learns_far_above_random[{case}]"
    core = cores.get()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test],
                              cwd=ROOT, env=dict(os.environ, MLR_JAX_MUTATION=mutation),
                              capture_output=True, text=True,
                              preexec_fn=lambda: os.sched_setaffinity(0, core))
    finally:
        cores.put(core)
    out = proc.stdout + proc.stderr
    found = re.search(r"final evaluation (-?[0-9.]+)", out)
    if found is None:  # the run itself failed: that is not a measurement
        raise RuntimeError(f"{mutation} {case}: no final evaluation in the test's output:\n{out[-3000:]}")
    return {"mutation": mutation, "case": case, "final": float(found.group(1)),
            "killed": proc.returncode != 0}


def table(cells: list[dict]) -> str:
    """The README's table: final evaluation per mutation and case, and whether the test failed."""
    by = {(c["mutation"], c["case"]): c for c in cells}
    lines = ["| mutation | " + " | ".join(c.replace("toy_", "").replace("-", " ") for c in CASES) + " |",
             "|---|" + "---:|" * len(CASES)]
    for name, (text, _) in MUTATIONS.items():
        row = []
        for case in CASES:
            c = by.get((name, case))
            row.append("not run" if c is None else
                       f"{c['final']:.2f} ({'killed' if c['killed'] else 'SURVIVED'})")
        lines.append(f"| {text} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    readme.write_text(content[:start] + "\n" + text + content[end:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--apply"]:  # the learning test's training run, with a mutation
        name, rest = argv[1], argv[3:] if argv[2:3] == ["--"] else argv[2:]
        if name not in MUTATIONS:
            raise SystemExit(f"unknown mutation {name!r}; expected one of {sorted(MUTATIONS)}")
        MUTATIONS[name][1]()
        from mlr_jax import cli
        return cli.main(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=sorted(MUTATIONS), default=list(MUTATIONS))
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--jobs", type=int, default=2, help="cells run at once (one core each)")
    parser.add_argument("--readme", action="store_true", help="rewrite the README's table")
    args = parser.parse_args(argv)
    cells = [(m, c) for m in args.only for c in args.cases]
    print(f"[mutations] {len(cells)} cells, {args.jobs} at a time", flush=True)
    available = sorted(os.sched_getaffinity(0))
    cores: queue.Queue = queue.Queue()
    for i in range(args.jobs):
        cores.put(set(available[i::args.jobs]))
    results = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for cell in pool.map(lambda mc: run_cell(*mc, cores), cells):
            print(f"[mutations] {cell['mutation']} {cell['case']}: final {cell['final']:.2f}, "
                  f"{'killed' if cell['killed'] else 'SURVIVED'}", flush=True)
            results.append(cell)
    OUT.mkdir(parents=True, exist_ok=True)
    from mlr_jax import host
    record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "cpu_model": host.cpu_model(), "cells": results}
    (OUT / "results.json").write_text(json.dumps(record, indent=1) + "\n")
    text = table(results)
    (OUT / "table.md").write_text(text)
    print(text, end="")
    if args.readme:
        write_readme(text)
    survived = [c for c in results if not c["killed"]]
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
