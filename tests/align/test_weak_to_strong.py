"""Performance gap recovered against hand-computed values."""

import numpy as np
import pytest

from align.weak_to_strong import performance_gap_recovered


@pytest.mark.parametrize(
    "weak, student, strong, expected",
    [
        (0.6, 0.7, 0.8, 0.5),
        (0.6, 0.8, 0.8, 1.0),
        (0.6, 0.6, 0.8, 0.0),
        (0.6, 0.55, 0.8, -0.25),
        (60.0, 90.0, 80.0, 1.5),  # percentages work too; beating the ceiling gives PGR > 1
    ],
)
def test_pgr_by_hand(weak, student, strong, expected):
    assert performance_gap_recovered(weak, student, strong) == pytest.approx(expected)


def test_pgr_elementwise_on_arrays():
    pgr = performance_gap_recovered(np.array([0.5, 0.6]), np.array([0.6, 0.9]), np.array([0.9, 0.7]))
    np.testing.assert_allclose(pgr, [0.25, 3.0])


def test_pgr_rejects_equal_weak_and_strong():
    with pytest.raises(ValueError, match="strong_acc=0.7 equals weak_acc=0.7"):
        performance_gap_recovered(0.7, 0.75, 0.7)


def test_pgr_rejects_nan():
    with pytest.raises(ValueError, match="weak_to_strong_acc=nan is not finite"):
        performance_gap_recovered(0.5, float("nan"), 0.7)
