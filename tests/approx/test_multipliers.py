"""Truncated, DRUM and ILM multipliers against exact integer references."""

import numpy as np
import pytest

import approx
from tests.approx import reference


def normal_pairs(seed, count=3000, spread=60):
    """Random normal float32 pairs of both signs whose products stay inside the normal range."""
    rng = np.random.default_rng(seed)

    def draw():
        fractions = rng.integers(0, 2**23, count).astype(np.float64) / 2**23
        exponents = rng.integers(-spread, spread, count)
        signs = np.where(rng.random(count) < 0.5, -1.0, 1.0)
        return (signs * (1 + fractions) * 2.0**exponents).astype(np.float32)

    return draw(), draw()


def edge_pairs():
    """Products at the top and bottom of the normal range, where rounding can cross it."""
    big = np.float32(np.nextafter(np.float32(2.0**127), np.float32(np.inf)))
    return (
        np.array([2.0**127 * 1.75, 3.4e38, 2.0**-63, 2.0**-100, 1.9999999, big], np.float32),
        np.array([2.0, 1.0, 2.0**-63, 2.0**-27, 2.0**-126, 1.9999999], np.float32),
    )


def check_against(reference_fn, actual_fn, a, b):
    actual = np.asarray(actual_fn(a, b))
    for x, y, z in zip(a, b, actual):
        expected = reference_fn(x, y)
        assert z == expected and np.signbit(z) == np.signbit(np.float32(expected)), (x, y, z, expected)


@pytest.mark.parametrize("iterations", [0, 1, 2, 5])
@pytest.mark.parametrize("w", [23, 12, 6])
def test_ilm_matches_integer_reference(iterations, w):
    a, b = normal_pairs(iterations * 10 + w, count=1500)
    check_against(lambda x, y: reference.ilm(x, y, iterations, w),
                  lambda x, y: approx.ilm_mul(x, y, iterations=iterations, w=w), a, b)


def test_ilm_at_range_edges():
    a, b = edge_pairs()
    for iterations in (0, 2):
        check_against(lambda x, y: reference.ilm(x, y, iterations, 23),
                      lambda x, y: approx.ilm_mul(x, y, iterations=iterations), a, b)


def test_ilm_never_overestimates_and_converges():
    a, b = normal_pairs(7, count=5000, spread=10)
    exact = a.astype(np.float64) * b
    previous = None
    for iterations in (0, 1, 2, 3):
        ratio = np.asarray(approx.ilm_mul(a, b, iterations=iterations), np.float64) / exact
        assert ratio.max() <= 1 + 2**-24  # one float32 rounding above the exact value at most
        if previous is not None:
            assert ratio.min() >= previous.min()
        previous = ratio
    full = np.asarray(approx.ilm_mul(a, b, iterations=23))
    np.testing.assert_array_equal(full, (a * b).astype(np.float32))


@pytest.mark.parametrize("k", [1, 2, 3, 6, 8, 12])
def test_drum_matches_integer_reference(k):
    a, b = normal_pairs(k)
    check_against(lambda x, y: reference.drum(x, y, k), lambda x, y: approx.drum_mul(x, y, k=k), a, b)


def test_drum_sets_lowest_kept_bit():
    x = np.float32(1.0)
    assert float(approx.drum_round(x, k=3)) == 1.25  # 1.00 -> 1.01 in binary
    assert float(approx.drum_round(np.float32(1.75), k=3)) == 1.75  # 1.11 unchanged
    assert float(approx.drum_round(np.float32(1.9), k=2)) == 1.5  # 1.1 kept
    assert float(approx.drum_round(np.float32(-1.9), k=1)) == -1.0


@pytest.mark.parametrize("w", [1, 4, 8, 11, 12, 23])
def test_truncated_matches_integer_reference(w):
    a, b = normal_pairs(100 + w)
    check_against(lambda x, y: reference.truncated(x, y, w),
                  lambda x, y: approx.truncated_mul(x, y, w=w), a, b)


@pytest.mark.parametrize("name,params", [("truncated", {"w": 6}), ("drum", {"k": 6}),
                                         ("ilm", {"iterations": 1})])
def test_special_operands(name, params):
    multiplier = approx.get_multiplier(name, **params)
    specials = np.array([0.0, -0.0, 1e-40, -1e-40, 1.5, -2.0, np.inf, -np.inf, np.nan], np.float32)
    a, b = np.meshgrid(specials, specials)
    out = np.asarray(multiplier(a, b))
    for x, y, z in zip(a.ravel(), b.ravel(), out.ravel()):
        kinds = {reference.classify(x), reference.classify(y)}
        sign = np.signbit(x) != np.signbit(y)
        if "nan" in kinds or kinds == {"inf", "zero"}:
            assert np.isnan(z), (x, y, z)
        elif "inf" in kinds:
            assert np.isinf(z) and np.signbit(z) == sign, (x, y, z)
        elif "zero" in kinds:
            assert z == 0 and np.signbit(z) == sign, (x, y, z)


def test_operand_transforms_keep_specials():
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e-40], np.float32)
    for transform in (lambda x: approx.drum_round(x, k=4), lambda x: approx.truncate_significand(x, w=3)):
        out = np.asarray(transform(specials))
        assert np.isposinf(out[0]) and np.isneginf(out[1]) and np.isnan(out[2])
        assert out[3] == 0 and not np.signbit(out[3])
        assert out[4] == 0 and np.signbit(out[4])
        assert out[5] == 0


@pytest.mark.parametrize(
    "name,params,message",
    [("truncated", {"w": 0}, "w=0"), ("drum", {"k": 25}, "k=25"), ("ilm", {"iterations": -1}, "iterations=-1"),
     ("ilm", {"w": 24}, "w=24"), ("drum", {"bits": 3}, "invalid parameters")],
)
def test_registry_rejects_bad_parameters(name, params, message):
    with pytest.raises(ValueError, match=message):
        approx.get_multiplier(name, **params)


def test_registry_names_and_labels():
    assert approx.multiplier_names() == ("bf16", "drum", "exact", "ilm", "mitchell", "truncated")
    assert approx.get_multiplier("drum", k=6).label == "DRUM-6"
    assert approx.get_multiplier("ilm", iterations=2).label == "ILM-2"
    assert approx.get_multiplier("ilm", iterations=1, w=8).label == "ILM-1-w8"
    assert approx.get_multiplier("truncated", w=7).label == "Trunc-w7"
    assert approx.get_multiplier("mitchell", w=6, unbiased=True).label == "Mitch-w6-unbiased"
