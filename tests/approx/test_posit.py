"""approx.posit against the exact rational model in posit_reference, exhaustively where small."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from approx import posit
from approx.posit import PositFormat
from tests.approx import posit_reference as ref

EIGHT_BIT = [PositFormat(8, es) for es in range(5)]
SMALL = [PositFormat(n, es) for n in (2, 3, 5) for es in (0, 1, 4)]


def all_pairs(n):
    a, b = np.meshgrid(np.arange(2**n), np.arange(2**n), indexing="ij")
    return a.ravel(), b.ravel()


def as_bits(patterns):
    return jnp.asarray(np.asarray(patterns, np.int64).astype(np.uint32))


def assert_patterns(actual, expected, a, b, label):
    actual = np.asarray(actual).astype(np.int64)
    wrong = np.flatnonzero(actual != expected)
    assert wrong.size == 0, (
        f"{label}: {wrong.size} wrong, e.g. operands {a[wrong[:5]]} {b[wrong[:5]]} gave "
        f"{actual[wrong[:5]]}, expected {expected[wrong[:5]]}"
    )


# --------------------------------------------------------------------------------------
# Format and argument checks


def test_format_properties():
    fmt = PositFormat(16, 1)
    assert (fmt.useed, fmt.max_scale, fmt.maxpos, fmt.minpos) == (4, 28, 2.0**28, 2.0**-28)
    assert (fmt.nar, fmt.maxpos_bits, fmt.fraction_bits) == (0x8000, 0x7FFF, 12)
    assert str(fmt) == "posit<16,1>"
    assert PositFormat(32, 4).maxpos == 2.0**480


@pytest.mark.parametrize("nbits, es, message", [
    (1, 0, "nbits=1"), (33, 2, "nbits=33"), (8, -1, "es=-1"), (8, 5, "es=5"),
    (8.0, 0, "nbits=8.0"), (True, 0, "nbits=True"),
])
def test_format_rejects_out_of_range(nbits, es, message):
    with pytest.raises(ValueError, match=message):
        PositFormat(nbits, es)


@pytest.mark.parametrize("bad", [np.array([1, 2], np.int32), jnp.ones(2), 7])
def test_non_uint32_bits_are_rejected(bad):
    fmt = PositFormat(8, 0)
    good = jnp.zeros(2, jnp.uint32)
    with pytest.raises(ValueError, match="uint32"):
        posit.decode(bad, fmt)
    with pytest.raises(ValueError, match="must hold posit bit patterns as uint32"):
        posit.mul(good, bad, fmt)
    with pytest.raises(ValueError, match="uint32"):
        posit.dot(bad, good, fmt)


def test_other_bad_arguments_are_rejected():
    fmt = PositFormat(8, 0)
    bits = jnp.zeros(3, jnp.uint32)
    with pytest.raises(ValueError, match="PositFormat"):
        posit.decode(bits, (8, 0))
    with pytest.raises(ValueError, match="dtype=int32"):
        posit.decode(bits, fmt, dtype=jnp.int32)
    with pytest.raises(ValueError, match="floating"):
        posit.encode(jnp.arange(3), fmt)
    with pytest.raises(ValueError, match="products='log'"):
        posit.dot(bits, bits, fmt, products="log")
    with pytest.raises(ValueError, match="last axis"):
        posit.dot(bits[0], bits[0], fmt)


# --------------------------------------------------------------------------------------
# Decoding and encoding


@pytest.mark.parametrize("fmt", SMALL + EIGHT_BIT + [PositFormat(12, 2), PositFormat(12, 4)], ids=str)
def test_decode_every_pattern(fmt):
    n = fmt.nbits
    patterns = np.arange(2**n)
    values = ref.decode_values(n, fmt.es)
    expected = np.array([np.nan if v is None else float(v) for v in values])
    with jax.enable_x64(True):
        exact = np.asarray(posit.decode(as_bits(patterns), fmt, dtype=jnp.float64))
    np.testing.assert_array_equal(exact, expected)

    # float32: one rounding of the exact double, which numpy does correctly.
    rounded = np.asarray(posit.decode(as_bits(patterns), fmt))
    with np.errstate(over="ignore"):  # posit<12,4> reaches beyond float32
        np.testing.assert_array_equal(rounded, expected.astype(np.float32))


def test_decode_rounds_wide_formats_to_float32():
    fmt = PositFormat(32, 3)
    rng = np.random.default_rng(0)
    patterns = np.concatenate([rng.integers(0, 2**32, 20_000), [1, 2**31 - 1, 2**31 + 1, 2**32 - 1]])
    with jax.enable_x64(True):
        exact = np.asarray(posit.decode(as_bits(patterns), fmt, dtype=jnp.float64))
    rounded = np.asarray(posit.decode(as_bits(patterns), fmt))
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(rounded, exact.astype(np.float32))
    # posit<32,3> reaches beyond float32 at both ends.
    assert np.isinf(rounded).any()
    assert (rounded == 0).any()


def float_inputs(fmt, rng):
    """float32 values for encode: (n+2)-bit posits (values, rounding points and between),
    their float32 neighbours, special values and random bit patterns."""
    # Patterns of min(n, 12) + 2 bits: for wider formats these are a sample of the posits.
    wider = [v for v in ref.decode_values(min(fmt.nbits, 12) + 2, fmt.es) if v is not None]
    with np.errstate(over="ignore"):
        candidates = np.array([float(v) for v in wider], np.float32)
    exact = [bool(np.isfinite(c)) and Fraction(float(c)) == v for c, v in zip(candidates, wider)]
    candidates = candidates[exact]
    up = np.nextafter(candidates, np.float32(np.inf))
    down = np.nextafter(candidates, np.float32(-np.inf))
    with np.errstate(over="ignore"):  # maxpos * 3 may pass float32's range: inf is fine
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754942e-38,
                             3.4028235e38, -3.4028235e38, fmt.maxpos * 3, fmt.minpos / 3], np.float32)
    random = rng.integers(0, 2**32, 20_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([candidates, up, down, specials, random])


def reference_encode(x, fmt):
    exponent = max(149, (fmt.nbits + 1) * 2**fmt.es) + 1
    rounder = ref.Rounder(fmt.nbits, fmt.es, exponent)
    numerators = np.empty(x.shape, dtype=object)
    for i, value in enumerate(x):
        numerators[i] = None if not np.isfinite(value) else int(Fraction(float(value)) * 2**exponent)
    return rounder(numerators)


# The reference tabulates every posit, so it stops at 16 bits; SoftPosit covers 32.
@pytest.mark.parametrize("fmt", SMALL + EIGHT_BIT + [PositFormat(12, 4), PositFormat(16, 1)], ids=str)
def test_encode_float32_against_reference(fmt):
    x = float_inputs(fmt, np.random.default_rng(fmt.nbits * 10 + fmt.es))
    expected = reference_encode(x, fmt)
    assert_patterns(posit.encode(jnp.asarray(x), fmt), expected, x, x, f"encode {fmt}")


@pytest.mark.parametrize("fmt", [PositFormat(8, 2), PositFormat(16, 1)], ids=str)
def test_encode_float64_rounds_once(fmt):
    rng = np.random.default_rng(fmt.nbits)
    # Doubles just off the rounding points would round wrongly if they went through float32.
    points = [v for v in ref.decode_values(fmt.nbits + 1, fmt.es)[1::2] if v is not None][:2000]
    near = np.array([float(v) for v in points])
    x = np.concatenate([near, np.nextafter(near, np.inf), np.nextafter(near, -np.inf),
                        rng.integers(0, 2**64, 20_000, dtype=np.uint64).view(np.float64)])
    exponent = 1074 + 10
    rounder = ref.Rounder(fmt.nbits, fmt.es, exponent)
    numerators = np.array([None if not np.isfinite(v) else int(Fraction(float(v)) * 2**exponent) for v in x],
                          dtype=object)
    with jax.enable_x64(True):
        actual = posit.encode(jnp.asarray(x, jnp.float64), fmt)
    assert_patterns(actual, rounder(numerators), x, x, f"encode float64 {fmt}")


def test_encode_saturates_and_maps_specials():
    fmt = PositFormat(16, 1)
    x = jnp.array([1e30, -1e30, 1e-30, -1e-30, 0.0, -0.0, np.nan, np.inf, -np.inf], jnp.float32)
    expected = [0x7FFF, 0x8001, 0x0001, 0xFFFF, 0, 0, 0x8000, 0x8000, 0x8000]
    assert np.asarray(posit.encode(x, fmt)).tolist() == expected


# --------------------------------------------------------------------------------------
# The four operations, every pair of every small format


def reference_operation(name, n, es, a, b):
    rounder = ref.Rounder(n, es, ref.product_exponent(n, es))
    if name == "mul":
        return rounder(ref.exact_products(n, es, a, b))
    if name == "plam_mul":
        return rounder(ref.plam_products(n, es, a, b))
    if name == "add":
        return rounder(ref.exact_sums(n, es, a, b))
    negated = (-b) % 2**n
    return rounder(ref.exact_sums(n, es, a, negated))


@pytest.mark.parametrize("name", ["mul", "plam_mul", "add", "sub"])
@pytest.mark.parametrize("fmt", SMALL + EIGHT_BIT, ids=str)
def test_operation_every_pair(fmt, name):
    a, b = all_pairs(fmt.nbits)
    expected = reference_operation(name, fmt.nbits, fmt.es, a, b)
    actual = getattr(posit, name)(as_bits(a), as_bits(b), fmt)
    assert_patterns(actual, expected, a, b, f"{name} {fmt}")


@pytest.mark.parametrize("name", ["mul", "plam_mul", "add"])
@pytest.mark.parametrize("fmt", [PositFormat(12, 3), PositFormat(16, 1), PositFormat(16, 4)], ids=str)
def test_operation_random_wide_pairs(fmt, name):
    rng = np.random.default_rng(fmt.nbits + fmt.es)
    a = rng.integers(0, 2**fmt.nbits, 30_000)
    b = rng.integers(0, 2**fmt.nbits, 30_000)
    expected = reference_operation(name, fmt.nbits, fmt.es, a, b)
    actual = getattr(posit, name)(as_bits(a), as_bits(b), fmt)
    assert_patterns(actual, expected, a, b, f"{name} {fmt}")


@pytest.mark.parametrize("fmt", EIGHT_BIT[:3], ids=str)
def test_neg_and_order_every_pair(fmt):
    n = fmt.nbits
    a, b = all_pairs(n)
    values = ref.decode_values(n, fmt.es)
    low = Fraction(-(2**400))  # NaR orders below every real
    key = np.array([low if v is None else v for v in values], dtype=object)
    np.testing.assert_array_equal(np.asarray(posit.lt(as_bits(a), as_bits(b), fmt)), key[a] < key[b])
    np.testing.assert_array_equal(np.asarray(posit.le(as_bits(a), as_bits(b), fmt)), key[a] <= key[b])
    np.testing.assert_array_equal(np.asarray(posit.eq(as_bits(a), as_bits(b), fmt)), key[a] == key[b])

    negated = np.asarray(posit.neg(as_bits(np.arange(2**n)), fmt)).astype(np.int64)
    for pattern, result in enumerate(negated):
        value = values[pattern]
        assert values[result] == (None if value is None else -value)


def test_plam_known_values():
    fmt = PositFormat(16, 1)
    one_and_half = posit.encode(jnp.float32(1.5), fmt)
    # fa + fb = 1 carries into the scale: 2**1 * (0.5 + 0.5) = 2 (exact 2.25).
    assert float(posit.decode(posit.plam_mul(one_and_half, one_and_half, fmt), fmt)) == 2.0
    x = posit.encode(jnp.float32(1.25), fmt)
    assert float(posit.decode(posit.plam_mul(x, x, fmt), fmt)) == 1.5
    nar = jnp.uint32(fmt.nar)
    assert int(posit.plam_mul(nar, jnp.uint32(0), fmt)) == fmt.nar
    assert int(posit.plam_mul(x, jnp.uint32(0), fmt)) == 0


@pytest.mark.parametrize("fmt", [PositFormat(8, 0), PositFormat(16, 1), PositFormat(32, 2)], ids=str)
def test_plam_unrounded_within_mitchell_bounds(fmt):
    rng = np.random.default_rng(fmt.nbits)
    a = rng.integers(1, 2**fmt.nbits, 100_000)
    b = rng.integers(1, 2**fmt.nbits, 100_000)
    real = (a != fmt.nar) & (b != fmt.nar)
    a, b = a[real], b[real]
    pa = posit.unpack(as_bits(a), fmt)
    pb = posit.unpack(as_bits(b), fmt)
    plam = posit.plam_product(pa, pb, fmt)
    exact = posit.exact_product(pa, pb, fmt)

    def magnitude(product):
        significand = np.asarray(product.hi).astype(np.float64) * 2.0**32 + np.asarray(product.lo)
        return significand * 2.0 ** (np.asarray(product.scale).astype(np.float64) - product.point)

    ratio = magnitude(plam) / magnitude(exact)
    assert ratio.max() <= 1.0
    assert ratio.min() >= 8 / 9
    assert ratio.min() < 8 / 9 + 1e-3  # the worst case, fa = fb = 1/2, is sampled
    np.testing.assert_array_equal(np.asarray(plam.negative), np.asarray(exact.negative))


# --------------------------------------------------------------------------------------
# The quire


def reference_dot(fmt, a, b, products="exact"):
    """Rows of pattern arrays [R, K] -> patterns [R] by exact integer sums."""
    n, es = fmt.nbits, fmt.es
    make = ref.exact_products if products == "exact" else ref.plam_products
    terms = make(n, es, a, b)
    nar = np.array([any(t is None for t in row) for row in terms])
    sums = np.array([0 if bad else sum(row) for bad, row in zip(nar, terms)], dtype=object)
    sums = np.where(nar, None, sums)
    return ref.Rounder(n, es, ref.product_exponent(n, es))(sums)


@pytest.mark.parametrize("products", ["exact", "plam"])
@pytest.mark.parametrize("fmt", EIGHT_BIT + [PositFormat(5, 1), PositFormat(12, 3)], ids=str)
def test_dot_matches_exact_sum(fmt, products):
    rng = np.random.default_rng(fmt.es)
    n = fmt.nbits
    a = rng.integers(0, 2**n, (400, 37))
    b = rng.integers(0, 2**n, (400, 37))
    # Rows without NaR, and rows of x and -x products that cancel to a small remainder.
    a[:300][a[:300] == fmt.nar] = 1
    b[:300][b[:300] == fmt.nar] = 1
    a[300:350, 18:36] = a[300:350, :18]
    b[300:350, 18:36] = (-b[300:350, :18]) % 2**n
    actual = posit.dot(as_bits(a), as_bits(b), fmt, products=products)
    expected = reference_dot(fmt, a, b, products)
    assert_patterns(actual, expected, a, b, f"dot {fmt} {products}")


def test_dot_extreme_terms_in_widest_quire():
    fmt = PositFormat(32, 4)
    maxpos, minpos = fmt.maxpos_bits, 1
    neg = lambda p: (-p) % 2**32  # noqa: E731
    one = 0x40000000
    a = np.array([
        [maxpos, maxpos, minpos, 0],          # maxpos**2 - maxpos**2 + minpos**2
        [maxpos, minpos, neg(maxpos), 0],     # maxpos**2 + minpos**2 - maxpos**2 ... via order
        [minpos, minpos, minpos, minpos],     # 4 minpos**2, below minpos: saturates
        [one, one, one, 0],
    ])
    b = np.array([
        [maxpos, neg(maxpos), minpos, 0],
        [maxpos, minpos, maxpos, 0],
        [minpos, minpos, minpos, minpos],
        [one, one, neg(one), 0],
    ])
    actual = np.asarray(posit.dot(as_bits(a), as_bits(b), fmt)).tolist()
    assert actual == [minpos, minpos, minpos, one]


def test_dot_sums_more_terms_than_one_block():
    fmt = PositFormat(16, 1)
    terms = 2 * posit.BLOCK_TERMS + 5
    ones = posit.encode(jnp.ones(terms), fmt)
    total = posit.decode(posit.dot(ones, ones, fmt), fmt)
    assert float(total) == float(posit.decode(posit.encode(jnp.float32(terms), fmt), fmt))

    # A huge term, many small ones, then the huge one taken away: only an exact
    # accumulator keeps the small ones.
    big = posit.encode(jnp.float32(2.0**20), fmt)
    a = jnp.concatenate([big[None], ones, big[None]])
    b = jnp.concatenate([big[None], ones, posit.neg(big, fmt)[None]])
    assert float(posit.decode(posit.dot(a, b, fmt), fmt)) == float(posit.decode(posit.encode(jnp.float32(terms), fmt), fmt))


# --------------------------------------------------------------------------------------
# Transformations


def test_functions_vmap_and_do_not_recompile():
    fmt = PositFormat(16, 1)
    rng = np.random.default_rng(3)
    a = as_bits(rng.integers(0, 2**16, (6, 10)))
    b = as_bits(rng.integers(0, 2**16, (6, 10)))
    np.testing.assert_array_equal(jax.vmap(lambda x, y: posit.mul(x, y, fmt))(a, b), posit.mul(a, b, fmt))
    np.testing.assert_array_equal(jax.vmap(lambda x, y: posit.dot(x, y, fmt))(a, b), posit.dot(a, b, fmt))

    posit.add(a, b, fmt)
    size = posit._add._cache_size()
    posit.add(b, a, PositFormat(16, 1))
    assert posit._add._cache_size() == size
