"""Scores: the paper's reference numbers, human normalisation and aggregate metrics.

The reference numbers (human, random and every method of the paper's Tables 1 and 2) live in
``mlr_jax/data/reference_scores.json``, package data that installs with the library
(``experiments/reference_scores.json`` links to it); :func:`reference_scores` is the one
loader of that file.
Aggregates over many runs, with intervals, are :mod:`mlr_jax.stats` and :mod:`mlr_jax.report`.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
from typing import Any, Sequence

import numpy as np

from mlr_jax.names import close_matches

REFERENCE_PATH = importlib.resources.files("mlr_jax") / "data" / "reference_scores.json"
# The methods of the paper's tables that mlr-jax trains, per domain (SPR: Atari's Table 1).
PAPER_METHODS = {"atari": ("Baseline", "MLR", "SPR"), "dmc": ("Baseline", "MLR")}
# The paper's name for the method each ``aux`` setting trains.
AUX_METHODS = {"mlr": "MLR", "none": "Baseline", "spr": "SPR"}
_BENCHMARKS = {("atari", "100k"): "atari100k", ("dmc", "100k"): "dmc100k", ("dmc", "500k"): "dmc500k"}


@functools.lru_cache(maxsize=1)
def _load_reference() -> dict[str, Any]:
    if not REFERENCE_PATH.is_file():
        raise FileNotFoundError(
            f"reference scores not found at {REFERENCE_PATH}; they are package data of mlr_jax "
            "(mlr_jax/data/reference_scores.json): reinstall the package")
    return json.loads(REFERENCE_PATH.read_text())


def paper_method(aux: str) -> str:
    """The paper's name (``"MLR"``, ``"Baseline"``, ``"SPR"``) for the method an ``aux``
    setting trains.

    Raises:
      ValueError: an ``aux`` the paper has no numbers for, named with close matches.
    """
    if aux not in AUX_METHODS:
        raise ValueError(f"aux={aux!r} has no paper method; known: {sorted(AUX_METHODS)}"
                         + close_matches(aux, list(AUX_METHODS)))
    return AUX_METHODS[aux]


def reference_scores() -> dict[str, Any]:
    """The paper's reference table (a fresh copy; see experiments/README.md for the layout)."""
    return copy.deepcopy(_load_reference())


def benchmark_key(domain: str, budget: str) -> str | None:
    """The reference table of a benchmark (``"atari100k"``, ``"dmc100k"``, ``"dmc500k"``), or
    None for a budget the paper does not report."""
    return _BENCHMARKS.get((domain, budget))


def _benchmark(domain: str, budget: str) -> dict[str, Any]:
    key = _BENCHMARKS.get((domain, budget))
    if key is None:
        raise ValueError(f"no reference table for domain={domain!r}, budget={budget!r}; "
                         f"expected one of {sorted(_BENCHMARKS)}")
    return _load_reference()[key]


def _entry(table: dict[str, Any], name: str) -> dict[str, Any]:
    if name not in table:
        raise ValueError(f"no reference scores for {name!r}" + close_matches(name, list(table)))
    return table[name]


def human_normalized(game: str, score: float | np.ndarray) -> float | np.ndarray:
    """``(score - random) / (human - random)`` for an Atari-100k game (0 = random, 1 = human)."""
    entry = _entry(_benchmark("atari", "100k")["games"], game)
    return (score - entry["random"]) / (entry["human"] - entry["random"])


def _as_scores(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("cannot aggregate an empty list of scores")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"scores must be finite, got {x[~np.isfinite(x)][:5]}")
    return x


def paper_reference(domain: str, name: str, budget: str = "100k") -> dict[str, dict[str, float | None]]:
    """The paper's numbers for one game/task: ``{method: {mean, std}}`` for the methods of
    :data:`PAPER_METHODS` (Atari: Baseline, MLR and SPR; DMC: Baseline and MLR).

    Atari-100k reports means only (``std`` is None).
    """
    bench = _benchmark(domain, budget)
    if domain == "atari":
        game = _entry(bench["games"], name)
        return {m: {"mean": game[m], "std": None} for m in PAPER_METHODS[domain]}
    task = _entry(bench["tasks"], name)
    return {m: dict(task[m]) for m in PAPER_METHODS[domain]}


def summarize_scores(domain: str, name: str, scores: Sequence[float], budget: str = "100k") -> dict[str, Any]:
    """Statistics of final evaluation episode scores, with the paper's numbers beside them.

    Args:
      domain: ``"atari"`` or ``"dmc"``.
      name: game or task, e.g. ``"ms_pacman"`` / ``"cartpole_swingup"``.
      scores: raw episode returns of the final evaluation.
      budget: ``"100k"`` or (DMC only) ``"500k"``: which paper table to quote.

    Returns:
      JSON-ready dict: n, mean, std (population, ddof 0), median, min, max, scores; where the
      paper reports the game/task at this budget (:func:`has_reference`), for Atari also
      ``human_normalized`` (of the mean), and ``paper``: :func:`paper_reference`.
    """
    x = _as_scores(scores)
    summary: dict[str, Any] = {
        "domain": domain, "name": name, "budget": budget, "n": int(x.size),
        "mean": float(x.mean()), "std": float(x.std()), "median": float(np.median(x)),
        "min": float(x.min()), "max": float(x.max()), "scores": x.tolist(),
    }
    if has_reference(domain, name, budget):
        if domain == "atari":
            summary["human_normalized"] = float(human_normalized(name, summary["mean"]))
        summary["paper"] = paper_reference(domain, name, budget)
    return summary


PRESET_NOTES = {
    "smoke": "a smoke run: a tiny network trained for a few hundred steps, Atari episodes "
             "capped at 400 agent steps, to check that everything runs; its score means "
             "nothing and the paper has no number to compare it with",
    "toy": "a toy task of the learning tests (mlr_jax.envs.toy), not a benchmark game; the "
           "paper has no number for it",
    "cpu": "the cpu preset's reduced sizes on a real task (benchmarks/learning), not the "
           "paper's setting; compare with the random policy, not with the paper",
}


def preset_note(preset: str) -> dict[str, str]:
    """What ``final_eval.json`` says about the preset a run came from: ``{"preset": ...}``,
    plus a ``"note"`` why the score is not comparable with the paper's unless it is the
    ``"paper"`` preset."""
    return {"preset": preset, **({"note": PRESET_NOTES[preset]} if preset in PRESET_NOTES else {})}


def has_reference(domain: str, name: str, budget: str = "100k") -> bool:
    """Whether the paper reports ``name`` at ``budget`` (its 26 games and 6 tasks; not e.g. a
    smoke run's budget or another envpool task)."""
    key = _BENCHMARKS.get((domain, budget))
    table = _load_reference()[key]["games" if domain == "atari" else "tasks"] if key else {}
    return name in table
