"""Proof of learning on the atari toy task (the test is in ``learning_check.py``)."""
import pytest

from learning_check import check_learns, learning_cases

pytestmark = pytest.mark.learning


@learning_cases("atari")
def test_agent_learns_far_above_random(domain, task, aux, threshold, random_mean, tmp_path):
    check_learns(domain, task, aux, threshold, random_mean, tmp_path)
