"""Mitchell's multiplier against an exact rational reference, and its properties."""

import numpy as np
import pytest

from approx import mitchell_mul
from tests.approx import reference

WIDTHS = (23, 12, 8, 6, 4, 2, 1)
SPECIALS = np.array(
    [0.0, -0.0, 1.0, -1.0, 1.5, 1e-45, -1e-45, 1.1754942e-38, 1.17549435e-38, 2.0**-126,
     3.4028235e38, -3.4028235e38, 2.0**127, 2.0**-63, 2.0**64, np.inf, -np.inf, np.nan],
    dtype=np.float32,
)


def random_floats(rng, count):
    """float32 values from random bit patterns (every class) and from around 1."""
    bits = rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32)
    wide = bits.view(np.float32)
    near_one = rng.uniform(-4, 4, count).astype(np.float32)
    return np.concatenate([wide, near_one])


def assert_same_float(actual, expected, context):
    if np.isnan(expected):
        assert np.isnan(actual), context
        return
    assert actual == expected, context
    assert np.signbit(actual) == np.signbit(expected), context


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("w", WIDTHS)
def test_mitchell_matches_rational_reference(w, unbiased):
    rng = np.random.default_rng(w + 100 * unbiased)
    a = random_floats(rng, 1500)
    b = random_floats(rng, 1500)
    actual = np.asarray(mitchell_mul(a, b, w=w, unbiased=unbiased))
    for x, y, z in zip(a, b, actual):
        expected = reference.mitchell(x, y, w, unbiased)
        assert_same_float(z, expected, f"mitchell({x!r}, {y!r}, w={w}, unbiased={unbiased})")


@pytest.mark.parametrize("unbiased", [False, True])
def test_mitchell_special_operands(unbiased):
    a, b = np.meshgrid(SPECIALS, SPECIALS)
    actual = np.asarray(mitchell_mul(a, b, w=6, unbiased=unbiased))
    for x, y, z in zip(a.ravel(), b.ravel(), actual.ravel()):
        assert_same_float(z, reference.mitchell(x, y, 6, unbiased), f"mitchell({x!r}, {y!r})")


def test_mitchell_known_values():
    # 1.5 * 1.5: fractions sum to 1, so the product is 2**1 * (0.5 + 0.5) = 2.
    assert float(mitchell_mul(np.float32(1.5), np.float32(1.5))) == 2.0
    # 1.25 * 1.25 = 2**0 * (1 + 0.5) = 1.5 (exact product 1.5625).
    assert float(mitchell_mul(np.float32(1.25), np.float32(1.25))) == 1.5
    # w = 1 keeps only the first fraction bit: 1.75 -> 1.5.
    assert float(mitchell_mul(np.float32(1.75), np.float32(1.0), w=1)) == 1.5
    # unbiased w = 1 adds 1/4 to each fraction: 1.5 * 1.5 -> 2 * (0.75 + 0.75) = 3.
    assert float(mitchell_mul(np.float32(1.5), np.float32(1.5), w=1, unbiased=True)) == 3.0


def test_mitchell_ratio_bounds_on_normal_range():
    rng = np.random.default_rng(0)
    a = (rng.uniform(1, 2, 20000) * 2.0 ** rng.integers(-60, 60, 20000)).astype(np.float32)
    b = (rng.uniform(1, 2, 20000) * 2.0 ** rng.integers(-60, 60, 20000)).astype(np.float32)
    ratio = np.asarray(mitchell_mul(a, b), np.float64) / (a.astype(np.float64) * b)
    assert ratio.min() >= 8 / 9
    assert ratio.max() <= 1.0
    # The bound is tight: fa = fb = 1/2 reaches 8/9.
    assert float(mitchell_mul(np.float32(1.5), np.float32(3.0))) / 4.5 == pytest.approx(8 / 9)


@pytest.mark.parametrize("w", [23, 6, 2])
def test_power_of_two_operand_gives_exact_truncated_product(w):
    rng = np.random.default_rng(w)
    b = (rng.uniform(1, 2, 500) * 2.0 ** rng.integers(-20, 20, 500)).astype(np.float32)
    b *= np.where(rng.random(500) < 0.5, -1, 1).astype(np.float32)
    for exponent in (-7, 0, 5):
        a = np.float32(2.0**exponent)
        actual = np.asarray(mitchell_mul(a, b, w=w))
        expected = np.array([reference.truncate_fraction(y, w) * 2.0**exponent for y in b], np.float32)
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mitchell_sign_symmetry_and_commutativity(unbiased):
    rng = np.random.default_rng(1)
    a = random_floats(rng, 3000)
    b = random_floats(rng, 3000)
    ab = np.asarray(mitchell_mul(a, b, w=8, unbiased=unbiased))
    ba = np.asarray(mitchell_mul(b, a, w=8, unbiased=unbiased))
    neg = np.asarray(mitchell_mul(-a, b, w=8, unbiased=unbiased))
    np.testing.assert_array_equal(ab.view(np.uint32), ba.view(np.uint32))
    finite = ~np.isnan(ab)
    np.testing.assert_array_equal(neg[finite], -ab[finite])


def test_mitchell_broadcasts_and_keeps_float32():
    out = mitchell_mul(np.ones((3, 1), np.float32), np.ones((1, 4), np.float32), w=4)
    assert out.shape == (3, 4)
    assert out.dtype == np.float32


@pytest.mark.parametrize("w", [0, 24, -1, 6.0, True, "6"])
def test_mitchell_rejects_invalid_width(w):
    with pytest.raises(ValueError, match="w="):
        mitchell_mul(np.float32(1), np.float32(1), w=w)
