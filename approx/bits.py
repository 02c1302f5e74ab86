"""IEEE 754 binary32 bit fields as unsigned integers.

Glossary (binary32, bit 31 first):

    | field            | bits  | mask         | meaning                                  |
    |------------------|-------|--------------|------------------------------------------|
    | sign             | 31    | 0x80000000   | 1 for negative numbers, -0, -inf         |
    | biased exponent  | 30-23 | 0x7F800000   | E; value exponent is E - 127 for normals |
    | fraction         | 22-0  | 0x007FFFFF   | F; significand is 1 + F / 2**23          |

    | E       | F     | class                                        |
    |---------|-------|----------------------------------------------|
    | 0       | 0     | zero (signed)                                |
    | 0       | != 0  | subnormal, value F * 2**-149                 |
    | 1..254  | any   | normal, value (1 + F / 2**23) * 2**(E - 127) |
    | 255     | 0     | infinity (signed)                            |
    | 255     | != 0  | NaN                                          |

Every helper here is elementwise, jit-friendly and works on any shape.
"""

import jax.numpy as jnp
from jax import lax

SIGN_MASK = 0x80000000
EXPONENT_MASK = 0x7F800000
FRACTION_MASK = 0x007FFFFF
FRACTION_BITS = 23
EXPONENT_BIAS = 127
ONE_BITS = 0x3F800000  # bit pattern of 1.0
INF_BITS = 0x7F800000  # bit pattern of +inf


def to_bits(x):
    """Reinterpret float32 values as their uint32 bit patterns."""
    return lax.bitcast_convert_type(jnp.asarray(x, jnp.float32), jnp.uint32)


def from_bits(bits):
    """Reinterpret uint32 (or int32) bit patterns as float32 values."""
    bits = jnp.asarray(bits)
    if bits.dtype == jnp.int32:
        bits = lax.bitcast_convert_type(bits, jnp.uint32)
    return lax.bitcast_convert_type(bits.astype(jnp.uint32), jnp.float32)


def sign_bit(bits):
    """The sign bit (0 or 1) of uint32 bit patterns."""
    return bits >> jnp.uint32(31)


def biased_exponent(bits):
    """The biased exponent field E (0..255) of uint32 bit patterns."""
    return (bits & jnp.uint32(EXPONENT_MASK)) >> jnp.uint32(FRACTION_BITS)


def fraction(bits):
    """The 23-bit fraction field F of uint32 bit patterns."""
    return bits & jnp.uint32(FRACTION_MASK)


def truncation_mask(w):
    """uint32 mask that keeps the top `w` of the 23 fraction bits and the exponent and sign."""
    return jnp.uint32((0xFFFFFFFF << (FRACTION_BITS - w)) & 0xFFFFFFFF)


def is_normal_bits(bits):
    """True where the pattern is a normal number (biased exponent 1..254)."""
    exponent = biased_exponent(bits)
    return (exponent >= 1) & (exponent <= 254)


def is_zero_or_subnormal_bits(bits):
    """True where the biased exponent is 0: zeros and subnormals."""
    return biased_exponent(bits) == 0


def is_inf_bits(bits):
    """True where the pattern is +inf or -inf."""
    return (bits & jnp.uint32(0x7FFFFFFF)) == jnp.uint32(INF_BITS)


def is_nan_bits(bits):
    """True where the pattern is a NaN (any payload)."""
    return (bits & jnp.uint32(0x7FFFFFFF)) > jnp.uint32(INF_BITS)
