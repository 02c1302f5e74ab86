"""Property-based tests of the emulators and quantizers (hypothesis).

Exhaustive tests cover every 8-bit posit format and the fraction grids of the log
multipliers; these properties reach the wider formats and arbitrary float32 inputs.
"""


import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import approx
from approx import posit
from quant import quantizers

# Few examples per property keep the suite fast; each example still checks a whole array.
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FINITE = st.floats(-2.0**100, 2.0**100, allow_nan=False, allow_infinity=False, width=32)
NORMAL_POSITIVE = st.floats(2.0**-50, 2.0**50, allow_nan=False, allow_infinity=False, width=32)


@st.composite
def formats_and_patterns(draw, max_fraction_bits=23):
    """A posit format whose values all fit float32 exactly, and a batch of its bit patterns."""
    es = draw(st.integers(0, 4))
    # maxpos = 2**(2**es * (nbits - 2)) must stay below float32's 2**127, and the longest
    # fraction (nbits - 3 - es bits) within float32's 23.
    largest = min(32, 126 // 2**es + 2, max_fraction_bits + 3 + es)
    nbits = draw(st.integers(max(2, es + 2), largest))
    fmt = posit.PositFormat(nbits, es)
    patterns = draw(st.lists(st.integers(0, 2**nbits - 1), min_size=1, max_size=64))
    return fmt, np.asarray(patterns, dtype=np.uint32)


def _is_nar(bits, fmt):
    return bits == np.uint32(1 << (fmt.nbits - 1))


@SETTINGS
@given(formats_and_patterns())
def test_encode_inverts_decode(case):
    fmt, bits = case
    values = posit.decode(jnp.asarray(bits), fmt)
    again = np.asarray(posit.encode(values, fmt))
    np.testing.assert_array_equal(again, bits)


@SETTINGS
@given(st.sampled_from([(8, 0), (8, 2), (16, 1), (32, 2)]), st.lists(FINITE, min_size=2, max_size=64))
def test_encode_is_monotonic(shape, values):
    fmt = posit.PositFormat(*shape)
    x = np.sort(np.asarray(values, dtype=np.float32))
    bits = posit.encode(jnp.asarray(x), fmt)
    # Sorted inputs give non-decreasing posits: no pair steps backwards.
    assert bool(jnp.all(posit.le(bits[:-1], bits[1:], fmt)))


@SETTINGS
@given(st.sampled_from([(8, 0), (8, 1), (16, 1), (16, 2), (32, 2)]), st.data())
def test_mul_add_and_plam_mul_commute(shape, data):
    fmt = posit.PositFormat(*shape)
    patterns = st.lists(st.integers(0, 2**fmt.nbits - 1), min_size=16, max_size=16)
    a = jnp.asarray(np.asarray(data.draw(patterns), dtype=np.uint32))
    b = jnp.asarray(np.asarray(data.draw(patterns), dtype=np.uint32))
    for op in (posit.mul, posit.add, posit.plam_mul):
        np.testing.assert_array_equal(np.asarray(op(a, b, fmt)), np.asarray(op(b, a, fmt)), err_msg=op.__name__)


@SETTINGS
@given(st.sampled_from([(8, 0), (16, 1), (32, 2)]), st.data())
def test_plam_at_most_exact_magnitude(shape, data):
    fmt = posit.PositFormat(*shape)
    patterns = st.lists(st.integers(0, 2**fmt.nbits - 1), min_size=16, max_size=16)
    a = np.asarray(data.draw(patterns), dtype=np.uint32)
    b = np.asarray(data.draw(patterns), dtype=np.uint32)
    plam = np.abs(np.asarray(posit.decode(posit.plam_mul(a, b, fmt), fmt, jnp.float32), dtype=np.float64))
    exact = np.abs(np.asarray(posit.decode(posit.mul(a, b, fmt), fmt, jnp.float32), dtype=np.float64))
    finite = ~(_is_nar(a, fmt) | _is_nar(b, fmt))
    # Before rounding PLAM lies in [8/9, 1] of the exact product. Rounding is monotonic,
    # so the rounded PLAM product stays at or below the rounded exact one.
    assert np.all(plam[finite] <= exact[finite])


@SETTINGS
@given(st.lists(NORMAL_POSITIVE, min_size=1, max_size=32), st.lists(NORMAL_POSITIVE, min_size=1, max_size=32),
       st.integers(1, 23), st.booleans())
def test_mitchell_bounds_sign_and_symmetry(xs, ys, w, negate):
    n = min(len(xs), len(ys))
    a = np.asarray(xs[:n], dtype=np.float32)
    b = np.asarray(ys[:n], dtype=np.float32) * (-1 if negate else 1)
    approximate = np.asarray(approx.mitchell_mul(a, b, w=w), dtype=np.float64)
    exact = a.astype(np.float64) * b.astype(np.float64)
    ratio = approximate / exact
    # Truncating each fraction to w bits costs at most (1 - 2**-w) per operand, and
    # Mitchell's log-domain addition at most a factor 8/9; neither ever rounds up.
    assert np.all(ratio <= 1.0)
    assert np.all(ratio >= 8 / 9 * (1 - 2.0**-w) ** 2 - 1e-7)
    np.testing.assert_array_equal(np.asarray(approx.mitchell_mul(b, a, w=w)), approximate.astype(np.float32))


@SETTINGS
@given(st.lists(FINITE, min_size=1, max_size=64), st.integers(2, 16))
def test_uniform_symmetric_is_idempotent(values, bits):
    w = jnp.asarray(np.asarray(values, dtype=np.float32))
    once = quantizers.uniform_symmetric(w, bits)
    codes_once, _ = quantizers.uniform_symmetric_parts(w, bits)
    codes_twice, _ = quantizers.uniform_symmetric_parts(once, bits)
    # Requantizing lands on the same integer levels; the scale may move by one rounding.
    np.testing.assert_array_equal(np.asarray(codes_twice), np.asarray(codes_once))


@SETTINGS
@given(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=64), st.integers(1, 16))
def test_dorefa_activations_are_idempotent(values, bits):
    x = jnp.asarray(np.asarray(values, dtype=np.float32))
    once = quantizers.dorefa_activations(x, bits)
    np.testing.assert_array_equal(np.asarray(quantizers.dorefa_activations(once, bits)), np.asarray(once))


@SETTINGS
@given(st.lists(FINITE, min_size=1, max_size=64))
def test_binarize_codes_follow_signs(values):
    w = jnp.asarray(np.asarray(values, dtype=np.float32))
    codes, _ = quantizers.binary_parts(w)
    # XLA on CPU reads subnormal inputs as zero, so they take sign(0) = +1.
    host = np.asarray(w)
    expected = np.where((host >= 0) | (np.abs(host) < np.finfo(np.float32).tiny), 1.0, -1.0)
    np.testing.assert_array_equal(np.asarray(codes), expected)


# Magnitudes from 2**-60 up: the mean-absolute scale of smaller tensors can be subnormal,
# and XLA on CPU flushes subnormal results to zero, which zeroes the whole output.
NORMAL_SCALE = st.floats(2.0**-60, 2.0**100, allow_nan=False, width=32)


@SETTINGS
@given(st.lists(st.tuples(NORMAL_SCALE, st.booleans()), min_size=1, max_size=64))
def test_binarize_is_idempotent_with_one_magnitude(pairs):
    w = jnp.asarray(np.asarray([v if positive else -v for v, positive in pairs], dtype=np.float32))
    once = np.asarray(quantizers.binarize(w))
    twice = np.asarray(quantizers.binarize(jnp.asarray(once)))
    np.testing.assert_array_equal(np.sign(once), np.where(np.asarray(w) >= 0, 1.0, -1.0))
    np.testing.assert_array_equal(np.sign(twice), np.sign(once))
    assert len(np.unique(np.abs(once))) == 1
