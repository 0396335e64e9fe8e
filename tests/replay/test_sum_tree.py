"""SumTree: totals, prefix-sum retrieval vs numpy cumsum, sampling frequencies."""
import numpy as np
import pytest
from scipy import stats

from mlr_jax.replay.sum_tree import SumTree


@pytest.mark.parametrize("size", [1, 5, 8, 37])
def test_totals_and_leaves_match_numpy(size):
    rng = np.random.default_rng(size)
    tree = SumTree(size)
    reference = np.zeros(size)
    for _ in range(20):
        idx = rng.integers(0, size, rng.integers(1, 6))
        values = rng.random(idx.size) * (rng.random(idx.size) > 0.3)
        tree.set(idx, values)
        for i, v in zip(idx, values):  # last write wins, like the tree
            reference[i] = v
        np.testing.assert_allclose(tree.leaves, reference)
        np.testing.assert_allclose(tree.total, reference.sum(), rtol=1e-12)
    np.testing.assert_allclose(tree.get(np.arange(size)), reference)


def test_find_matches_cumsum_searchsorted():
    rng = np.random.default_rng(0)
    values = rng.random(37) * (rng.random(37) > 0.4)  # zeros included
    tree = SumTree(37)
    tree.set(np.arange(37), values)
    cumsum = np.cumsum(values)
    mass = np.concatenate([rng.random(500) * cumsum[-1], [0.0]])
    expected = np.searchsorted(cumsum, mass, side="right")
    np.testing.assert_array_equal(tree.find(mass), expected)
    assert np.all(values[tree.find(mass)] > 0)


def test_find_never_returns_zero_leaf_at_total():
    tree = SumTree(6)
    tree.set(np.arange(6), np.array([0.0, 0.3, 0.0, 0.7, 0.0, 0.0]))
    # masses at and past the top of the range still land on a positive leaf
    total = tree.total
    leaves = tree.find(np.array([total, total * (1 + 1e-12), np.nextafter(total, 0)]))
    np.testing.assert_array_equal(leaves, [3, 3, 3])


def test_set_all_rebuilds_same_tree_as_incremental_sets():
    rng = np.random.default_rng(1)
    values = rng.random(13)
    a, b = SumTree(13), SumTree(13)
    a.set_all(values)
    for i in rng.permutation(13):
        b.set(np.array([i]), values[i])
    np.testing.assert_allclose(a._nodes, b._nodes, rtol=1e-12)
    a.set_all(np.zeros(13))
    assert a.total == 0.0
    b.set_only(np.array([2, 7]), np.array([0.5, 3.0]))  # the other leaves drop to 0
    a.set(np.array([2, 7]), np.array([0.5, 3.0]))
    np.testing.assert_allclose(b._nodes, a._nodes, rtol=1e-12)


def test_sampling_frequencies_proportional_to_values():
    rng = np.random.default_rng(2)
    values = np.array([1.0, 0.0, 2.0, 4.0, 0.5, 0.0, 3.0])
    tree = SumTree(values.size)
    tree.set(np.arange(values.size), values)
    n = 40_000
    counts = np.bincount(tree.sample(n, rng), minlength=values.size)
    assert counts[values == 0].sum() == 0
    positive = values > 0
    _, pvalue = stats.chisquare(counts[positive], n * values[positive] / values.sum())
    assert pvalue > 1e-3


def test_rejects_bad_input():
    tree = SumTree(4)
    with pytest.raises(IndexError, match="out of range"):
        tree.set(np.array([4]), 1.0)
    with pytest.raises(ValueError, match=">= 0"):
        tree.set(np.array([0]), -1.0)
    with pytest.raises(ValueError, match="total is 0"):
        tree.find(np.array([0.0]))
