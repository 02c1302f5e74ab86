"""64-bit unsigned arithmetic on pairs of uint32 words, for code that must run with x64 off.

A 64-bit value is the pair (hi, lo) of uint32 arrays, value = hi * 2**32 + lo. Every
helper is elementwise, broadcasts like `jnp` operators and is jit-friendly.

Shift amounts are uint32 arrays or Python ints. The helpers rely on XLA's definition of
shifts by the bit width or more: a logical shift by 32 or more gives 0 on every
backend. A negative amount cast to uint32 is at least 2**31, so it gives 0 too.
"""

import jax.numpy as jnp
from jax import lax

_LOW16 = 0xFFFF


def u32(x):
    """Cast to uint32 (an int32 amount of -1 becomes 0xFFFFFFFF, a shift to 0)."""
    return jnp.asarray(x).astype(jnp.uint32)


def mul_32x32(a, b):
    """Full 64-bit product of two uint32 arrays, as (hi, lo)."""
    a_lo, a_hi = a & _LOW16, a >> 16
    b_lo, b_hi = b & _LOW16, b >> 16
    low = a_lo * b_lo
    cross1 = a_lo * b_hi
    cross2 = a_hi * b_lo
    high = a_hi * b_hi

    # Sum of the middle column: at most 3 * (2**16 - 1), so 18 bits wide.
    middle = (low >> 16) + (cross1 & _LOW16) + (cross2 & _LOW16)
    lo = (low & _LOW16) | (middle << 16)
    hi = high + (cross1 >> 16) + (cross2 >> 16) + (middle >> 16)
    return hi, lo


def shift_left(hi, lo, amount):
    """(hi, lo) << amount for amount in 0..64; bits above bit 63 are dropped."""
    amount = u32(amount)
    new_hi = (hi << amount) | (lo >> (32 - amount)) | (lo << (amount - 32))
    return new_hi, lo << amount


def shift_right(hi, lo, amount):
    """(hi, lo) >> amount for amount in 0..64 (logical)."""
    amount = u32(amount)
    new_lo = (lo >> amount) | (hi << (32 - amount)) | (hi >> (amount - 32))
    return hi >> amount, new_lo


def shift_right_sticky(hi, lo, amount):
    """(hi, lo) >> amount, and whether any 1 bit was shifted out (bool)."""
    new_hi, new_lo = shift_right(hi, lo, amount)
    back_hi, back_lo = shift_left(new_hi, new_lo, amount)
    return new_hi, new_lo, (back_hi != hi) | (back_lo != lo)


def add(a_hi, a_lo, b_hi, b_lo):
    """(a + b) mod 2**64."""
    lo = a_lo + b_lo
    carry = (lo < a_lo).astype(jnp.uint32)
    return a_hi + b_hi + carry, lo


def subtract(a_hi, a_lo, b_hi, b_lo):
    """(a - b) mod 2**64."""
    borrow = (a_lo < b_lo).astype(jnp.uint32)
    return a_hi - b_hi - borrow, a_lo - b_lo


def count_leading_zeros(hi, lo):
    """Leading zero bits of the 64-bit value, 0..64, as uint32."""
    return jnp.where(hi != 0, lax.clz(hi), 32 + lax.clz(lo)).astype(jnp.uint32)


def normalize(hi, lo):
    """Split a non-zero 64-bit value into its leading one and what follows it.

    Returns:
      msb: int32 position of the leading one, 0..63.
      fraction: uint32, the 32 bits after the leading one, left-aligned.
      sticky: bool, whether any 1 bit follows those 32.
    """
    zeros = count_leading_zeros(hi, lo)
    frac_hi, frac_lo = shift_left(hi, lo, zeros + 1)
    msb = 63 - zeros.astype(jnp.int32)
    return msb, frac_hi, frac_lo != 0
