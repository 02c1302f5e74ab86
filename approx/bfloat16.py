"""bfloat16 rounding and multiplication, emulated on float32 bit patterns.

bfloat16 keeps the float32 sign, all 8 exponent bits and the top 7 fraction bits, so a
bfloat16 value is a float32 whose low 16 bits are zero. Rounding acts on those low
16 bits alone.

Truth table for `bf16_round(x, mode=...)`, on the float32 bit pattern of x:

    | x                  | "nearest" (round half to even)        | "truncate" (toward zero) |
    |--------------------|---------------------------------------|--------------------------|
    | NaN                | quiet NaN of the same sign            | same                     |
    | +-inf              | +-inf                                 | +-inf                    |
    | +-0                | +-0                                   | +-0                      |
    | subnormal          | rounded like any other value (kept)   | low 16 bits cleared      |
    | finite, above the  | +-inf (round to nearest overflows)    | +-largest bfloat16       |
    | largest bfloat16   |                                       |                          |
    | any other finite   | nearest bfloat16, ties to even        | low 16 bits cleared      |

`bf16_mul` rounds both operands to bfloat16 and multiplies them in float32. Two 8-bit
significands give a product of at most 16 significant bits, so the float32 product is
exact unless it leaves the normal float32 range: then it overflows to inf or, because
XLA on CPU and GPU flushes subnormal results to zero, underflows to 0.
"""

import functools

import jax
import jax.numpy as jnp

from approx import bits as fb

ROUNDING_MODES = ("nearest", "truncate")


def check_mode(mode):
    """Raise ValueError unless `mode` is one of ROUNDING_MODES."""
    if mode not in ROUNDING_MODES:
        raise ValueError(
            f"mode={mode!r} is not a bfloat16 rounding mode; use one of {ROUNDING_MODES}."
        )


def _round_bits(bits, mode):
    if mode == "nearest":
        # Adding 0x7FFF rounds a lower half above 0x8000 up; the kept bit's parity breaks ties.
        lsb = (bits >> jnp.uint32(16)) & jnp.uint32(1)
        rounded = (bits + jnp.uint32(0x7FFF) + lsb) & jnp.uint32(0xFFFF0000)
    else:
        rounded = bits & jnp.uint32(0xFFFF0000)

    # A NaN whose payload sits in the low 16 bits would become inf; force the quiet bit.
    quiet_nan = (bits | jnp.uint32(0x00400000)) & jnp.uint32(0xFFFF0000)
    return jnp.where(fb.is_nan_bits(bits), quiet_nan, rounded)


@functools.partial(jax.jit, static_argnames=("mode",))
def _bf16_round(x, *, mode):
    return fb.from_bits(_round_bits(fb.to_bits(x), mode))


def bf16_round(x, *, mode="nearest"):
    """Round float32 values to bfloat16 and return them as float32.

    Args:
      x: float32 array of any shape.
      mode: "nearest" (round half to even) or "truncate" (round toward zero).

    Returns:
      float32 array of the same shape whose values are exactly representable in bfloat16.
    """
    check_mode(mode)
    return _bf16_round(x, mode=mode)


@functools.partial(jax.jit, static_argnames=("mode",))
def _bf16_mul(a, b, *, mode):
    return _bf16_round(a, mode=mode) * _bf16_round(b, mode=mode)


def bf16_mul(a, b, *, mode="nearest"):
    """Multiply elementwise after rounding both float32 operands to bfloat16.

    Args:
      a, b: float32 arrays of broadcast-compatible shapes.
      mode: rounding of the operands, "nearest" or "truncate".

    Returns:
      float32 array of the broadcast shape holding the exact product of the rounded
      operands (see the module docstring for overflow and underflow).
    """
    check_mode(mode)
    return _bf16_mul(a, b, mode=mode)
