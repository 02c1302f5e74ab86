"""Exact reference model of posit<n, es>, written from the definition with Python integers.

Values are exact rationals. For speed they are held as Python integers over a common
power of two (`numerator / 2**F`) in numpy object arrays, so whole tables of operand
pairs are computed without a loop over pairs.

Rounding uses the (n+1)-bit posit between two neighbouring n-bit posits as the
rounding point: this is the definition of round to nearest on the bit string,
independent of how `approx.posit` builds the bit string.
"""

import functools
from fractions import Fraction

import numpy as np


@functools.lru_cache(maxsize=None)
def decode_fields(n, es):
    """Per pattern 0..2**n - 1: None for 0 and NaR, else (sign, scale, fraction Fraction)."""
    fields = []
    for pattern in range(2**n):
        if pattern in (0, 2 ** (n - 1)):
            fields.append(None)
            continue
        sign = pattern >> (n - 1)
        magnitude = (-pattern) % 2**n if sign else pattern
        body = format(magnitude, f"0{n}b")[1:]  # the n - 1 bits after the sign
        first = body[0]
        run = len(body) - len(body.lstrip(first))
        regime = run - 1 if first == "1" else -run
        rest = body[run + 1:]
        exponent_bits = rest[:es].ljust(es, "0")
        exponent = int(exponent_bits, 2) if es else 0
        fraction_bits = rest[es:]
        fraction = Fraction(int(fraction_bits, 2), 2 ** len(fraction_bits)) if fraction_bits else Fraction(0)
        fields.append((sign, regime * 2**es + exponent, fraction))
    return fields


@functools.lru_cache(maxsize=None)
def decode_values(n, es):
    """Per pattern: the exact value as a Fraction, or None for NaR."""
    values = []
    for pattern, field in enumerate(decode_fields(n, es)):
        if field is None:
            values.append(None if pattern else Fraction(0))
            continue
        sign, scale, fraction = field
        values.append((-1) ** sign * Fraction(2) ** scale * (1 + fraction))
    return values


def scaled(values, exponent):
    """Fractions (None for NaR) -> object array of integers value * 2**exponent, NaR as None."""
    out = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        if value is None:
            out[i] = None
        else:
            product = value * 2**exponent
            assert product.denominator == 1, f"{value} * 2**{exponent} is not an integer"
            out[i] = int(product)
    return out


class Rounder:
    """Round exact values numerator / 2**exponent to posit<n, es> patterns, vectorised."""

    def __init__(self, n, es, exponent):
        self.n, self.exponent = n, exponent
        positives = decode_values(n, es)[1 : 2 ** (n - 1)]  # patterns 1 .. maxpos
        wider = decode_values(n + 1, es)
        # The (n+1)-bit pattern 2p + 1 lies between the n-bit patterns p and p + 1.
        midpoints = [wider[2 * p + 1] for p in range(1, 2 ** (n - 1) - 1)]
        self.values = scaled(positives, exponent)
        self.midpoints = scaled(midpoints, exponent)
        if len(self.midpoints) == 0:  # posit<2, es> has one positive value, 1
            self.midpoints = np.array([0], dtype=object)

    def __call__(self, numerators):
        """Object array of integers (None for NaR) -> int64 array of patterns."""
        numerators = np.asarray(numerators, dtype=object)
        nar = np.array([v is None for v in numerators.ravel()]).reshape(numerators.shape)
        values = np.where(nar, 0, numerators)
        negative = values < 0
        magnitude = np.where(negative, -values, values)

        below = np.searchsorted(self.values, magnitude, side="right") - 1  # -1: under minpos
        last = len(self.values) - 1
        inner = np.clip(below, 0, max(last - 1, 0))
        midpoint = self.midpoints[inner]
        pattern = inner + 1
        upper = (magnitude > midpoint) | ((magnitude == midpoint) & (pattern % 2 == 1))
        pattern = np.where(upper, pattern + 1, pattern)
        pattern = np.where(below < 0, 1, pattern)
        pattern = np.where(below >= last, last + 1, pattern)

        pattern = np.where(magnitude == 0, 0, pattern).astype(np.int64)
        pattern = np.where(negative, (-pattern) % 2**self.n, pattern)
        return np.where(nar, 2 ** (self.n - 1), pattern).astype(np.int64)


def max_scale(n, es):
    return (n - 2) * 2**es


def product_exponent(n, es):
    """A power of two that makes every product, PLAM product and rounding point an integer."""
    return 2 * max_scale(n, es) + (n + 1) * 2**es + n


def exact_products(n, es, a, b):
    """Exact products of pattern arrays a, b as integers over 2**product_exponent."""
    exponent = product_exponent(n, es)
    values = scaled(decode_values(n, es), max_scale(n, es))
    va, vb = values[a], values[b]
    nar = np.array([x is None or y is None for x, y in zip(va.ravel(), vb.ravel())]).reshape(va.shape)
    products = np.where(nar, 0, va) * np.where(nar, 0, vb)
    products = products * 2 ** (exponent - 2 * max_scale(n, es))
    return np.where(nar, None, products)


def exact_sums(n, es, a, b):
    """Exact sums of pattern arrays a, b as integers over 2**product_exponent."""
    exponent = product_exponent(n, es)
    values = scaled(decode_values(n, es), max_scale(n, es))
    va, vb = values[a], values[b]
    nar = np.array([x is None or y is None for x, y in zip(va.ravel(), vb.ravel())]).reshape(va.shape)
    sums = (np.where(nar, 0, va) + np.where(nar, 0, vb)) * 2 ** (exponent - max_scale(n, es))
    return np.where(nar, None, sums)


def plam_fields(n, es):
    """Per pattern: (scale, fraction numerator over 2**n); zeros and NaR give (0, 0)."""
    scales = np.zeros(2**n, dtype=np.int64)
    fractions = np.zeros(2**n, dtype=np.int64)
    for pattern, field in enumerate(decode_fields(n, es)):
        if field is not None:
            _, scale, fraction = field
            scales[pattern] = scale
            fractions[pattern] = int(fraction * 2**n)
    return scales, fractions


def plam_products(n, es, a, b):
    """Unrounded PLAM products of pattern arrays a, b as integers over 2**product_exponent.

    From the definition: 2**(sa + sb) * (1 + fa + fb) when fa + fb < 1, otherwise
    2**(sa + sb + 1) * (fa + fb).
    """
    exponent = product_exponent(n, es)
    scales, fractions = plam_fields(n, es)
    signs = np.array([0 if f is None else f[0] for f in decode_fields(n, es)])
    total = fractions[a] + fractions[b]
    carry = total >= 2**n
    significand = np.where(carry, total, 2**n + total).astype(object)
    shift = (scales[a] + scales[b] + carry - n + exponent).astype(object)
    assert (shift >= 0).all()
    products = significand * 2**shift
    products = np.where(signs[a] != signs[b], -products, products)

    values = decode_values(n, es)
    zero = np.array([values[x] == 0 or values[y] == 0 for x, y in zip(a.ravel(), b.ravel())]).reshape(a.shape)
    nar = np.array([values[x] is None or values[y] is None for x, y in zip(a.ravel(), b.ravel())]).reshape(a.shape)
    products = np.where(zero, 0, products)
    return np.where(nar, None, products)
