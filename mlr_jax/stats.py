"""Interval estimates for benchmark results, as rliable defines them (Agarwal et al., 2021).

Scores are matrices ``[runs, tasks]`` (runs = seeds; Atari scores human-normalised). The
aggregate metrics (:data:`METRICS`: IQM, median, mean, optimality gap) come with 95%
**stratified bootstrap** percentile intervals: each replicate resamples the runs of every task
independently, with replacement, and recomputes the metric, as rliable's
``get_interval_estimates`` does. Also here: score-distribution performance profiles and the
probability of improvement between two methods, with the same intervals.

Everything is vectorised over replicates (numpy, in chunks), so a 26-game x 10-seed x
2-method report with the default :data:`DEFAULT_REPS` takes seconds; ``tests/test_stats.py``
checks point estimates exactly and intervals statistically against rliable's own functions.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

DEFAULT_REPS = 2_000  # bootstrap replicates; rliable's paper figures use 50,000
CONFIDENCE = 0.95
_CHUNK_ELEMENTS = 4_000_000  # resampled scores held at once


def _flat(x: np.ndarray) -> np.ndarray:
    """``[..., runs, tasks]`` -> ``[..., runs * tasks]``."""
    return x.reshape(*x.shape[:-2], -1)


def mean(x: np.ndarray) -> np.ndarray:
    """Mean of all scores of ``x[..., runs, tasks]``."""
    return _flat(x).mean(axis=-1)


def median(x: np.ndarray) -> np.ndarray:
    """The median over tasks of each task's mean over runs (rliable's ``aggregate_median``)."""
    return np.median(x.mean(axis=-2), axis=-1)


def iqm(x: np.ndarray) -> np.ndarray:
    """Interquartile mean of all scores: ``scipy.stats.trim_mean(x, 0.25)`` of the flattened
    runs x tasks matrix, ``int(0.25 n)`` scores cut at each end."""
    flat = np.sort(_flat(x), axis=-1)
    cut = int(0.25 * flat.shape[-1])
    return flat[..., cut:flat.shape[-1] - cut].mean(axis=-1)


def optimality_gap(x: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """``gamma - mean(min(x, gamma))``: how far the scores fall short of ``gamma``."""
    return gamma - np.minimum(_flat(x), gamma).mean(axis=-1)


METRICS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "iqm": iqm, "median": median, "mean": mean, "optimality_gap": optimality_gap}


def _check(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    x = np.asarray(scores, np.float64)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name} must be a non-empty [runs, tasks] matrix, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _draw(x: np.ndarray, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``reps`` stratified bootstrap replicates ``[reps, runs, tasks]`` of ``x[runs, tasks]``:
    every task's runs drawn with replacement, independently of the other tasks."""
    runs, tasks = x.shape
    return x[rng.integers(0, runs, size=(reps, runs, tasks)), np.arange(tasks)]


def _chunks(reps: int, size: int):
    """Replicate counts adding up to ``reps``, each holding about :data:`_CHUNK_ELEMENTS`
    resampled scores of ``size`` per replicate."""
    step = max(1, _CHUNK_ELEMENTS // size)
    return [min(step, reps - start) for start in range(0, reps, step)]


def _interval(samples: np.ndarray, confidence: float) -> np.ndarray:
    """Percentile interval ``[2, ...]`` of bootstrap ``samples[reps, ...]``."""
    tail = 100 * (1 - confidence) / 2
    return np.percentile(samples, [tail, 100 - tail], axis=0)


def interval_estimates(scores: np.ndarray, metrics: Mapping[str, Callable] | None = None,
                       reps: int = DEFAULT_REPS, confidence: float = CONFIDENCE,
                       seed: int = 0) -> dict[str, dict[str, float]]:
    """Point estimates and stratified-bootstrap percentile intervals of aggregate metrics.

    Args:
      scores: ``[runs, tasks]`` (equal runs per task).
      metrics: name -> vectorised function of ``[..., runs, tasks]`` (default :data:`METRICS`).
      reps: bootstrap replicates. confidence: interval coverage. seed: of the resampling.

    Returns:
      ``{name: {"value", "low", "high"}}``.
    """
    x = _check(scores)
    metrics = METRICS if metrics is None else metrics
    rng = np.random.default_rng(seed)
    samples = {name: [] for name in metrics}
    for r in _chunks(reps, x.size):
        chunk = _draw(x, r, rng)
        for name, fn in metrics.items():
            samples[name].append(fn(chunk))
    out = {}
    for name, fn in metrics.items():
        low, high = _interval(np.concatenate(samples[name]), confidence)
        out[name] = {"value": float(fn(x)), "low": float(low), "high": float(high)}
    return out


def mean_interval(values: np.ndarray, reps: int = DEFAULT_REPS, confidence: float = CONFIDENCE,
                  seed: int = 0) -> dict[str, float]:
    """The mean of ``values`` (one score per seed) with a bootstrap percentile interval over
    seeds (a single seed gives an interval of zero width)."""
    est = interval_estimates(np.asarray(values, np.float64).reshape(-1, 1), {"mean": mean},
                             reps, confidence, seed)
    return est["mean"]


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int = DEFAULT_REPS,
                        confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, np.ndarray]:
    """Score distribution: the fraction of all runs x tasks scores above each ``tau``, with
    stratified-bootstrap intervals (rliable's ``create_performance_profile`` with
    ``use_score_distribution=True``). Returns ``{"value", "low", "high"}``, each ``[taus]``."""
    x = _check(scores)
    taus = np.asarray(taus, np.float64)

    def profile(chunk):
        flat = np.sort(_flat(chunk), axis=-1)
        n = flat.shape[-1]
        above = [n - np.searchsorted(row, taus, side="right") for row in flat.reshape(-1, n)]
        return (np.asarray(above) / n).reshape(*flat.shape[:-1], len(taus))

    rng = np.random.default_rng(seed)
    samples = np.concatenate([profile(_draw(x, r, rng)) for r in _chunks(reps, x.size)])
    low, high = _interval(samples, confidence)
    return {"value": profile(x), "low": low, "high": high}


def _improvement(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """P(X > Y) of ``x[..., m, tasks]`` over ``y[..., n, tasks]``: per task the Mann-Whitney
    statistic (ties count half), averaged over tasks."""
    gt = (x[..., :, None, :] > y[..., None, :, :]).mean(axis=(-3, -2))
    eq = (x[..., :, None, :] == y[..., None, :, :]).mean(axis=(-3, -2))
    return (gt + 0.5 * eq).mean(axis=-1)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = DEFAULT_REPS,
                               confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, float]:
    """P(a run of method X beats a run of method Y on a random task), ``x[m, tasks]`` vs
    ``y[n, tasks]`` on the same tasks, with an interval from resampling the runs of each
    method and task independently (rliable's ``StratifiedIndependentBootstrap``)."""
    x, y = _check(x, "x"), _check(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must cover the same tasks, got {x.shape[1]} and {y.shape[1]}")
    rng = np.random.default_rng(seed)
    samples = [_improvement(_draw(x, r, rng), _draw(y, r, rng))
               for r in _chunks(reps, x.shape[0] * y.shape[0] * x.shape[1])]
    low, high = _interval(np.concatenate(samples), confidence)
    return {"value": float(_improvement(x, y)), "low": float(low), "high": float(high)}
