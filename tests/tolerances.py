"""Tolerances derived from the maths of an update, shared by the equivalence tests."""
import numpy as np


def assert_adam_step_close(actual, desired, lr, name, steps=1):
    """Parameters after ``steps`` Adam steps with a tiny eps (1e-8) taken from gradients that
    agree to float32 rounding: a step is about ``lr * m / sqrt(v)``, so an element whose
    gradient is within rounding of zero may move by up to about ``lr`` differently (a
    sign flip). Allow 1 in 10^3 such elements, bounded by ``2.5 * lr`` per step; all the
    others within 1e-5 absolute + 1e-4 relative."""
    actual, desired = np.asarray(actual), np.asarray(desired)
    diff = np.abs(actual - desired)
    far = diff > 1e-5 + 1e-4 * np.abs(desired)
    assert far.mean() <= 1e-3, f"{name}: {far.sum()} of {far.size} differ, max {diff.max()}"
    assert diff.max() <= 2.5 * lr * steps, f"{name}: max difference {diff.max()} exceeds {steps} step(s)"
