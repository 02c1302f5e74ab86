"""Posit arithmetic posit<n, es>, emulated bit for bit on uint32 patterns.

A posit<n, es> is an n-bit two's-complement pattern. A negative pattern is the
two's complement of its magnitude. The magnitude bits after the sign bit are:

    | field    | width                   | meaning                                        |
    |----------|-------------------------|------------------------------------------------|
    | regime   | run of r equal bits and | k = r - 1 for a run of 1s, k = -r for 0s;      |
    |          | the opposite bit (or    | useed = 2**(2**es), factor useed**k            |
    |          | the end of the pattern) |                                                |
    | exponent | up to es bits           | e, factor 2**e; bits cut off by the end are 0  |
    | fraction | the remaining bits      | f in [0, 1), factor (1 + f)                    |

    value = (-1)**sign * 2**scale * (1 + f),  scale = k * 2**es + e

Glossary: maxpos = useed**(n - 2) is the largest posit, minpos = 1 / maxpos the smallest
positive one, NaR ("not a real", pattern 1 followed by n - 1 zeros) the single
exception value. Patterns sit in the low n bits of a uint32 with the high bits zero, as
SoftPosit stores them. Posits order like the signed integers of their patterns, with
NaR below every real.

Rounding: every result is the posit nearest to the exact value with ties to the even
pattern, measured on the bit string. The rounding point between two neighbouring
posits is the (n+1)-bit posit between them, so where exponent bits are cut off the
rounding point is their geometric mean. Results never round to 0 or NaR: values
above maxpos give maxpos and non-zero values below minpos give minpos.

Truth table (`x` any real posit, `r` a non-zero real posit, `NaR` the exception value):

    | operation          | operands          | result                                     |
    |--------------------|-------------------|--------------------------------------------|
    | encode(x)          | NaN, +-inf        | NaR                                        |
    | encode(x)          | +-0               | 0                                          |
    | encode(x)          | finite, non-zero  | nearest posit, saturating at +-maxpos and  |
    |                    |                   | +-minpos (subnormal floats included)       |
    | decode(bits)       | NaR               | NaN                                        |
    | decode(bits)       | 0                 | +0                                         |
    | decode(bits)       | r                 | float32: nearest float, ties to even       |
    |                    |                   | (inf above its range, subnormals below);   |
    |                    |                   | float64: exact                             |
    | mul, plam_mul      | NaR and anything  | NaR (NaR wins over 0)                      |
    | mul, plam_mul      | 0 and x           | 0                                          |
    | add, sub           | NaR and anything  | NaR                                        |
    | add                | 0 and x           | x                                          |
    | add                | x and -x          | 0 (posits have a single, unsigned zero)    |
    | neg                | 0, NaR            | 0, NaR                                     |
    | lt, le             | NaR               | NaR is below every real, NaR == NaR        |
    | dot                | any NaR term      | NaR                                        |
    | dot                | otherwise         | the exact sum of the exact products,       |
    |                    |                   | rounded once; an exact 0 sum gives 0       |

PLAM (posit logarithm-approximate multiplication) replaces the product of the
significands by Mitchell's approximation log2(1 + f) ~ f, so the fractions add:

    plam(a, b) = 2**(sa + sb)     * (1 + fa + fb)   if fa + fb < 1
                 2**(sa + sb + 1) * (fa + fb)       otherwise

then one rounding as above. Before rounding 8/9 <= plam(a, b) / (a b) <= 1.

Every function is elementwise (or contracts the last axis, for `dot`), jitted with the
format static, and vmappable. Arithmetic runs on uint32 and int32 only, so it needs no
x64; 64-bit intermediates are uint32 pairs (`approx.wide`).
"""

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from approx import bits as fb
from approx import wide

MIN_NBITS, MAX_NBITS = 2, 32
MIN_ES, MAX_ES = 0, 4
PRODUCTS = ("exact", "plam")


@dataclasses.dataclass(frozen=True)
class PositFormat:
    """The posit<nbits, es> format; hashable, so it can be a static jit argument.

    Attributes:
      nbits: total bits n, 2..32.
      es: maximum exponent bits, 0..4.
    """

    nbits: int
    es: int

    def __post_init__(self):
        for name, value, low, high in (("nbits", self.nbits, MIN_NBITS, MAX_NBITS),
                                       ("es", self.es, MIN_ES, MAX_ES)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(
                    f"{name}={value!r} is not supported: posit formats need an integer "
                    f"{name} in {low}..{high}."
                )

    def __str__(self):
        return f"posit<{self.nbits},{self.es}>"

    @property
    def useed(self) -> int:
        """Factor of one regime step, 2**(2**es)."""
        return 2 ** (2**self.es)

    @property
    def max_scale(self) -> int:
        """log2(maxpos) = (nbits - 2) * 2**es; log2(minpos) is its negative."""
        return (self.nbits - 2) << self.es

    @property
    def maxpos(self) -> float:
        """Largest posit, useed**(nbits - 2), as a Python float."""
        return 2.0**self.max_scale

    @property
    def minpos(self) -> float:
        """Smallest positive posit, 1 / maxpos, as a Python float."""
        return 2.0**-self.max_scale

    @property
    def fraction_bits(self) -> int:
        """Most fraction bits any posit of the format has (at scales 2**-2**es..2**2**es)."""
        return max(0, self.nbits - 3 - self.es)

    @property
    def mask(self) -> int:
        """The low nbits bits set."""
        return (1 << self.nbits) - 1

    @property
    def nar(self) -> int:
        """Bit pattern of NaR, 1 followed by nbits - 1 zeros."""
        return 1 << (self.nbits - 1)

    @property
    def maxpos_bits(self) -> int:
        """Bit pattern of maxpos."""
        return self.nar - 1


def check_format(fmt):
    """Raise ValueError unless `fmt` is a PositFormat."""
    if not isinstance(fmt, PositFormat):
        raise ValueError(f"fmt={fmt!r} is not a PositFormat; build one with PositFormat(nbits, es).")


def check_bits(bits, name="bits"):
    """Return `bits` as a jax array, raising ValueError unless its dtype is uint32."""
    dtype = getattr(bits, "dtype", None)
    if dtype is None or jnp.dtype(dtype) != jnp.uint32:
        raise ValueError(
            f"{name} must hold posit bit patterns as uint32, got "
            f"{'a Python ' + type(bits).__name__ if dtype is None else 'dtype ' + str(dtype)}; "
            f"convert with jnp.asarray({name}, jnp.uint32) or encode floats with posit.encode."
        )
    return jnp.asarray(bits)


# --------------------------------------------------------------------------------------
# Unpacking and packing


class Unpacked(NamedTuple):
    """A posit split into fields; scale and fraction are meaningful for non-zero reals.

    Attributes:
      negative: bool.
      scale: int32, the power of two of the leading significand bit.
      fraction: uint32, the fraction bits after the leading 1, left-aligned.
      zero: bool, the pattern is 0.
      nar: bool, the pattern is NaR.
    """

    negative: jax.Array
    scale: jax.Array
    fraction: jax.Array
    zero: jax.Array
    nar: jax.Array


def unpack(bits, fmt):
    """Split uint32 posit patterns into `Unpacked` fields; bits above nbits are ignored."""
    n, es = fmt.nbits, fmt.es
    bits = bits & jnp.uint32(fmt.mask)
    negative = (bits >> (n - 1)) == 1
    magnitude = jnp.where(negative, (~bits + 1) & jnp.uint32(fmt.mask), bits)

    # Drop the sign bit and left-align, so the regime starts at bit 31.
    body = magnitude << (33 - n)
    ones = (body >> 31) == 1
    run = lax.clz(jnp.where(ones, ~body, body))
    regime = jnp.where(ones, run.astype(jnp.int32) - 1, -run.astype(jnp.int32))
    rest = body << (run + 1)  # 32 or more shifts everything out, as for maxpos

    if es:
        exponent = (rest >> (32 - es)).astype(jnp.int32)
        fraction = rest << es
    else:
        exponent = jnp.int32(0)
        fraction = rest
    scale = regime * (1 << es) + exponent
    return Unpacked(negative, scale, fraction, bits == 0, bits == jnp.uint32(fmt.nar))


def pack(negative, scale, fraction, sticky, fmt):
    """Round (-1)**negative * 2**scale * (1 + fraction / 2**32 + tiny) to a posit pattern.

    `sticky` is true when the exact value has 1 bits below the 32 fraction bits, which
    distinguishes a tie from a value just above it. Rounds to nearest even on the bit
    string and saturates at maxpos and minpos; never returns 0 or NaR.

    Args:
      negative: bool.
      scale: int32, any value (saturation handles the range).
      fraction: uint32, left-aligned.
      sticky: bool.
    """
    n, es = fmt.nbits, fmt.es
    regime = scale >> es  # arithmetic shift: floor division by 2**es
    if es:
        exponent = (scale & ((1 << es) - 1)).astype(jnp.uint32)
        sticky = sticky | ((fraction & jnp.uint32((1 << es) - 1)) != 0)
        tail = (exponent << (32 - es)) | (fraction >> es)
    else:
        tail = fraction

    # Regime of length L (run plus terminating bit) at bits 30 .. 31 - L of `hi`.
    length = jnp.clip(jnp.where(regime >= 0, regime + 2, 1 - regime), 2, n - 1)
    length = length.astype(jnp.uint32)
    run_of_ones = jnp.uint32(0x7FFFFFFF) & ~(jnp.uint32(0xFFFFFFFF) >> length)
    single_one = jnp.uint32(0x80000000) >> length
    hi = jnp.where(regime >= 0, run_of_ones, single_one)

    # The 64-bit string [sign 0][regime][exponent][fraction] as (hi, lo).
    hi = hi | (tail >> (length + 1))
    lo = tail << (31 - length)

    kept = hi >> (32 - n)
    if n < 32:
        guard = (hi >> (31 - n)) & 1
        below = ((hi & jnp.uint32((1 << (31 - n)) - 1)) != 0) | (lo != 0)
    else:
        guard = lo >> 31
        below = (lo & jnp.uint32(0x7FFFFFFF)) != 0
    round_up = (guard == 1) & (below | sticky | ((kept & 1) == 1))
    magnitude = kept + round_up.astype(jnp.uint32)

    magnitude = jnp.where(regime >= n - 2, jnp.uint32(fmt.maxpos_bits), magnitude)
    magnitude = jnp.where(regime <= 1 - n, jnp.uint32(1), magnitude)
    return jnp.where(negative, (~magnitude + 1) & jnp.uint32(fmt.mask), magnitude)


def _with_specials(bits, zero, nar, fmt):
    bits = jnp.where(zero, jnp.uint32(0), bits)
    return jnp.where(nar, jnp.uint32(fmt.nar), bits)


def significand(fraction, fmt):
    """1.fraction as an integer with `fmt.fraction_bits` fraction bits (uint32).

    Exact: a posit never has more than `fmt.fraction_bits` fraction bits.
    """
    width = fmt.fraction_bits
    if width == 0:
        return jnp.ones_like(fraction)
    return jnp.uint32(1 << width) | (fraction >> (32 - width))


# --------------------------------------------------------------------------------------
# Conversion from and to IEEE floats


def _unpack_float32(x):
    """Split float32 values into (negative, scale, fraction, zero, special) for `pack`."""
    bits = fb.to_bits(x)
    negative = fb.sign_bit(bits) == 1
    exponent = fb.biased_exponent(bits).astype(jnp.int32)
    mantissa = fb.fraction(bits)

    # A subnormal F * 2**-149 is normalised by moving its leading 1 to the hidden bit.
    zeros = lax.clz(mantissa)  # 9..32
    subnormal_scale = -149 + 31 - zeros.astype(jnp.int32)
    subnormal_fraction = mantissa << (zeros + 1)

    subnormal = exponent == 0
    scale = jnp.where(subnormal, subnormal_scale, exponent - fb.EXPONENT_BIAS)
    fraction = jnp.where(subnormal, subnormal_fraction, mantissa << 9)
    zero = (bits & jnp.uint32(0x7FFFFFFF)) == 0
    special = exponent == 255
    return negative, scale, fraction, jnp.bool_(False), zero, special


def _unpack_float64(x):
    """As `_unpack_float32` for float64 (x64 on). Subnormal doubles lie below every minpos."""
    bits = lax.bitcast_convert_type(x, jnp.uint64)
    negative = (bits >> 63) == 1
    exponent = ((bits >> 52) & 0x7FF).astype(jnp.int32)
    mantissa = bits & jnp.uint64((1 << 52) - 1)
    scale = jnp.where(exponent == 0, jnp.int32(-1023), exponent - 1023)
    fraction = (mantissa >> 20).astype(jnp.uint32)
    sticky = (mantissa & jnp.uint64((1 << 20) - 1)) != 0
    zero = (bits & jnp.uint64(0x7FFFFFFFFFFFFFFF)) == 0
    special = exponent == 0x7FF
    return negative, scale, fraction, sticky, zero, special


@functools.partial(jax.jit, static_argnames=("fmt",))
def _encode(x, fmt):
    if x.dtype == jnp.float64:
        negative, scale, fraction, sticky, zero, special = _unpack_float64(x)
    else:
        negative, scale, fraction, sticky, zero, special = _unpack_float32(x)
    bits = pack(negative, scale, fraction, sticky, fmt)
    return _with_specials(bits, zero, special, fmt)


def encode(x, fmt):
    """Round floats to the nearest posit<n, es> (ties to even on the bit string).

    Args:
      x: floating array of any shape. float16 and bfloat16 are widened exactly to
        float32; float64 is rounded directly when x64 is on.
      fmt: the target `PositFormat`.

    Returns:
      uint32 array of x's shape with the patterns in the low nbits bits. NaN and +-inf
      give NaR; finite values saturate at +-maxpos and +-minpos, so no non-zero value
      becomes 0.

    NOTE: with x64 off, JAX converts float64 inputs to float32 before this function
    receives them, so such values are rounded twice.
    """
    check_format(fmt)
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"x must be a floating array, got dtype {x.dtype}; cast integers with "
            "x.astype(jnp.float32) first."
        )
    if x.dtype != jnp.float64:
        x = x.astype(jnp.float32)
    return _encode(x, fmt)


def _to_float32(p):
    """Round unpacked non-zero reals to float32 bits, ties to even, with subnormals."""
    # Normal range: drop 9 of the 32 fraction bits with round to nearest even. A carry
    # out of the fraction increments the exponent field, up to inf.
    exponent = jnp.clip(p.scale + fb.EXPONENT_BIAS, 1, 254).astype(jnp.uint32)
    mantissa = p.fraction >> 9
    remainder = p.fraction & 0x1FF
    up = (remainder > 0x100) | ((remainder == 0x100) & ((mantissa & 1) == 1))
    normal = ((exponent << 23) | mantissa) + up.astype(jnp.uint32)

    # Subnormal range: the 32-bit significand 1.fraction[:31] shifted into F * 2**-149.
    shift = jnp.clip(-118 - p.scale, 9, 33).astype(jnp.uint32)
    full = jnp.uint32(0x80000000) | (p.fraction >> 1)
    kept = full >> shift
    guard = (full >> (shift - 1)) & 1
    below = ((full & ((jnp.uint32(1) << (shift - 1)) - 1)) != 0) | ((p.fraction & 1) == 1)
    up = (guard == 1) & (below | ((kept & 1) == 1))
    subnormal = kept + up.astype(jnp.uint32)

    magnitude = jnp.where(p.scale < -126, subnormal, normal)
    magnitude = jnp.where(p.scale > 127, jnp.uint32(fb.INF_BITS), magnitude)
    sign = p.negative.astype(jnp.uint32) << 31
    return magnitude | sign


@functools.partial(jax.jit, static_argnames=("fmt", "dtype"))
def _decode(bits, fmt, dtype):
    p = unpack(bits, fmt)
    if dtype == jnp.float64:
        exponent = (p.scale + 1023).astype(jnp.uint64)
        sign = p.negative.astype(jnp.uint64) << 63
        pattern = sign | (exponent << 52) | (p.fraction.astype(jnp.uint64) << 20)
        value = lax.bitcast_convert_type(pattern, jnp.float64)
    else:
        value = fb.from_bits(_to_float32(p))
    value = jnp.where(p.zero, jnp.zeros((), dtype), value)
    return jnp.where(p.nar, jnp.full((), jnp.nan, dtype), value)


def to_float32(bits, fmt):
    """`decode` to float32 without argument checks, for code that is already traced."""
    return _decode(bits, fmt, jnp.float32)


def from_float32(x, fmt):
    """`encode` of float32 without argument checks, for code that is already traced."""
    return _encode(x.astype(jnp.float32), fmt)


def decode(bits, fmt, dtype=jnp.float32):
    """Convert uint32 posit patterns to floats.

    Args:
      bits: uint32 array of any shape; bits above nbits are ignored.
      fmt: the `PositFormat` of the patterns.
      dtype: jnp.float32 or jnp.float64. float32 gives the nearest float32 with ties
        to even, so posits beyond float32's range become +-inf or round to subnormals
        and zero. float64 is exact for every format and needs x64 on.

    Returns:
      array of `dtype` and the shape of `bits`; NaR gives NaN.
    """
    check_format(fmt)
    bits = check_bits(bits)
    dtype = jnp.dtype(dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.float64)):
        raise ValueError(f"dtype={dtype} is not supported; decode to float32 or float64.")
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("dtype=float64 needs x64; enable it with jax.config.update('jax_enable_x64', True).")
    return _decode(bits, fmt, dtype.type)


# --------------------------------------------------------------------------------------
# Sign, order and the four operations


def _to_signed(bits, fmt):
    """Sign-extend n-bit patterns to int32; this orders posits, NaR lowest."""
    shift = 32 - fmt.nbits
    return lax.bitcast_convert_type(bits << shift, jnp.int32) >> shift


@functools.partial(jax.jit, static_argnames=("fmt",))
def _neg(a, fmt):
    return (~a + 1) & jnp.uint32(fmt.mask)


def neg(a, fmt):
    """Negate posits exactly: [...] uint32 -> [...] uint32; 0 and NaR map to themselves."""
    check_format(fmt)
    return _neg(check_bits(a, "a"), fmt)


def _compare(op):
    @functools.partial(jax.jit, static_argnames=("fmt",))
    def compare(a, b, fmt):
        return op(_to_signed(a & jnp.uint32(fmt.mask), fmt), _to_signed(b & jnp.uint32(fmt.mask), fmt))

    return compare


_lt, _le, _eq = _compare(jnp.less), _compare(jnp.less_equal), _compare(jnp.equal)


def lt(a, b, fmt):
    """a < b elementwise, as bool; NaR is below every real."""
    check_format(fmt)
    return _lt(check_bits(a, "a"), check_bits(b, "b"), fmt)


def le(a, b, fmt):
    """a <= b elementwise, as bool; NaR is below every real and equal to itself."""
    check_format(fmt)
    return _le(check_bits(a, "a"), check_bits(b, "b"), fmt)


def eq(a, b, fmt):
    """a == b elementwise, as bool; NaR equals NaR, as the posit standard orders them."""
    check_format(fmt)
    return _eq(check_bits(a, "a"), check_bits(b, "b"), fmt)


class Product(NamedTuple):
    """An unrounded product: (-1)**negative * significand * 2**(scale - point).

    Attributes:
      negative: bool.
      scale: int32.
      hi, lo: uint32 words of the integer significand.
      point: static int, fraction bits of the significand.
      zero, nar: bool, as in `Unpacked`.
    """

    negative: jax.Array
    scale: jax.Array
    hi: jax.Array
    lo: jax.Array
    point: int
    zero: jax.Array
    nar: jax.Array


def exact_product(pa, pb, fmt):
    """Multiply two unpacked posits exactly; the significand lies in [1, 4) * 2**point."""
    width = fmt.fraction_bits
    sig_a, sig_b = significand(pa.fraction, fmt), significand(pb.fraction, fmt)
    if 2 * width + 2 <= 32:
        hi, lo = jnp.zeros_like(sig_a * sig_b), sig_a * sig_b
    else:
        hi, lo = wide.mul_32x32(sig_a, sig_b)
    return Product(pa.negative ^ pb.negative, pa.scale + pb.scale, hi, lo, 2 * width,
                   pa.zero | pb.zero, pa.nar | pb.nar)


def plam_product(pa, pb, fmt):
    """PLAM's unrounded product: fractions added as fixed point, a carry raises the scale."""
    total = pa.fraction + pb.fraction
    carry = total < pa.fraction
    width = fmt.fraction_bits
    # The sum has at most `width` fraction bits, because each fraction has.
    sig = significand(total, fmt)
    return Product(pa.negative ^ pb.negative, pa.scale + pb.scale + carry.astype(jnp.int32),
                   jnp.zeros_like(sig), sig, width, pa.zero | pb.zero, pa.nar | pb.nar)


def round_product(product, fmt):
    """Round a `Product` to posit patterns, with the truth table's special cases."""
    msb, fraction, sticky = wide.normalize(product.hi, product.lo)
    scale = product.scale + msb - product.point
    bits = pack(product.negative, scale, fraction, sticky, fmt)
    return _with_specials(bits, product.zero, product.nar, fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _mul(a, b, fmt):
    return round_product(exact_product(unpack(a, fmt), unpack(b, fmt), fmt), fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _plam_mul(a, b, fmt):
    return round_product(plam_product(unpack(a, fmt), unpack(b, fmt), fmt), fmt)


def mul(a, b, fmt):
    """Multiply posits, correctly rounded: uint32 [...] x uint32 [...] -> uint32 [...].

    Operands broadcast like `*`.
    """
    check_format(fmt)
    return _mul(check_bits(a, "a"), check_bits(b, "b"), fmt)


def plam_mul(a, b, fmt):
    """Multiply posits with PLAM (Mitchell's log approximation of the significands).

    The unrounded PLAM product is rounded once to nearest even; operands broadcast like
    `*`. See the module docstring for the formula and its error bounds.
    """
    check_format(fmt)
    return _plam_mul(check_bits(a, "a"), check_bits(b, "b"), fmt)


@functools.partial(jax.jit, static_argnames=("fmt",))
def _add(a, b, fmt):
    mask = jnp.uint32(fmt.mask)
    a, b = jnp.broadcast_arrays(a & mask, b & mask)
    pa, pb = unpack(a, fmt), unpack(b, fmt)

    # Posit magnitudes order like their patterns, so the larger operand is found on them.
    magnitude_a = jnp.where(pa.negative, (~a + 1) & mask, a)
    magnitude_b = jnp.where(pb.negative, (~b + 1) & mask, b)
    swap = magnitude_b > magnitude_a
    big = Unpacked(*(jnp.where(swap, y, x) for x, y in zip(pa, pb)))
    small = Unpacked(*(jnp.where(swap, x, y) for x, y in zip(pa, pb)))

    # Significands with the leading 1 at bit 61 of a 64-bit window; the smaller one is
    # shifted right, its lost bits jammed into bit 0. Rounding needs only the parity of
    # 2-bit steps there, which the jam keeps, because results keep at most 30 bits.
    def window(p):
        return jnp.uint32(1 << 29) | (p.fraction >> 3), p.fraction << 29

    big_hi, big_lo = window(big)
    distance = jnp.minimum(big.scale - small.scale, 64)
    small_hi, small_lo, lost = wide.shift_right_sticky(*window(small), distance)
    small_lo = small_lo | lost.astype(jnp.uint32)

    subtract = big.negative != small.negative
    sum_hi, sum_lo = wide.add(big_hi, big_lo, small_hi, small_lo)
    difference_hi, difference_lo = wide.subtract(big_hi, big_lo, small_hi, small_lo)
    hi = jnp.where(subtract, difference_hi, sum_hi)
    lo = jnp.where(subtract, difference_lo, sum_lo)

    msb, fraction, sticky = wide.normalize(hi, lo)
    bits = pack(big.negative, big.scale + msb - 61, fraction, sticky, fmt)
    bits = jnp.where((hi == 0) & (lo == 0), jnp.uint32(0), bits)
    bits = jnp.where(small.zero, jnp.where(swap, b, a), bits)
    return jnp.where(pa.nar | pb.nar, jnp.uint32(fmt.nar), bits)


def add(a, b, fmt):
    """Add posits, correctly rounded: uint32 [...] + uint32 [...] -> uint32 [...]."""
    check_format(fmt)
    return _add(check_bits(a, "a"), check_bits(b, "b"), fmt)


def sub(a, b, fmt):
    """Subtract posits, correctly rounded: a - b, which is a + neg(b) exactly."""
    check_format(fmt)
    return _add(check_bits(a, "a"), _neg(check_bits(b, "b"), fmt), fmt)


# --------------------------------------------------------------------------------------
# Quire: exact sums of products
#
# The quire is a fixed-point number wide enough for every product of two posits, from
# minpos**2 at its lowest bit to 4 * maxpos**2 at its top, plus carry bits. It is held
# as signed 16-bit digits in int32 lanes, value = sum(digit[j] * 2**(16 j + lsb)).
# A block of up to 2**15 - 1 products is summed digit by digit in int32. Each term is
# below 2**16 in magnitude, so the sums cannot overflow. Then carries are propagated,
# which brings every digit but the top one back to 0..2**16 - 1.

DIGIT_BITS = 16
_DIGIT_MASK = (1 << DIGIT_BITS) - 1
BLOCK_TERMS = (1 << 15) - 1
QUIRE_CARRY_BITS = 32


class QuireLayout(NamedTuple):
    """Placement of one format's products in the quire.

    Attributes:
      lsb: power of two of quire bit 0, -2 * max_scale - 2 * fraction_bits.
      digits: number of 16-bit digits, covering products up to 4 * maxpos**2 and
        QUIRE_CARRY_BITS carry bits above them.
    """

    lsb: int
    digits: int


def quire_layout(fmt):
    """Compute the `QuireLayout` of a format."""
    lsb = -2 * fmt.max_scale - 2 * fmt.fraction_bits
    width = 2 * fmt.max_scale + 2 - lsb + QUIRE_CARRY_BITS
    return QuireLayout(lsb, -(-width // DIGIT_BITS))


def product_digits(product, fmt):
    """Place products in the quire: their lowest digit index and signed 16-bit digits.

    Returns:
      index: int32 [...], quire digit of each product's digit 0.
      digits: tuple of int32 [...] arrays, digit i of each product times its sign; 0
        for zero and NaR products.
    """
    layout = quire_layout(fmt)
    position = product.scale - product.point - layout.lsb  # >= 0 for every product
    position = jnp.where(product.zero | product.nar, 0, position)
    index = position >> 4
    offset = (position & 15).astype(jnp.uint32)

    significand_bits = product.point + 2
    count = -(-(significand_bits + 15) // DIGIT_BITS)
    digits = [(product.lo << offset) & _DIGIT_MASK]
    for i in range(1, count):
        _, lo = wide.shift_right(product.hi, product.lo, 16 * i - offset)
        digits.append(lo & _DIGIT_MASK)

    drop = product.zero | product.nar
    signed = []
    for digit in digits:
        digit = digit.astype(jnp.int32)
        digit = jnp.where(product.negative, -digit, digit)
        signed.append(jnp.where(drop, 0, digit))
    return index, tuple(signed)


def accumulate_digits(index, digits, layout, axis):
    """Sum placed products over `axis` into unnormalised quire digits [..., layout.digits].

    The caller keeps at most BLOCK_TERMS products along `axis`.
    """
    slots = jnp.arange(layout.digits, dtype=jnp.int32)
    sum_axis = axis - 1 if axis < 0 else axis  # the slot axis is appended last
    total = 0
    for i, digit in enumerate(digits):
        hit = (jnp.expand_dims(index, -1) + i) == slots
        total = total + jnp.sum(jnp.where(hit, jnp.expand_dims(digit, -1), 0), axis=sum_axis)
    return total


def propagate_carries(quire):
    """Bring digits [..., D] back to 0..2**16 - 1, except the top one, which keeps the sign."""
    count = quire.shape[-1]
    out = []
    carry = jnp.zeros(quire.shape[:-1], jnp.int32)
    for j in range(count):
        value = quire[..., j] + carry
        if j == count - 1:
            out.append(value)
        else:
            out.append(value & _DIGIT_MASK)
            carry = value >> DIGIT_BITS  # arithmetic shift: floor division
    return jnp.stack(out, axis=-1)


def round_quire(quire, nar, fmt):
    """Round normalised quire digits [..., D] to posit patterns [...] in one step."""
    layout = quire_layout(fmt)
    negative = quire[..., -1] < 0
    magnitude = propagate_carries(jnp.where(negative[..., None], -quire, quire))

    slots = jnp.arange(layout.digits, dtype=jnp.int32)
    nonzero = magnitude != 0
    top = jnp.max(jnp.where(nonzero, slots, -1), axis=-1)
    zero = top < 0

    # The leading digit and the two below it (zeros below digit 0), as a 48-bit window.
    padded = jnp.concatenate([jnp.zeros_like(magnitude[..., :2]), magnitude], axis=-1)
    picks = jnp.stack([top + 2, top + 1, top], axis=-1)
    picks = jnp.clip(picks, 0, layout.digits + 1)
    d2, d1, d0 = jnp.moveaxis(jnp.take_along_axis(padded, picks, axis=-1), -1, 0)
    d2, d1, d0 = (d.astype(jnp.uint32) for d in (d2, d1, d0))
    sticky = jnp.any(nonzero & (slots < (top - 2)[..., None]), axis=-1)

    high = (d2 << 16) | d1
    zeros = lax.clz(high)  # 16..31 is impossible: d2 != 0 for a non-zero quire
    shift = zeros + 1
    fraction = (high << shift) | ((d0 << 16) >> (32 - shift))
    sticky = sticky | (((d0 << 16) << shift) != 0)
    scale = layout.lsb + 16 * top + 15 - zeros.astype(jnp.int32)

    bits = pack(negative, scale, fraction, sticky, fmt)
    return _with_specials(bits, zero, nar, fmt)


def make_product(pa, pb, fmt, products):
    """Multiply unpacked operands without rounding, exactly or with PLAM."""
    if products == "exact":
        return exact_product(pa, pb, fmt)
    return plam_product(pa, pb, fmt)


def check_products(products):
    """Raise ValueError unless `products` names a product kind of PRODUCTS."""
    if products not in PRODUCTS:
        raise ValueError(f"products={products!r} is not supported; use one of {PRODUCTS}.")


@functools.partial(jax.jit, static_argnames=("fmt", "products"))
def _dot(a, b, fmt, products):
    a, b = jnp.broadcast_arrays(a, b)
    layout = quire_layout(fmt)
    terms = a.shape[-1]
    blocks = max(1, -(-terms // BLOCK_TERMS))
    padded = blocks * BLOCK_TERMS if blocks > 1 else terms
    # Padding with the posit 0 adds nothing to the sum.
    pad = [(0, 0)] * (a.ndim - 1) + [(0, padded - terms)]
    a, b = jnp.pad(a, pad), jnp.pad(b, pad)
    a = jnp.moveaxis(a.reshape(a.shape[:-1] + (blocks, -1)), -2, 0)
    b = jnp.moveaxis(b.reshape(b.shape[:-1] + (blocks, -1)), -2, 0)

    def add_block(carry, block):
        quire, nar = carry
        product = make_product(unpack(block[0], fmt), unpack(block[1], fmt), fmt, products)
        index, digits = product_digits(product, fmt)
        quire = propagate_carries(quire + accumulate_digits(index, digits, layout, axis=-1))
        return (quire, nar | jnp.any(product.nar, axis=-1)), None

    start = (jnp.zeros(a.shape[1:-1] + (layout.digits,), jnp.int32),
             jnp.zeros(a.shape[1:-1], bool))
    (quire, nar), _ = lax.scan(add_block, start, (a, b))
    return round_quire(quire, nar, fmt)


def dot(a, b, fmt, *, products="exact"):
    """Sum of products over the last axis with the quire: exact, then rounded once.

    Args:
      a, b: uint32 posit patterns [..., K], broadcast against each other.
      fmt: the `PositFormat` of both operands and the result.
      products: "exact" for exact products, "plam" for unrounded PLAM products.

    Returns:
      uint32 [...]: the posit nearest the exact sum; NaR if any term has a NaR operand.

    The sum is exact for any K below 2**31 (QUIRE_CARRY_BITS bits of carry room).
    """
    check_format(fmt)
    check_products(products)
    a, b = check_bits(a, "a"), check_bits(b, "b")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"a and b need a last axis to sum over, got shapes {a.shape} and {b.shape}.")
    return _dot(a, b, fmt, products)
