"""The iterative logarithmic multiplier (ILM) of Babić, Avramović and Bulić (2011).

For integers x = 2**kx + rx and y = 2**ky + ry (kx, ky the positions of the leading
ones), x * y = 2**(kx + ky) + rx * 2**ky + ry * 2**kx + rx * ry. The basic ILM keeps
the first three terms, which cost only shifts and additions, and drops rx * ry. Each
correction iteration approximates the dropped product rx * ry the same way, so with n
iterations

    ilm_0(x, y) = 2**(kx + ky) + rx * 2**ky + ry * 2**kx       (0 if x or y is 0)
    ilm_n(x, y) = ilm_0(x, y) + ilm_{n-1}(rx, ry)

Here x and y are the 24-bit significands of two float32 operands (hidden bit
included), optionally with their fractions first truncated to w bits. The
approximate significand product, below 2**48, is held in two uint32 words
(`approx.wide`) and rounded once to float32, to nearest with ties to even. ILM never overestimates: each iteration
drops a non-negative term.

Truth table (`n` a normal number, `0` a zero or subnormal, sign is XOR):

    | a      | b          | result                                              |
    |--------|------------|-----------------------------------------------------|
    | NaN    | any        | NaN (0x7FC00000)                                    |
    | +-inf  | 0          | NaN                                                 |
    | +-inf  | n or +-inf | +-inf                                               |
    | 0      | 0 or n     | +-0 (subnormal operands are flushed to zero)        |
    | n      | n          | ILM product rounded to float32; exponents above 127 |
    |        |            | give +-inf, below -126 give +-0                     |

The table is symmetric in a and b.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from approx import bits as fb
from approx import wide
from approx.mitchell import apply_special_operands, check_width

MAX_ITERATIONS = 23


def check_iterations(iterations):
    """Raise ValueError unless `iterations` is an int in 0..MAX_ITERATIONS."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not (
        0 <= iterations <= MAX_ITERATIONS
    ):
        raise ValueError(
            f"iterations={iterations!r} is not valid: ILM takes 0..{MAX_ITERATIONS} correction "
            "iterations (23 makes every 24-bit product exact)."
        )


def _leading_one(x):
    """Position of the highest set bit of uint32 x (x > 0), as uint32."""
    return jnp.uint32(31) - lax.clz(x).astype(jnp.uint32)


def _ilm_terms(x, y, iterations):
    """ilm_iterations(x, y) as (hi, lo) for uint32 x, y < 2**24."""
    total = (jnp.zeros_like(x), jnp.zeros_like(x))
    for _ in range(iterations + 1):
        active = (x > 0) & (y > 0)
        kx = _leading_one(jnp.maximum(x, 1))
        ky = _leading_one(jnp.maximum(y, 1))
        rx = x - (jnp.uint32(1) << kx)
        ry = y - (jnp.uint32(1) << ky)

        zero = jnp.zeros_like(x)
        term = wide.shift_left(zero, jnp.ones_like(x), kx + ky)
        term = wide.add(*term, *wide.shift_left(zero, rx, ky))
        term = wide.add(*term, *wide.shift_left(zero, ry, kx))
        term = tuple(jnp.where(active, part, jnp.uint32(0)) for part in term)
        total = wide.add(*total, *term)

        x = jnp.where(active, rx, jnp.uint32(0))
        y = jnp.where(active, ry, jnp.uint32(0))
    return total


def _round_product(hi, lo):
    """Round a significand product P in [2**46, 2**48) to 24 bits.

    Returns (significand uint32 in [2**23, 2**24), exponent increment 0, 1 or 2 as int32).
    """
    top = hi >= jnp.uint32(1 << 15)  # bit 47 of P
    shift_lo = jnp.where(top, jnp.uint32(24), jnp.uint32(23))
    significand = (hi << (jnp.uint32(32) - shift_lo)) | (lo >> shift_lo)
    remainder = lo & ((jnp.uint32(1) << shift_lo) - 1)
    half = jnp.uint32(1) << (shift_lo - 1)
    round_up = (remainder > half) | ((remainder == half) & ((significand & 1) == 1))
    significand = significand + round_up.astype(jnp.uint32)

    increment = top.astype(jnp.int32)
    overflowed = significand == jnp.uint32(1 << 24)
    significand = jnp.where(overflowed, jnp.uint32(1 << 23), significand)
    return significand, increment + overflowed.astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("iterations", "w"))
def _ilm_mul(a, b, *, iterations, w):
    a, b = jnp.broadcast_arrays(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    bits_a, bits_b = fb.to_bits(a), fb.to_bits(b)
    mask = fb.truncation_mask(w)
    significand_a = (fb.fraction(bits_a & mask)) | jnp.uint32(1 << 23)
    significand_b = (fb.fraction(bits_b & mask)) | jnp.uint32(1 << 23)

    hi, lo = _ilm_terms(significand_a, significand_b, iterations)
    significand, increment = _round_product(hi, lo)

    exponent = (
        fb.biased_exponent(bits_a).astype(jnp.int32)
        + fb.biased_exponent(bits_b).astype(jnp.int32)
        - fb.EXPONENT_BIAS
        + increment
    )
    magnitude = (exponent.astype(jnp.uint32) << 23) | (significand & jnp.uint32(fb.FRACTION_MASK))
    magnitude = jnp.where(exponent >= 255, jnp.uint32(fb.INF_BITS), magnitude)
    magnitude = jnp.where(exponent <= 0, jnp.uint32(0), magnitude)

    return fb.from_bits(apply_special_operands(bits_a, bits_b, magnitude))


def ilm_mul(a, b, *, iterations=1, w=23):
    """Multiply float32 arrays elementwise with the iterative logarithmic multiplier.

    Args:
      a, b: float32 arrays of broadcast-compatible shapes.
      iterations: correction iterations after the basic approximation, 0..23.
      w: fraction bits kept of each operand before multiplying, 1..23.

    Returns:
      float32 array of the broadcast shape; special values follow the truth table.
    """
    check_iterations(iterations)
    check_width(w)
    return _ilm_mul(a, b, iterations=iterations, w=w)
