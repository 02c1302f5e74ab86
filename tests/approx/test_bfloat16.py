"""bfloat16 rounding against ml_dtypes and the bit-level definition; bf16_mul exactness."""

from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

from approx import bf16_mul, bf16_round

SPECIAL_BITS = np.array(
    [0x00000000, 0x80000000, 0x00000001, 0x807FFFFF, 0x00008000, 0x00018000, 0x00400000,
     0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0xFF7F8000, 0x7F7F7FFF, 0x7F800000,
     0xFF800000, 0x7FC00000, 0x7F800001, 0xFF80FFFF, 0x7FBFFFFF],
    dtype=np.uint32,
)


def random_bits(seed, count=400_000):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(0, 2**32, count, dtype=np.uint64).astype(np.uint32), SPECIAL_BITS])


def test_nearest_matches_ml_dtypes():
    x = random_bits(0).view(np.float32)
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it converts NaN
        expected = x.astype(ml_dtypes.bfloat16).astype(np.float32)
    actual = np.asarray(bf16_round(x, mode="nearest"))
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(actual), nan)
    np.testing.assert_array_equal(actual[~nan].view(np.uint32), expected[~nan].view(np.uint32))


def test_truncate_clears_low_half():
    bits = random_bits(1)
    actual = np.asarray(bf16_round(bits.view(np.float32), mode="truncate")).view(np.uint32)
    nan = np.isnan(bits.view(np.float32))
    np.testing.assert_array_equal(actual[~nan], bits[~nan] & 0xFFFF0000)
    assert np.isnan(actual[nan].view(np.float32)).all()


def test_nan_stays_nan_even_with_low_payload():
    x = np.array([0x7F800001, 0xFF800001, 0x7F80FFFF], np.uint32).view(np.float32)
    for mode in ("nearest", "truncate"):
        out = np.asarray(bf16_round(x, mode=mode))
        assert np.isnan(out).all()
        np.testing.assert_array_equal(np.signbit(out), np.signbit(x))


def test_nearest_ties_to_even_and_overflow():
    one_plus_half_ulp = np.uint32(0x3F808000).view(np.float32)  # halfway, kept bit even
    three_halves_ulp = np.uint32(0x3F818000).view(np.float32)  # halfway, kept bit odd
    assert np.asarray(bf16_round(one_plus_half_ulp)).view(np.uint32) == 0x3F800000
    assert np.asarray(bf16_round(three_halves_ulp)).view(np.uint32) == 0x3F820000
    assert np.isposinf(np.asarray(bf16_round(np.float32(3.4028235e38))))
    assert np.asarray(bf16_round(np.float32(3.4028235e38), mode="truncate")) == np.float32(3.38953139e38)


def test_bf16_mul_is_exact_product_of_rounded_operands():
    rng = np.random.default_rng(2)
    a = (rng.standard_normal(50_000) * 2.0 ** rng.integers(-30, 30, 50_000)).astype(np.float32)
    b = (rng.standard_normal(50_000) * 2.0 ** rng.integers(-30, 30, 50_000)).astype(np.float32)
    for mode in ("nearest", "truncate"):
        ra = np.asarray(bf16_round(a, mode=mode), np.float64)
        rb = np.asarray(bf16_round(b, mode=mode), np.float64)
        actual = np.asarray(bf16_mul(a, b, mode=mode), np.float64)
        np.testing.assert_array_equal(actual, ra * rb)
    assert Fraction(float(bf16_mul(np.float32(1.00390625), np.float32(3.0)))) == Fraction(3)


@pytest.mark.parametrize("mode", ["round", "NEAREST", None])
def test_rejects_unknown_mode(mode):
    with pytest.raises(ValueError, match="mode="):
        bf16_round(np.float32(1), mode=mode)
    with pytest.raises(ValueError, match="mode="):
        bf16_mul(np.float32(1), np.float32(1), mode=mode)
