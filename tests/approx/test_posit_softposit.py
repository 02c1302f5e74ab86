"""approx.posit against SoftPosit (the `softposit` package) for posit<8,0>, <16,1> and <32,2>."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import softposit as sp

from approx import posit
from approx.posit import PositFormat

PAIRS = 100_000


class Binding:
    """SoftPosit's functions for one format, on raw bit patterns."""

    def __init__(self, nbits, prefix, value_type, quire_type):
        self.fmt = PositFormat(nbits, {8: 0, 16: 1, 32: 2}[nbits])
        self.prefix = prefix
        self.value_type = value_type
        self.quire_type = quire_type

    def wrap(self, bits):
        value = self.value_type()
        value.v = int(bits)
        return value

    def binary(self, name, a, b):
        function = getattr(sp, f"{self.prefix}_{name}")
        return np.array([function(self.wrap(x), self.wrap(y)).v for x, y in zip(a, b)], np.int64)

    def from_double(self, x):
        convert = getattr(sp, f"convertDoubleToP{self.prefix[1:]}")
        return np.array([convert(float(v)).v for v in x], np.int64)

    def to_double(self, bits):
        convert = getattr(sp, f"convertP{self.prefix[1:]}ToDouble")
        return np.array([convert(self.wrap(v)) for v in bits])

    def dot(self, a, b):
        """Rows [R, K] of patterns -> [R] by SoftPosit's fused dot product on its quire."""
        q = self.prefix.replace("p", "q")
        clear, fdp_add, to_posit = (getattr(sp, f"{q}Clr"), getattr(sp, f"{q}_fdp_add"),
                                    getattr(sp, f"{q}_to_{self.prefix}"))
        out = []
        for row_a, row_b in zip(a, b):
            quire = clear()
            for x, y in zip(row_a, row_b):
                quire = fdp_add(quire, self.wrap(x), self.wrap(y))
            out.append(to_posit(quire).v)
        return np.array(out, np.int64)


BINDINGS = [
    Binding(8, "p8", sp.posit8_t, sp.quire8_t),
    Binding(16, "p16", sp.posit16_t, sp.quire16_t),
    Binding(32, "p32", sp.posit32_t, sp.quire32_t),
]


def as_bits(patterns):
    return jnp.asarray(np.asarray(patterns, np.int64).astype(np.uint32))


def special_patterns(fmt):
    n = fmt.nbits
    one = 1 << (n - 2)
    values = [0, fmt.nar, 1, fmt.maxpos_bits, one, one + 1, one - 1, 2, fmt.maxpos_bits - 1]
    return np.array(sorted({v % 2**n for p in values for v in (p, -p)}), np.int64)


def operands(binding, seed):
    """Random pairs and every pair of special patterns."""
    n = binding.fmt.nbits
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 2**n, PAIRS)
    b = rng.integers(0, 2**n, PAIRS)
    specials = special_patterns(binding.fmt)
    sa, sb = np.meshgrid(specials, specials, indexing="ij")
    return np.concatenate([a, sa.ravel()]), np.concatenate([b, sb.ravel()])


def assert_same(actual, expected, a, b, label):
    actual = np.asarray(actual).astype(np.int64)
    wrong = np.flatnonzero(actual != expected)
    assert wrong.size == 0, (
        f"{label}: {wrong.size} of {actual.size} differ from SoftPosit, e.g. operands "
        f"{[hex(v) for v in a[wrong[:4]]]} {[hex(v) for v in b[wrong[:4]]]}: ours "
        f"{[hex(v) for v in actual[wrong[:4]]]}, SoftPosit {[hex(v) for v in expected[wrong[:4]]]}"
    )


@pytest.mark.parametrize("name", ["mul", "add", "sub"])
@pytest.mark.parametrize("binding", BINDINGS, ids=lambda b: str(b.fmt))
def test_operation_matches_softposit(binding, name):
    a, b = operands(binding, seed=binding.fmt.nbits)
    expected = binding.binary(name, a, b)
    actual = getattr(posit, name)(as_bits(a), as_bits(b), binding.fmt)
    assert_same(actual, expected, a, b, f"{name} {binding.fmt}")


@pytest.mark.parametrize("binding", BINDINGS, ids=lambda b: str(b.fmt))
def test_conversions_match_softposit(binding):
    fmt = binding.fmt
    rng = np.random.default_rng(1)
    patterns = np.concatenate([rng.integers(0, 2**fmt.nbits, PAIRS), special_patterns(fmt)])
    expected = binding.to_double(patterns)
    decoded = np.asarray(posit.decode(as_bits(patterns), fmt))
    # SoftPosit 0.3.4.4 turns NaR into inf for 8 and 16 bits, but the truth table requires NaN.
    nar = patterns == fmt.nar
    assert np.isnan(decoded[nar]).all()
    np.testing.assert_array_equal(decoded[~nar], expected[~nar].astype(np.float32))

    # Every float32 is exact as a double, so SoftPosit's double conversion is the reference.
    x = np.concatenate([
        rng.integers(0, 2**32, PAIRS, dtype=np.uint64).astype(np.uint32).view(np.float32),
        rng.normal(0, 4, PAIRS).astype(np.float32),
        expected[~nar].astype(np.float32),
    ])
    x = x[np.isfinite(x)]
    actual = posit.encode(jnp.asarray(x), fmt)
    assert_same(actual, binding.from_double(x), x.view(np.uint32), x.view(np.uint32), f"encode {fmt}")


@pytest.mark.parametrize("binding", BINDINGS, ids=lambda b: str(b.fmt))
def test_dot_matches_softposit_quire(binding):
    fmt = binding.fmt
    n = fmt.nbits
    rng = np.random.default_rng(2)
    rows, terms = 300, 50
    a = rng.integers(0, 2**n, (rows, terms))
    b = rng.integers(0, 2**n, (rows, terms))
    a[a == fmt.nar] = 1
    b[b == fmt.nar] = 1
    # Values near 1 (small regimes) with cancelling halves, and extreme magnitudes.
    near_one = rng.integers((1 << (n - 2)) - (1 << (n - 5)), (1 << (n - 2)) + (1 << (n - 5)), (100, terms))
    a[:100] = np.where(rng.random((100, terms)) < 0.5, near_one, (-near_one) % 2**n)
    a[100:150, 25:] = a[100:150, :25]
    b[100:150, 25:] = (-b[100:150, :25]) % 2**n
    a[150:160, :2] = fmt.maxpos_bits
    b[150:160, 0], b[150:160, 1] = fmt.maxpos_bits, (-fmt.maxpos_bits) % 2**n
    actual = posit.dot(as_bits(a), as_bits(b), fmt)
    assert_same(actual, binding.dot(a, b), a[:, 0], b[:, 0], f"dot {fmt}")


@pytest.mark.parametrize("binding", BINDINGS, ids=lambda b: str(b.fmt))
def test_float64_encode_matches_softposit(binding):
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(0, 2**64, PAIRS, dtype=np.uint64).view(np.float64),
                        rng.normal(0, 4, PAIRS)])
    x = x[np.isfinite(x)]
    with jax.enable_x64(True):
        actual = posit.encode(jnp.asarray(x, jnp.float64), binding.fmt)
    assert_same(actual, binding.from_double(x), x.view(np.uint64), x.view(np.uint64),
                f"encode float64 {binding.fmt}")
