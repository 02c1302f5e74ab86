"""A Pallas kernel for Mitchell contractions, meant for GPUs.

It computes the same fast-path products as `dot._fast_log_kernel` (five integer
operations on pre-encoded operands) and sums them in the same order as the XLA loop:
groups of UNROLL products summed left to right, each group added to the running total.
The two paths therefore give the same bits. Operands are tiled [block_m, block_k] and
[block_k, block_n]; the output tile stays resident while the grid walks the contraction
axis.

Padding of the contraction axis uses operands whose product is -0, the identity of
float32 addition, so that padded groups change no bit of the sum.

On CPU the kernel runs in Pallas interpret mode, which is how the tests check it.
NOTE: the kernel has not been compiled or timed on a GPU yet, so its speed there is
unmeasured; `dot_general(..., implementation="pallas")` selects it explicitly.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

SPAN = 254 << 23  # a shifted log sum below this is a normal product (see dot._fast_log_kernel)
ZERO_BITS = 0xFF800000  # selected for out-of-range sums; adding 2**23 and the sign gives +-0


def _kernel(shifted_a_ref, word_a_ref, shifted_b_ref, sign_b_ref, out_ref, *, unroll):
    @pl.when(pl.program_id(3) == 0)
    def _():
        out_ref[...] = jnp.full(out_ref.shape, -0.0, jnp.float32)  # the identity of addition

    def group(index, total):
        partial = None
        for j in range(unroll):
            k = index * unroll + j
            shifted = shifted_a_ref[0, :, pl.ds(k, 1)] + shifted_b_ref[0, pl.ds(k, 1), :]
            kept = jnp.where(shifted < jnp.uint32(SPAN), shifted, jnp.uint32(ZERO_BITS))
            sign = word_a_ref[0, :, pl.ds(k, 1)] ^ sign_b_ref[0, pl.ds(k, 1), :]
            product = lax.bitcast_convert_type(kept + sign, jnp.float32)
            partial = product if partial is None else partial + product
        return total + partial

    block_k = shifted_a_ref.shape[2]
    out_ref[0] = lax.fori_loop(0, block_k // unroll, group, out_ref[0])


def _pad(x, axis, multiple, value):
    missing = -x.shape[axis] % multiple
    if not missing:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, missing)
    return jnp.pad(x, widths, constant_values=jnp.asarray(value, x.dtype))


def contract_encoded(a_parts, b_parts, *, unroll, block_m=64, block_n=64, block_k=64, interpret=None):
    """Sum fast-path Mitchell products of encoded operands: [B, M, K] x [B, K, N] -> [B, M, N].

    Args:
      a_parts: (shifted_a, word_a), uint32 [B, M, K] each, from `dot._fast_log_kernel`.
      b_parts: (shifted_b, sign_b), uint32 [B, K, N] each.
      unroll: products summed per group; block_k must be a multiple of it.
      block_m, block_n, block_k: tile sizes.
      interpret: run in Pallas interpret mode; default True on CPU.
    """
    if block_k % unroll:
        raise ValueError(f"block_k={block_k} must be a multiple of unroll={unroll}.")
    if interpret is None:
        interpret = jax.default_backend() == "cpu"
    shifted_a, word_a = a_parts
    shifted_b, sign_b = b_parts
    batch, rows, _ = shifted_a.shape
    cols = shifted_b.shape[2]

    # Padding along K: the sum SPAN + 0 is out of range and the sign words make it -0.
    shifted_a = _pad(_pad(shifted_a, 2, block_k, SPAN), 1, block_m, 0)
    word_a = _pad(_pad(word_a, 2, block_k, 0x80800000), 1, block_m, 0)
    shifted_b = _pad(_pad(shifted_b, 1, block_k, 0), 2, block_n, 0)
    sign_b = _pad(_pad(sign_b, 1, block_k, 0), 2, block_n, 0)
    padded_rows, padded_k = shifted_a.shape[1:]
    padded_cols = shifted_b.shape[2]

    grid = (batch, padded_rows // block_m, padded_cols // block_n, padded_k // block_k)
    a_spec = pl.BlockSpec((1, block_m, block_k), lambda b, i, j, k: (b, i, k))
    b_spec = pl.BlockSpec((1, block_k, block_n), lambda b, i, j, k: (b, k, j))
    out = pl.pallas_call(
        functools.partial(_kernel, unroll=unroll),
        out_shape=jax.ShapeDtypeStruct((batch, padded_rows, padded_cols), jnp.float32),
        grid=grid,
        in_specs=[a_spec, a_spec, b_spec, b_spec],
        out_specs=pl.BlockSpec((1, block_m, block_n), lambda b, i, j, k: (b, i, j)),
        interpret=interpret,
    )(shifted_a, word_a, shifted_b, sign_b)
    return out[:, :rows, :cols]
