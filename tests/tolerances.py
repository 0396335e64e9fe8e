"""Tolerances derived from the maths of an update, shared by the equivalence tests."""
import numpy as np

# Losses and gradient norms of the same update computed in another reduction order (split
# over devices, another XLA optimisation level or CPU): means over a batch and sums of
# squares over ~1e5 gradient elements in float32 (eps 6e-8) agree to about sqrt(N) * eps,
# i.e. 1e-5 relative; measured up to 1.3e-5 (DMC critic at LLVM -O0). A real defect moves
# them by percent, not by 1e-4.
METRIC_RTOL = 1e-4


def assert_adam_step_close(actual, desired, lr, name):
    """Parameters (and Adam's moments) after ONE Adam step from the same state, taken from
    gradients that agree to float32 rounding.

    A step is ``lr * m / (sqrt(v) + eps)``. With the DMC agents' eps 1e-8 an element whose
    gradient is within rounding of zero may move by up to about ``lr`` differently (a sign
    flip): the step is bounded, so by at most ``2.5 * lr`` whatever the CPU. Such an element
    needs ``|g| < dg``, with ``dg`` about ``sqrt(K) * 6e-8`` of the gradient's scale for
    reductions over K ~ 1e4 terms, i.e. ~1e-5 of it: for gradients spread over their scale
    that is about 1e-5 of the elements. The bound allows 1e-3 (100x). Every other element
    agrees within 1e-5 absolute + 1e-4 relative (``METRIC_RTOL``'s rounding).

    The bound holds for one step only: after a sign flip the next gradients differ by what
    the lr-sized parameter change does to them, which is not rounding. So the equivalence
    tests start each compared step from the same state. (The Atari agent's eps 1.5e-4 keeps
    a rounding-level ``dg`` to ``lr * dg / eps``, so its chained steps stay within rounding.)"""
    actual, desired = np.asarray(actual), np.asarray(desired)
    diff = np.abs(actual - desired)
    far = diff > 1e-5 + METRIC_RTOL * np.abs(desired)
    assert far.mean() <= 1e-3, f"{name}: {far.sum()} of {far.size} differ, max {diff.max()}"
    assert diff.max() <= 2.5 * lr, f"{name}: max difference {diff.max()} exceeds one step"
