"""Contractions (dot_general, convolution) in which every product uses a chosen multiplier.

Every addition is an ordinary float32 addition, so accumulation is exact in the sense of
the approximate-computing literature: only the multiplier is approximate. The order of
those additions is XLA's (a reduction inside each chunk, then chunk after chunk), as for
`lax.dot_general` itself.

Nothing of size M x K x N is materialised. The contraction axis is cut into chunks of
at most `chunk_elements` products each, and rows are blocked when the products of one
contraction index alone exceed that.

Mitchell multipliers take a faster path. Each operand is turned once into an int32
logarithm and a sign (O(MK + KN) work), so a product costs an integer addition, a range
check and a sign XOR. Zero, subnormal, infinite and NaN operands are masked out of that
path and handled by two native dots that carry only the special values; see
`_special_terms`.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from approx import bits as fb
from approx import mitchell
from approx.registry import as_multiplier

DEFAULT_CHUNK_ELEMENTS = 1 << 21


# --------------------------------------------------------------------------------------
# Canonical layout: [batch, M, K] x [batch, K, N] -> [batch, M, N]


def _to_canonical(lhs, rhs, dimension_numbers):
    """Transpose and reshape operands of a dot_general to [B, M, K] and [B, K, N]."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    lhs_contract, rhs_contract = tuple(lhs_contract), tuple(rhs_contract)
    lhs_batch, rhs_batch = tuple(lhs_batch), tuple(rhs_batch)

    if len(lhs_contract) != len(rhs_contract) or len(lhs_batch) != len(rhs_batch):
        raise ValueError(f"dimension_numbers={dimension_numbers} pair unequal numbers of axes.")
    for left, right in zip(lhs_contract + lhs_batch, rhs_contract + rhs_batch):
        if lhs.shape[left] != rhs.shape[right]:
            raise ValueError(
                f"lhs axis {left} (size {lhs.shape[left]}) and rhs axis {right} "
                f"(size {rhs.shape[right]}) are paired but differ in size; "
                f"shapes {lhs.shape} and {rhs.shape}."
            )

    lhs_free = tuple(i for i in range(lhs.ndim) if i not in lhs_contract + lhs_batch)
    rhs_free = tuple(i for i in range(rhs.ndim) if i not in rhs_contract + rhs_batch)
    batch_shape = tuple(lhs.shape[i] for i in lhs_batch)
    lhs_free_shape = tuple(lhs.shape[i] for i in lhs_free)
    rhs_free_shape = tuple(rhs.shape[i] for i in rhs_free)
    contract_size = math.prod(lhs.shape[i] for i in lhs_contract)
    batch_size = math.prod(batch_shape)

    a = jnp.transpose(lhs, lhs_batch + lhs_free + lhs_contract)
    a = a.reshape(batch_size, math.prod(lhs_free_shape), contract_size)
    b = jnp.transpose(rhs, rhs_batch + rhs_contract + rhs_free)
    b = b.reshape(batch_size, contract_size, math.prod(rhs_free_shape))
    return a, b, batch_shape + lhs_free_shape + rhs_free_shape


# --------------------------------------------------------------------------------------
# Per-chunk product sums, one per multiplier kind. Each maps operand chunks
# a [B, M, k] and b [B, k, N] (already encoded by its `prepare`) to [B, M, N].


def _elementwise_prepare(multiply):
    def prepare(a, b):
        return (a,), (b,)

    def chunk_sum(a_parts, b_parts):
        (a,), (b,) = a_parts, b_parts
        products = multiply(a[:, :, :, None], b[:, None, :, :])
        return jnp.sum(products.astype(jnp.float32), axis=2)

    return prepare, chunk_sum


def _log_prepare(w, unbiased):
    offset = mitchell.unbiased_offset(w, unbiased)

    def prepare(a, b):
        log_a, sign_a = mitchell.encode_log(a, w)
        log_b, sign_b = mitchell.encode_log(b, w)
        # The offset rides on the left operand, so each product adds two numbers only.
        log_a = log_a + jnp.int32(offset)
        normal_a = fb.is_normal_bits(fb.to_bits(a))
        normal_b = fb.is_normal_bits(fb.to_bits(b))
        return (log_a, sign_a, normal_a), (log_b, sign_b, normal_b)

    def chunk_sum(a_parts, b_parts):
        log_a, sign_a, normal_a = (x[:, :, :, None] for x in a_parts)
        log_b, sign_b, normal_b = (x[:, None, :, :] for x in b_parts)
        magnitude = mitchell.combine_logs(log_a, log_b, 0)
        magnitude = jnp.where(normal_a & normal_b, magnitude, jnp.int32(0))
        product_bits = lax.bitcast_convert_type(magnitude, jnp.uint32) | (sign_a ^ sign_b)
        return jnp.sum(fb.from_bits(product_bits), axis=2)

    return prepare, chunk_sum


def _special_terms(a, b, precision):
    """Sum of the products that involve an infinite or NaN operand, by two native dots.

    `special(x)` keeps inf and NaN and zeroes the rest; `unit(x)` is +-1 for normals and
    infinities, +-0 for zeros and subnormals (flushed, as in the Mitchell truth table)
    and NaN for NaN. Then special(a) . unit(b) + unit(a) . special(b) is 0 where no product
    has an inf or NaN operand, and otherwise the inf or NaN that the float32 sum of the
    Mitchell products reaches: inf * 0 gives NaN, inf * normal gives a signed inf, and
    opposite infinities meet as NaN. Finite magnitudes do not matter here.
    """
    def special(x):
        return jnp.where(jnp.isfinite(x), jnp.zeros_like(x), x)

    def unit(x):
        bits = fb.to_bits(x)
        magnitude = jnp.where(fb.is_zero_or_subnormal_bits(bits), 0.0, 1.0)
        return jnp.where(jnp.isnan(x), x, jnp.copysign(magnitude, x))

    def native(x, y):
        return jnp.matmul(x, y, precision=precision)

    return native(special(a), unit(b)) + native(unit(a), special(b))


# --------------------------------------------------------------------------------------
# Chunked contraction


def _chunk_size(batch, rows, cols, contract, chunk_elements):
    """Contraction chunk k and row block m so that batch * m * k * cols <= chunk_elements."""
    per_k = batch * rows * cols
    if per_k <= chunk_elements:
        return max(1, min(contract, chunk_elements // per_k)), rows
    row_block = max(1, chunk_elements // (batch * cols))
    return 1, min(rows, row_block)


def _contract_rows(a_parts, b_parts, chunk_sum, k_chunk):
    """Sum chunk products along K for one row block: [B, m, K] x [B, K, N] -> [B, m, N]."""
    contract = a_parts[0].shape[2]
    full_chunks = contract // k_chunk
    out_shape = (a_parts[0].shape[0], a_parts[0].shape[1], b_parts[0].shape[2])

    def take(parts, axis, start, size):
        return tuple(lax.dynamic_slice_in_dim(p, start, size, axis) for p in parts)

    def body(total, index):
        start = index * k_chunk
        partial = chunk_sum(take(a_parts, 2, start, k_chunk), take(b_parts, 1, start, k_chunk))
        return total + partial, None

    total = jnp.zeros(out_shape, jnp.float32)
    if full_chunks == 1:
        total = chunk_sum(take(a_parts, 2, 0, k_chunk), take(b_parts, 1, 0, k_chunk))
    elif full_chunks > 1:
        total, _ = lax.scan(body, total, jnp.arange(full_chunks))

    remainder = contract - full_chunks * k_chunk
    if remainder:
        start = full_chunks * k_chunk
        total = total + chunk_sum(
            take(a_parts, 2, start, remainder), take(b_parts, 1, start, remainder)
        )
    return total


def _contract(a, b, multiplier, chunk_elements, precision):
    """[B, M, K] x [B, K, N] -> [B, M, N] with every product from `multiplier`."""
    if multiplier.kind == "native":
        a, b = multiplier.round_operand(a), multiplier.round_operand(b)
        return jnp.matmul(a, b, precision=precision)

    if multiplier.kind == "log":
        config = multiplier.config
        prepare, chunk_sum = _log_prepare(config["w"], config["unbiased"])
    else:
        prepare, chunk_sum = _elementwise_prepare(multiplier.multiply)

    batch, rows, contract = a.shape
    cols = b.shape[2]
    if contract == 0:
        return jnp.zeros((batch, rows, cols), jnp.float32)

    k_chunk, row_block = _chunk_size(batch, rows, cols, contract, chunk_elements)
    a_parts, b_parts = prepare(a, b)

    if row_block >= rows:
        out = _contract_rows(a_parts, b_parts, chunk_sum, k_chunk)
    else:
        out = _contract_row_blocks(a_parts, b_parts, chunk_sum, k_chunk, row_block)

    if multiplier.kind == "log":
        special = _special_terms(a, b, precision)
        out = jnp.where(jnp.isfinite(special) & (special == 0), out, out + special)
    return out


def _contract_row_blocks(a_parts, b_parts, chunk_sum, k_chunk, row_block):
    """Run `_contract_rows` over row blocks with `lax.map`, padding the last block."""
    batch, rows, contract = a_parts[0].shape
    blocks = -(-rows // row_block)
    padded_rows = blocks * row_block

    def to_blocks(part):
        # Padded rows hold zeros of the part's dtype; their outputs are dropped below.
        part = jnp.pad(part, ((0, 0), (0, padded_rows - rows), (0, 0)))
        part = part.reshape(batch, blocks, row_block, contract)
        return jnp.moveaxis(part, 1, 0)

    blocked = tuple(to_blocks(p) for p in a_parts)
    out = lax.map(lambda parts: _contract_rows(parts, b_parts, chunk_sum, k_chunk), blocked)
    out = jnp.moveaxis(out, 0, 1).reshape(batch, padded_rows, -1)
    return out[:, :rows]


# --------------------------------------------------------------------------------------
# Convolution as a contraction of patches


def _im2col(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers):
    """Patches of `lhs` (output layout, features last-contracted) and the flattened kernel.

    Returns:
      patches: the output layout of the convolution with C * prod(window) features per
        position, ordered [in_channel, *window].
      kernel: [C * prod(window), out_channels] in the same feature order.
      out_spec: axis numbers of the output layout (batch, feature, *spatial).
    """
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    _, rhs_spec, out_spec = dn
    filter_shape = tuple(rhs.shape[i] for i in rhs_spec[2:])
    # HIGHEST: patches are computed by a convolution with a one-hot kernel, which must
    # not round the values it copies (TF32 on GPUs would).
    patches = lax.conv_general_dilated_patches(
        lhs,
        filter_shape,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dn,
        precision=lax.Precision.HIGHEST,
    )
    kernel = jnp.transpose(rhs, (rhs_spec[1],) + tuple(rhs_spec[2:]) + (rhs_spec[0],))
    kernel = kernel.reshape(-1, rhs.shape[rhs_spec[0]])
    return patches, kernel, out_spec


def conv_operands(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                  dimension_numbers=None):
    """Unfold a convolution into the two matrices whose products it sums: [M, K], [K, N].

    Every product of the convolution is patches[m, k] * kernel[k, n] for some m, k, n,
    which is what error statistics on a network's real operands sample from.
    """
    lhs = jnp.asarray(lhs, jnp.float32)
    rhs = jnp.asarray(rhs, jnp.float32)
    patches, kernel, out_spec = _im2col(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers
    )
    patches = jnp.moveaxis(patches, out_spec[1], -1)
    return patches.reshape(-1, patches.shape[-1]), kernel


# --------------------------------------------------------------------------------------
# Public entry points


@functools.partial(
    jax.jit, static_argnames=("dimension_numbers", "multiplier", "chunk_elements", "precision")
)
def _dot_general(lhs, rhs, dimension_numbers, multiplier, chunk_elements, precision):
    lhs = jnp.asarray(lhs, jnp.float32)
    rhs = jnp.asarray(rhs, jnp.float32)
    a, b, out_shape = _to_canonical(lhs, rhs, dimension_numbers)
    out = _contract(a, b, multiplier, chunk_elements, precision)
    return out.reshape(out_shape)


def _freeze_dimension_numbers(dimension_numbers):
    (lc, rc), (lb, rb) = dimension_numbers
    return ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))


def dot_general(
    lhs,
    rhs,
    dimension_numbers,
    precision=None,
    preferred_element_type=None,
    *,
    multiplier="exact",
    chunk_elements=DEFAULT_CHUNK_ELEMENTS,
):
    """`lax.dot_general` with every product computed by `multiplier`, sums in float32.

    Args:
      lhs, rhs: arrays, cast to float32.
      dimension_numbers: ((lhs_contracting, rhs_contracting), (lhs_batch, rhs_batch)),
        as for `lax.dot_general`.
      precision: passed to the native dots used by exact and bf16 multipliers; None
        means HIGHEST, so that products are not silently rounded (TF32 on GPUs).
      preferred_element_type: accepted for signature compatibility; the output is float32.
      multiplier: a registered name, a `Multiplier`, or an elementwise function.
      chunk_elements: maximum number of products held at once.

    Returns:
      float32 array of shape batch + lhs free + rhs free, as `lax.dot_general`.
    """
    del preferred_element_type
    if not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements={chunk_elements!r} must be a positive integer.")
    if precision is None:
        precision = lax.Precision.HIGHEST
    return _dot_general(
        lhs,
        rhs,
        _freeze_dimension_numbers(dimension_numbers),
        as_multiplier(multiplier),
        chunk_elements,
        precision,
    )


def matmul(a, b, *, multiplier="exact", chunk_elements=DEFAULT_CHUNK_ELEMENTS):
    """[..., M, K] x [K, N] -> [..., M, N] with every product from `multiplier`."""
    a = jnp.asarray(a)
    return dot_general(
        a,
        b,
        (((a.ndim - 1,), (0,)), ((), ())),
        multiplier=multiplier,
        chunk_elements=chunk_elements,
    )


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
    *,
    multiplier="exact",
    chunk_elements=DEFAULT_CHUNK_ELEMENTS,
):
    """`lax.conv_general_dilated` with every product computed by `multiplier`.

    Exact and bfloat16 multipliers run the native convolution on rounded operands. The
    others unfold the input into patches (im2col) with `lax.conv_general_dilated_patches`,
    which only copies values, and contract the patches with the kernel by `dot_general`.

    Args:
      lhs: input, laid out as given by `dimension_numbers` (default NCHW as in lax).
      rhs: kernel (default OIHW as in lax).
      window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers: as lax.
      feature_group_count, batch_group_count: only 1 is supported.
      precision: as `dot_general`.
      multiplier, chunk_elements: as `dot_general`.

    Returns:
      float32 array with the same shape and layout as `lax.conv_general_dilated` returns.
    """
    del preferred_element_type
    if feature_group_count != 1 or batch_group_count != 1:
        raise NotImplementedError(
            f"feature_group_count={feature_group_count}, batch_group_count={batch_group_count}: "
            "approximate convolution supports ungrouped convolutions only (both 1)."
        )
    lhs = jnp.asarray(lhs, jnp.float32)
    rhs = jnp.asarray(rhs, jnp.float32)
    multiplier = as_multiplier(multiplier)
    if multiplier.kind == "native":
        # The native convolution at full precision multiplies the rounded operands as
        # float32 does, which is the emulated product (exact for bfloat16 operands).
        return lax.conv_general_dilated(
            multiplier.round_operand(lhs),
            multiplier.round_operand(rhs),
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            precision=lax.Precision.HIGHEST if precision is None else precision,
        )

    patches, kernel, out_spec = _im2col(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers
    )
    feature_axis = out_spec[1]
    out = dot_general(
        patches,
        kernel,
        (((feature_axis,), (0,)), ((), ())),
        precision=precision,
        multiplier=multiplier,
        chunk_elements=chunk_elements,
    )
    # dot_general appends the out-channel axis last; move it to the output's feature axis.
    return jnp.moveaxis(out, -1, feature_axis)
