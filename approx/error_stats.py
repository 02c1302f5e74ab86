"""Relative-error statistics of multipliers, exhaustive on fraction grids or sampled.

For operands a = 1 + i / 2**g and b = 1 + j / 2**g (every pair of g-bit fractions, the
exponent being irrelevant to the relative error of these multipliers away from overflow
and underflow), `grid_errors` computes (multiplier(a, b) - a * b) / (a * b) for all
2**(2g) pairs. `sampled_errors` does the same for operands with uniformly random 23-bit
fractions, the inputs that a multiplier truncating to w < 23 bits receives in practice.

Unbiased Mitch-w adds half of the dropped range to each truncated fraction; on a grid of
exactly w-bit fractions nothing is dropped, so there it shows a positive bias that the
sampled statistics do not.
"""

import jax
import jax.numpy as jnp
import numpy as np

MAX_GRID_BITS = 12


def summarize(relative, bins):
    """Mean, standard deviation, min, max and a histogram of relative errors (float64)."""
    relative = np.asarray(relative, np.float64)
    counts, edges = np.histogram(relative, bins=bins)
    return {
        "mean": float(relative.mean()),
        "std": float(relative.std()),
        "min": float(relative.min()),
        "max": float(relative.max()),
        "count": int(relative.size),
        "histogram": counts.tolist(),
        "edges": edges.tolist(),
    }


def _relative(multiplier, a, b):
    products = np.asarray(jax.jit(multiplier)(jnp.asarray(a), jnp.asarray(b)), np.float64)
    exact = a.astype(np.float64) * b.astype(np.float64)
    return (products - exact) / exact


def grid_errors(multiplier, grid_bits, *, bins, rows_per_chunk=256):
    """Statistics over every pair of operands in [1, 2) with `grid_bits`-bit fractions.

    Args:
      multiplier: elementwise float32 function f(a, b).
      grid_bits: fraction bits of the grid, 1..MAX_GRID_BITS (2**(2 * grid_bits) pairs).
      bins: histogram bin edges (array) or count.
      rows_per_chunk: grid rows evaluated per call, to bound memory.

    Returns:
      dict from `summarize`.
    """
    if not isinstance(grid_bits, int) or not 1 <= grid_bits <= MAX_GRID_BITS:
        raise ValueError(f"grid_bits={grid_bits!r} must be an integer in 1..{MAX_GRID_BITS}.")
    values = (1 + np.arange(2**grid_bits) / 2**grid_bits).astype(np.float32)
    pieces = []
    for start in range(0, values.size, rows_per_chunk):
        a = np.repeat(values[start : start + rows_per_chunk], values.size)
        b = np.tile(values, min(rows_per_chunk, values.size - start))
        pieces.append(_relative(multiplier, a, b).astype(np.float32))
    return summarize(np.concatenate(pieces), bins)


def sampled_errors(multiplier, count, *, seed, bins):
    """Statistics over `count` operand pairs with uniformly random 23-bit fractions."""
    rng = np.random.default_rng(seed)
    a = (1 + rng.integers(0, 2**23, count) / 2**23).astype(np.float32)
    b = (1 + rng.integers(0, 2**23, count) / 2**23).astype(np.float32)
    return summarize(_relative(multiplier, a, b), bins)
