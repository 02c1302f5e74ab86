"""Mitchell's logarithmic multiplier on float32, with fractions truncated to w bits (Mitch-w).

Mitchell (1962) approximates log2(1 + f) by f, so a product becomes an addition of
logarithms. For normal operands a = 2**ea (1 + fa) and b = 2**eb (1 + fb), with each
fraction truncated to its top w bits (Mitch-w):

    mitchell(a, b) = 2**(ea + eb)     * (1 + fa + fb)   if fa + fb < 1
                     2**(ea + eb + 1) * (fa + fb)       otherwise

The sum of the exponent and fraction fields read as one integer carries from the
fraction into the exponent exactly when fa + fb >= 1, so the product's bit pattern is
bits(a) + bits(b) - bits(1.0) on the masked magnitudes. The result needs no rounding:
the truncated fractions have at most 23 bits and so does their sum.

With `unbiased=True` each truncated fraction gets 2**-(w + 1) added (half of the dropped
range), which centres the truncation error. The two halves sum to 2**-w, which fits in
the 23-bit fraction field for every w in 1..23.

Truth table (`x` any value, `n` a normal number, `0` a zero or subnormal, sign is XOR):

    | a         | b          | result                                          |
    |-----------|------------|-------------------------------------------------|
    | NaN       | x          | NaN (0x7FC00000, the canonical quiet NaN)       |
    | x         | NaN        | NaN                                             |
    | +-inf     | 0          | NaN                                             |
    | 0         | +-inf      | NaN                                             |
    | +-inf     | n or +-inf | +-inf                                           |
    | n         | +-inf      | +-inf                                           |
    | 0         | 0 or n     | +-0 (subnormal operands are flushed to zero)    |
    | n         | 0          | +-0                                             |
    | n         | n          | Mitchell product; exponent above 127 gives      |
    |           |            | +-inf, exponent below -126 gives +-0            |

Relative error for normal operands with w = 23 lies in [-1/9, 0]: the product is never
larger than the exact one and is at least 8/9 of it (worst at fa = fb = 1/2).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from approx import bits as fb

QUIET_NAN_BITS = 0x7FC00000

# Unbiased log magnitude: (E - 127) * 2**23 + F for a normal number, as int32.
# Normal operands lie in [-126 * 2**23, 128 * 2**23); two of them sum inside int32.
_MIN_NORMAL_LOG = -126 << fb.FRACTION_BITS
_MAX_LOG = 128 << fb.FRACTION_BITS  # log of the first value past the normal range


def check_width(w):
    """Raise ValueError unless `w` is a Python int in 1..23 (fraction bits kept)."""
    if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= 23:
        raise ValueError(
            f"w={w!r} is not a valid fraction width: Mitch-w keeps w fraction bits of each "
            "float32 operand, so w must be an integer in 1..23."
        )


def unbiased_offset(w, unbiased):
    """Integer added to the sum of two truncated fractions: 2**-w in units of 2**-23, or 0."""
    return (1 << (fb.FRACTION_BITS - w)) if unbiased else 0


def encode_log(x, w):
    """Split float32 `x` into (log, sign) for Mitchell products.

    Returns:
      log: int32, (E - 127) * 2**23 + F with F truncated to its top w bits. Meaningful
        only for normal numbers; callers mask zeros, subnormals, infinities and NaNs.
      sign: uint32, the sign bit in place (0 or 0x80000000).
    """
    bits = fb.to_bits(x)
    magnitude = bits & fb.truncation_mask(w) & jnp.uint32(0x7FFFFFFF)
    log = lax.bitcast_convert_type(magnitude, jnp.int32) - jnp.int32(fb.ONE_BITS)
    sign = bits & jnp.uint32(fb.SIGN_MASK)
    return log, sign


def combine_logs(log_a, log_b, offset):
    """Magnitude bit pattern (int32) of the Mitchell product of two normal numbers.

    The exponent range is checked on the unbiased sum, before the bias is added back,
    so no intermediate leaves int32: overflow saturates to the bits of inf and
    underflow flushes to 0.
    """
    total = log_a + log_b + jnp.int32(offset)
    underflow = total < jnp.int32(_MIN_NORMAL_LOG)
    magnitude = jnp.minimum(total, jnp.int32(_MAX_LOG)) + jnp.int32(fb.ONE_BITS)
    return jnp.where(underflow, jnp.int32(0), magnitude)


@functools.partial(jax.jit, static_argnames=("w", "unbiased"))
def _mitchell_mul(a, b, *, w, unbiased):
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    bits_a, bits_b = fb.to_bits(a), fb.to_bits(b)

    log_a, _ = encode_log(a, w)
    log_b, _ = encode_log(b, w)
    magnitude = combine_logs(log_a, log_b, unbiased_offset(w, unbiased))
    magnitude = lax.bitcast_convert_type(magnitude, jnp.uint32)

    return fb.from_bits(apply_special_operands(bits_a, bits_b, magnitude))


def apply_special_operands(bits_a, bits_b, magnitude):
    """Product bit patterns (uint32) from the magnitude for two normal operands.

    Applies the truth table shared by the emulated multipliers: NaN operands and
    inf * 0 give the quiet NaN, inf * (normal or inf) gives inf, zero and subnormal
    operands give 0, and the sign is the XOR of the operands' signs.
    """
    zero_a = fb.is_zero_or_subnormal_bits(bits_a)
    zero_b = fb.is_zero_or_subnormal_bits(bits_b)
    inf_a, inf_b = fb.is_inf_bits(bits_a), fb.is_inf_bits(bits_b)
    nan = fb.is_nan_bits(bits_a) | fb.is_nan_bits(bits_b) | (inf_a & zero_b) | (zero_a & inf_b)

    magnitude = jnp.where(zero_a | zero_b, jnp.uint32(0), magnitude)
    magnitude = jnp.where(inf_a | inf_b, jnp.uint32(fb.INF_BITS), magnitude)
    sign = (bits_a ^ bits_b) & jnp.uint32(fb.SIGN_MASK)
    return jnp.where(nan, jnp.uint32(QUIET_NAN_BITS), magnitude | sign)


def mitchell_mul(a, b, *, w=23, unbiased=False):
    """Multiply float32 arrays elementwise with Mitchell's logarithmic multiplier.

    Args:
      a, b: float32 arrays (or scalars) of broadcast-compatible shapes.
      w: fraction bits kept of each operand, 1..23; 23 is classic Mitchell.
      unbiased: add 2**-(w + 1) to each truncated fraction.

    Returns:
      float32 array of the broadcast shape; special values follow the module's truth table.
    """
    check_width(w)
    return _mitchell_mul(a, b, w=w, unbiased=bool(unbiased))
