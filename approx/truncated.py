"""Multipliers that shorten each significand, then multiply exactly: truncation and DRUM.

Both act on each operand alone and leave the product to an ordinary float32 multiply,
so contractions with them run as native matmuls on the shortened operands.

Truncated-significand multiplication keeps the top `w` of the 23 fraction bits of each
operand. Two significands of w + 1 bits give a product of at most 2w + 2 bits, which
float32 holds exactly for w <= 11; for larger w the float32 multiply rounds it to
nearest even.

DRUM-k (Hashemi, Bahar and Reda, "DRUM: A Dynamic Range Unbiased Multiplier for
Approximate Applications", ICCAD 2015) keeps k bits from the leading one of each
operand and sets the lowest kept bit to 1, which centres the truncation error. For a
normalised significand 1.f the leading one is the hidden bit, so DRUM-k keeps the top
k - 1 fraction bits and sets the last of them to 1. Products of two k-bit significands
are exact in float32 for k <= 12.

Truth table of both operand transforms (`x` a float32):

    | x                   | result                                           |
    |---------------------|--------------------------------------------------|
    | NaN, +-inf          | unchanged (the fraction of inf must stay zero)   |
    | +-0, subnormal      | +-0 (flushed, as XLA flushes them in products)   |
    | normal              | fraction shortened as above, sign and exponent   |
    |                     | unchanged                                        |

The multiply then follows IEEE float32 with subnormal results flushed to zero by XLA on
CPU and GPU; DRUM's forced bit never carries into the exponent.
"""

import functools

import jax
import jax.numpy as jnp

from approx import bits as fb


def check_fraction_bits(w, name="w", low=1, high=23):
    """Raise ValueError unless `w` is a Python int in low..high."""
    if isinstance(w, bool) or not isinstance(w, int) or not low <= w <= high:
        raise ValueError(f"{name}={w!r} is not valid: it must be an integer in {low}..{high}.")


def _flush_and_keep_specials(bits, shortened):
    zero = fb.is_zero_or_subnormal_bits(bits)
    special = fb.biased_exponent(bits) == 255
    signed_zero = bits & jnp.uint32(fb.SIGN_MASK)
    result = jnp.where(zero, signed_zero, shortened)
    return jnp.where(special, bits, result)


@functools.partial(jax.jit, static_argnames=("w",))
def _truncate_significand(x, *, w):
    bits = fb.to_bits(x)
    return fb.from_bits(_flush_and_keep_specials(bits, bits & fb.truncation_mask(w)))


def truncate_significand(x, *, w):
    """Cut the fraction of each float32 to its top `w` bits (toward zero); shape unchanged."""
    check_fraction_bits(w)
    return _truncate_significand(x, w=w)


def truncated_mul(a, b, *, w):
    """Multiply elementwise after cutting both fractions to `w` bits; float32 out."""
    return truncate_significand(a, w=w) * truncate_significand(b, w=w)


@functools.partial(jax.jit, static_argnames=("k",))
def _drum_round(x, *, k):
    bits = fb.to_bits(x)
    shortened = bits & fb.truncation_mask(k - 1) if k > 1 else bits & jnp.uint32(0xFF800000)
    if k > 1:
        # The lowest kept bit is fraction bit k - 1 counted from the top.
        shortened = shortened | jnp.uint32(1 << (fb.FRACTION_BITS - (k - 1)))
    return fb.from_bits(_flush_and_keep_specials(bits, shortened))


def drum_round(x, *, k):
    """Keep k significant bits of each float32 and set the lowest kept one (DRUM); shape unchanged.

    k counts the hidden bit. With k = 1 the only kept bit is the hidden one, so every
    normal significand becomes 1.
    """
    check_fraction_bits(k, "k", 1, 24)
    return _drum_round(x, k=k)


def drum_mul(a, b, *, k):
    """Multiply elementwise with DRUM-k: both operands shortened by `drum_round`, float32 out."""
    return drum_round(a, k=k) * drum_round(b, k=k)
