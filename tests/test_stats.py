"""mlr_jax.stats against rliable's own functions on synthetic score matrices: point
estimates exactly, interval endpoints within their Monte-Carlo error."""
import numpy as np
import pytest

from mlr_jax import stats

rliable = pytest.importorskip("rliable", reason="the report extra: pip install 'mlr-jax[report]'")
from rliable import library as rly  # noqa: E402
from rliable import metrics as rmetrics  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")
RLIABLE = {"iqm": rmetrics.aggregate_iqm, "median": rmetrics.aggregate_median,
           "mean": rmetrics.aggregate_mean, "optimality_gap": rmetrics.aggregate_optimality_gap}
REPS = 4_000


def scores(seed, runs=10, tasks=26, shift=0.0):
    """Human-normalised-like scores: skewed, a few above 1, some ties at 0."""
    rng = np.random.default_rng(seed)
    x = rng.gamma(0.8, 0.6, size=(runs, tasks)) + shift
    x[rng.random(x.shape) < 0.05] = 0.0
    return x


def bootstrap_error(samples_std, reps=REPS, their_reps=REPS):
    """Difference allowed between two 2.5% / 97.5% percentiles of bootstrap replicates (ours:
    ``reps``, rliable's: ``their_reps``) of a statistic whose bootstrap distribution has
    standard deviation ``samples_std``. The sampling error of a tail quantile is about
    sqrt(p(1-p)/reps)/density, for a roughly normal distribution 2.2 * std / sqrt(reps) at
    p = 0.025; the two errors add in quadrature, and 4 of them keep a false alarm below 1e-4."""
    return 4 * 2.2 * samples_std * np.sqrt(1 / reps + 1 / their_reps)


@pytest.mark.parametrize("name", sorted(stats.METRICS))
def test_aggregate_intervals_match_rliable(name):
    x = scores(0)
    ours = stats.interval_estimates(x, {name: stats.METRICS[name]}, reps=REPS, seed=1)[name]
    points, cis = rly.get_interval_estimates({"m": x}, lambda s: np.array([RLIABLE[name](s)]),
                                             reps=REPS, random_state=np.random.RandomState(2))
    assert ours["value"] == pytest.approx(float(points["m"][0]), abs=1e-12)
    width = cis["m"][1, 0] - cis["m"][0, 0]  # ~ 4 bootstrap standard deviations
    tol = bootstrap_error(width / 3.92)
    assert ours["low"] == pytest.approx(cis["m"][0, 0], abs=tol)
    assert ours["high"] == pytest.approx(cis["m"][1, 0], abs=tol)
    assert ours["low"] <= ours["value"] <= ours["high"]


def test_performance_profile_matches_rliable():
    x = scores(3)
    taus = np.linspace(0.0, 2.0, 21)
    ours = stats.performance_profile(x, taus, reps=REPS, seed=1)
    points, cis = rly.create_performance_profile({"m": x}, taus, reps=REPS)
    np.testing.assert_allclose(ours["value"], points["m"], atol=1e-12)
    # the fraction above tau is a mean of 260 indicators: its bootstrap std is at most
    # sqrt(0.25 / 260)
    tol = bootstrap_error(np.sqrt(0.25 / x.size))
    np.testing.assert_allclose(ours["low"], cis["m"][0], atol=tol)
    np.testing.assert_allclose(ours["high"], cis["m"][1], atol=tol)


def test_probability_of_improvement_matches_rliable():
    x, y = scores(4, runs=6), scores(5, runs=8, shift=0.15)
    y[:, 0] = np.r_[x[:, 0], x[:2, 0]]  # ties across methods count half
    ours = stats.probability_of_improvement(y, x, reps=REPS, seed=1)
    points, cis = rly.get_interval_estimates({"y,x": (y, x)}, rmetrics.probability_of_improvement,
                                             reps=300)  # rliable's loop: 10 s per 300 here
    assert ours["value"] == pytest.approx(float(points["y,x"]), abs=1e-12)
    tol = bootstrap_error((cis["y,x"][1, 0] - cis["y,x"][0, 0]) / 3.92, their_reps=300)
    assert ours["low"] == pytest.approx(cis["y,x"][0, 0], abs=tol)
    assert ours["high"] == pytest.approx(cis["y,x"][1, 0], abs=tol)
    same = stats.probability_of_improvement(x, x, reps=10)
    assert same["value"] == 0.5


def test_metrics_by_hand_and_bad_input():
    x = np.array([[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]])
    assert stats.iqm(x) == 3.5  # 8 scores, 2 cut at each end: mean of 2..5
    assert stats.median(x) == 3.5 and stats.mean(x) == 3.5
    assert stats.optimality_gap(x) == pytest.approx(1 - 7 / 8)
    assert stats.mean_interval([2.0]) == {"value": 2.0, "low": 2.0, "high": 2.0}
    with pytest.raises(ValueError, match=r"\[runs, tasks\] matrix, got shape \(3,\)"):
        stats.interval_estimates(np.zeros(3))
    with pytest.raises(ValueError, match="same tasks"):
        stats.probability_of_improvement(np.zeros((2, 3)), np.zeros((2, 4)))
