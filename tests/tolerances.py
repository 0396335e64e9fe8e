"""Tolerances derived from the maths of an update, shared by the equivalence tests."""
import numpy as np

# Losses and gradient norms of the same update computed in another reduction order (split
# over devices, another XLA optimisation level or CPU): means over a batch and sums of
# squares over ~1e5 gradient elements in float32 (eps 6e-8) agree to about sqrt(N) * eps,
# i.e. 1e-5 relative; measured up to 1.3e-5 (DMC critic at LLVM -O0). A real defect moves
# them by percent, not by 1e-4.
METRIC_RTOL = 1e-4


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
