"""A vectorised numpy sum tree: proportional sampling over a fixed number of leaves.

Leaves hold non-negative masses (priorities, or 0/1 validity flags); every internal node
holds the sum of its two children, so sampling a leaf with probability mass / total and
reading prefix sums take ``O(log n)`` numpy operations on whole index arrays.

Layout: a flat float64 array of ``2 * P`` nodes with ``P`` the smallest power of two
``>= size``; the root is node 1, the children of node ``i`` are ``2i`` and ``2i + 1`` and
leaf ``j`` is node ``P + j``. Parents are always recomputed as the exact sum of their
children (never updated by differences), so sums do not drift over millions of updates and
a node is positive exactly when some leaf below it is.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


class SumTree:
    """Sum tree over ``size`` leaves, all zero initially.

    Args:
      size: number of leaves (>= 1).
    """

    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"SumTree size must be >= 1, got {size}")
        self.size = int(size)
        self._leaf0 = 1 << max(0, (self.size - 1).bit_length())  # P: first leaf node
        self._depth = self._leaf0.bit_length() - 1  # levels below the root
        self._nodes = np.zeros(2 * self._leaf0, dtype=np.float64)

    @property
    def total(self) -> float:
        """Sum of all leaves."""
        return float(self._nodes[1])

    @property
    def leaves(self) -> np.ndarray:
        """float64[size] view of the leaf values (read-only use)."""
        return self._nodes[self._leaf0:self._leaf0 + self.size]

    def get(self, index: np.ndarray) -> np.ndarray:
        """Leaf values at ``index`` (int[...]) -> float64[...]."""
        return self._nodes[self._leaf0 + self._check_index(index)]

    def set(self, index: np.ndarray, values: np.ndarray) -> None:
        """Set leaves ``index`` (int[N]) to ``values`` (float[N] or scalar, >= 0).

        With repeated indices the last value wins (numpy assignment order).
        """
        index = self._check_index(np.atleast_1d(index))
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), index.shape)
        if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0.0):
            raise ValueError(f"SumTree values must be finite and >= 0, got min {values.min()}")
        nodes = self._leaf0 + index
        self._nodes[nodes] = values
        for _ in range(self._depth):
            nodes = nodes >> 1
            self._nodes[nodes] = self._nodes[2 * nodes] + self._nodes[2 * nodes + 1]

    def set_only(self, index: np.ndarray, values: np.ndarray) -> None:
        """Leaves ``index`` (int[N]) set to ``values``, every other leaf to 0 (one rebuild of
        all sums: the fast way to set most leaves)."""
        leaves = np.zeros(self.size)
        leaves[self._check_index(np.atleast_1d(index))] = values
        self.set_all(leaves)

    def set_all(self, values: np.ndarray) -> None:
        """Replace every leaf with ``values`` (float[size], >= 0) and rebuild all sums."""
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (self.size,):
            raise ValueError(f"SumTree.set_all expects shape ({self.size},), got {values.shape}")
        if values.size and not (np.all(np.isfinite(values)) and values.min() >= 0.0):
            raise ValueError(f"SumTree values must be finite and >= 0, got min {values.min()}")
        self._nodes[:] = 0.0
        self._nodes[self._leaf0:self._leaf0 + self.size] = values
        lo = self._leaf0
        while lo > 1:
            half = lo // 2
            self._nodes[half:lo] = self._nodes[lo:2 * lo:2] + self._nodes[lo + 1:2 * lo:2]
            lo = half

    def find(self, mass: np.ndarray) -> np.ndarray:
        """Prefix-sum retrieval: for each ``mass`` in ``[0, total)`` the leaf ``j`` with
        ``cumsum[j - 1] <= mass < cumsum[j]`` (int64[...], same shape as ``mass``).

        Only leaves with a positive value are ever returned (a mass that rounding pushes
        past a subtree's sum stays in the positive part of the tree).
        """
        if self.total <= 0.0:
            raise ValueError("SumTree.find on a tree whose total is 0")
        mass = np.array(mass, dtype=np.float64)
        shape = mass.shape
        mass = mass.reshape(-1)
        nodes = np.ones(mass.shape, dtype=np.int64)
        for _ in range(self._depth):
            left = 2 * nodes
            left_sum = self._nodes[left]
            go_right = (mass >= left_sum) & (self._nodes[left + 1] > 0.0)
            mass = np.where(go_right, mass - left_sum, mass)
            nodes = left + go_right
        return (nodes - self._leaf0).reshape(shape)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` leaves drawn i.i.d. with probability value / total -> int64[n]."""
        return self.find(rng.random(n) * self.total)

    def _check_index(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.size):
            raise IndexError(f"SumTree index out of range [0, {self.size}): "
                             f"min {index.min()}, max {index.max()}")
        return index


class LeafUpkeep:
    """When a replay brings its sum trees' leaves up to date.

    Eager (the host draws the batches): at every write, the leaves of the starts it changed.
    Deferred (the devices draw them, :mod:`mlr_jax.device_replay`; the host replay only
    stores): nothing at a write, and every leaf once before the replay's next draw, if it
    ever draws.

    Args:
      eager: which of the two.
      set_leaves: ``set_leaves(starts)`` sets the leaves of the absolute start indices
        ``starts`` (int[N]) or, with None, of every start.
    """

    def __init__(self, eager: bool, set_leaves: Callable[[np.ndarray | None], None]):
        self.eager = bool(eager)
        self._set_leaves = set_leaves
        self._stale = False

    def changed(self, starts: Callable[[], np.ndarray] | None = None) -> None:
        """The starts ``starts()`` (None: every start) may have new leaves."""
        if not self.eager:
            self._stale = True
        else:
            self._set_leaves(None if starts is None else starts())

    def before_draw(self) -> None:
        """Bring a deferred tree up to date (every leaf), if anything changed since."""
        if self._stale:
            self._stale = False
            self._set_leaves(None)
