"""Slow, exact reference models of the multipliers, written with Python fractions."""

import math
from fractions import Fraction

import numpy as np

MIN_NORMAL = Fraction(2) ** -126
OVERFLOW = Fraction(2) ** 128


def classify(x):
    """'nan', 'inf', 'zero' (zeros and subnormals) or 'normal' for a float32."""
    x = np.float32(x)
    if np.isnan(x):
        return "nan"
    if np.isinf(x):
        return "inf"
    if x == 0 or abs(Fraction(float(x))) < MIN_NORMAL:
        return "zero"
    return "normal"


def split(x):
    """(sign, exponent, fraction) with |x| = 2**exponent * (1 + fraction), fraction a Fraction."""
    mantissa, exponent = math.frexp(abs(float(x)))  # |x| = mantissa * 2**exponent, mantissa in [0.5, 1)
    return (-1 if np.signbit(np.float32(x)) else 1), exponent - 1, Fraction(mantissa) * 2 - 1


def mitchell(a, b, w, unbiased):
    """The Mitchell product by its definition; returns a float (nan, +-inf, +-0 or exact)."""
    kinds = classify(a), classify(b)
    sign = -1.0 if np.signbit(np.float32(a)) != np.signbit(np.float32(b)) else 1.0
    if "nan" in kinds or set(kinds) == {"inf", "zero"}:
        return float("nan")
    if "inf" in kinds:
        return sign * float("inf")
    if "zero" in kinds:
        return sign * 0.0

    _, ea, fa = split(a)
    _, eb, fb = split(b)
    scale = Fraction(2) ** w
    fa = Fraction(math.floor(fa * scale)) / scale
    fb = Fraction(math.floor(fb * scale)) / scale
    if unbiased:
        fa += Fraction(1, 2 ** (w + 1))
        fb += Fraction(1, 2 ** (w + 1))

    total = fa + fb
    if total < 1:
        product = Fraction(2) ** (ea + eb) * (1 + total)
    else:
        product = Fraction(2) ** (ea + eb + 1) * total
    if product >= OVERFLOW:
        return sign * float("inf")
    if product < MIN_NORMAL:
        return sign * 0.0
    value = float(product)
    assert Fraction(value) == product and Fraction(float(np.float32(value))) == product, (
        "a Mitchell product must be representable in float32"
    )
    return sign * value


def truncate_fraction(x, w):
    """float32 x with its fraction cut to the top w bits (normal x)."""
    sign, exponent, fraction = split(x)
    scale = Fraction(2) ** w
    fraction = Fraction(math.floor(fraction * scale)) / scale
    return sign * float(Fraction(2) ** exponent * (1 + fraction))


def significand_int(x):
    """(sign, unbiased exponent, 24-bit integer significand) of a normal float32."""
    sign, exponent, fraction = split(x)
    return sign, exponent, int(fraction * 2**23) + 2**23


def to_float32(sign, value):
    """Round a non-negative Fraction to float32 as the emulators do: nearest even, then
    inf above the range and +-0 below the normal range."""
    with np.errstate(over="ignore"):
        rounded = np.float32(float(value))  # exact in double here, then one rounding to float32
    if np.isinf(rounded):
        return sign * float("inf")
    if abs(float(rounded)) < 2.0**-126:
        return sign * 0.0
    return sign * float(rounded)


def ilm_integer(x, y, iterations):
    """The ILM approximation of x * y for non-negative integers, with `iterations` corrections."""
    if x == 0 or y == 0:
        return 0
    kx, ky = x.bit_length() - 1, y.bit_length() - 1
    rx, ry = x - (1 << kx), y - (1 << ky)
    term = (1 << (kx + ky)) + (rx << ky) + (ry << kx)
    return term if iterations == 0 else term + ilm_integer(rx, ry, iterations - 1)


def ilm(a, b, iterations, w):
    """The ILM product of two normal float32 values by its definition."""
    sign_a, ea, sa = significand_int(a)
    sign_b, eb, sb = significand_int(b)
    drop = 23 - w
    sa, sb = (sa >> drop) << drop, (sb >> drop) << drop
    product = Fraction(ilm_integer(sa, sb, iterations)) * Fraction(2) ** (ea + eb - 46)
    return to_float32(sign_a * sign_b, product)


def drum(a, b, k):
    """The DRUM-k product of two normal float32 values by its definition."""
    sign_a, ea, sa = significand_int(a)
    sign_b, eb, sb = significand_int(b)
    drop = 24 - k
    sa = ((sa >> drop) << drop) | (1 << drop)
    sb = ((sb >> drop) << drop) | (1 << drop)
    product = Fraction(sa * sb) * Fraction(2) ** (ea + eb - 46)
    return to_float32(sign_a * sign_b, product)


def truncated(a, b, w):
    """The product of two normal float32 values with fractions cut to w bits, rounded to float32."""
    sign_a, ea, sa = significand_int(a)
    sign_b, eb, sb = significand_int(b)
    drop = 23 - w
    sa, sb = (sa >> drop) << drop, (sb >> drop) << drop
    product = Fraction(sa * sb) * Fraction(2) ** (ea + eb - 46)
    return to_float32(sign_a * sign_b, product)
