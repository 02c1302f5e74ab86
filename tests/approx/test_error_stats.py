"""Error statistics of multipliers on exhaustive grids and random samples."""

import numpy as np
import pytest

import approx
from approx import error_stats

EDGES = np.linspace(-0.15, 0.15, 61)


def test_exact_multiplier_has_no_error_on_grid():
    stats = error_stats.grid_errors(approx.get_multiplier("exact"), 6, bins=EDGES)
    assert stats["count"] == 2**12
    assert stats["min"] == 0.0
    assert stats["max"] == 0.0


def test_mitchell_grid_reaches_its_bounds():
    stats = error_stats.grid_errors(approx.get_multiplier("mitchell", w=6), 6, bins=EDGES)
    assert stats["min"] == pytest.approx(-1 / 9, abs=1e-7)  # fa = fb = 1/2 is on the grid
    assert stats["max"] == 0.0  # fa = 0 or fb = 0 is exact
    assert sum(stats["histogram"]) == stats["count"]


def test_mitchell_sampled_mean_matches_the_known_value():
    # The mean relative error of Mitchell's product for uniform fractions is about -3.85%.
    stats = error_stats.sampled_errors(approx.get_multiplier("mitchell"), 200_000, seed=0, bins=EDGES)
    assert -0.0395 < stats["mean"] < -0.0375
    assert stats["min"] >= -1 / 9 - 1e-7


def test_unbiased_truncation_centres_the_error():
    biased = error_stats.sampled_errors(approx.get_multiplier("truncated", w=4), 100_000, seed=1, bins=EDGES)
    drum = error_stats.sampled_errors(approx.get_multiplier("drum", k=5), 100_000, seed=1, bins=EDGES)
    assert biased["mean"] < -0.01
    assert abs(drum["mean"]) < 0.002


@pytest.mark.parametrize("bits", [0, 13, 2.0])
def test_grid_rejects_invalid_width(bits):
    with pytest.raises(ValueError, match="grid_bits="):
        error_stats.grid_errors(approx.get_multiplier("exact"), bits, bins=EDGES)
