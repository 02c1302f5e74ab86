"""Contractions (dot_general, convolution) in which every product uses a chosen multiplier.

Every addition is an ordinary float32 addition, so accumulation is exact in the sense of
the approximate-computing literature: only the multiplier is approximate.

Nothing of size M x K x N is materialised. A loop over the contraction axis adds, per
step, the products of UNROLL contraction indices to a float32 [M, N] total, and rows are
blocked so that one block of that total has at most `chunk_elements` entries. Sums run
left to right within a step and step after step, so results do not depend on the
chunking.

Mitchell multipliers take faster paths. Each operand is turned once into an integer
logarithm and a sign (O(MK + KN) work), so a product costs a few integer operations.
When the operands are finite and their range rules out overflow (every CNN we run), a
product costs five integer operations; see `_fast_log_kernel`. Otherwise a general
kernel masks zero, subnormal, infinite and NaN operands out and two native dots carry
the special values; see `_special_terms`. Both give the same bits where both apply.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from approx import bfloat16, mitchell, truncated
from approx import bits as fb
from approx.registry import as_multiplier

DEFAULT_CHUNK_ELEMENTS = 1 << 20
UNROLL = 8  # products per output element added in one fused step


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
# Products of one contraction index, one function per multiplier kind. `prepare` encodes
# the operands once; `product` maps the encoded a[:, :, k] and b[:, k, :], shaped
# [B, M, 1] and [B, 1, N], to the float32 products [B, M, N].


def _elementwise_kernel(multiply):
    def prepare(a, b):
        return (a,), (b,)

    def product(a_parts, b_parts):
        (a,), (b,) = a_parts, b_parts
        return multiply(a, b).astype(jnp.float32)

    return prepare, product


def _log_kernel(w, unbiased):
    offset = mitchell.unbiased_offset(w, unbiased)

    def prepare(a, b):
        log_a, sign_a = mitchell.encode_log(a, w)
        log_b, sign_b = mitchell.encode_log(b, w)
        # The offset rides on the left operand, so each product adds two numbers only.
        log_a = log_a + jnp.int32(offset)
        normal_a = fb.is_normal_bits(fb.to_bits(a))
        normal_b = fb.is_normal_bits(fb.to_bits(b))
        return (log_a, sign_a, normal_a), (log_b, sign_b, normal_b)

    def product(a_parts, b_parts):
        log_a, sign_a, normal_a = a_parts
        log_b, sign_b, normal_b = b_parts
        magnitude = mitchell.combine_logs(log_a, log_b, 0)
        magnitude = jnp.where(normal_a & normal_b, magnitude, jnp.int32(0))
        product_bits = lax.bitcast_convert_type(magnitude, jnp.uint32) | (sign_a ^ sign_b)
        return fb.from_bits(product_bits)

    return prepare, product


def _fast_log_kernel(w, unbiased):
    """Mitchell products in five integer operations, for operands in a safe range.

    With L the unbiased log of a normal operand (see `mitchell.encode_log`) and `offset`
    the unbiased correction, the left operand carries t_a = L_a + offset + 126 * 2**23
    and the right t_b = L_b, so t = t_a + t_b (uint32, wrapping) is in [0, 254 * 2**23)
    exactly when the product is a normal number, and the product's bits are
    t + 2**23 | sign. Products that underflow wrap to the top of the uint32 range.

    Zero and subnormal operands get sentinel logs chosen from the operands' extremes so
    that every sum involving one lands in [254, 512) * 2**23 modulo 2**32, which the
    same range check maps to zero. `fast_path_applies` states when that is possible:
    no infinity or NaN, no product can overflow, and the two smallest normal magnitudes
    multiply to at least 2**-130.

    The sign word of the left operand also carries 2**23, so one XOR and one addition
    add the bias and the sign: out-of-range products select 2**32 - 2**23 instead of t,
    which the addition of 2**23 turns into a signed zero.
    """
    offset = mitchell.unbiased_offset(w, unbiased)
    span = jnp.uint32(254 << fb.FRACTION_BITS)

    def prepare(a, b, extremes):
        (low_a, _), (low_b, _) = extremes
        log_a, sign_a = mitchell.encode_log(a, w)
        log_b, sign_b = mitchell.encode_log(b, w)
        shifted_a = lax.bitcast_convert_type(log_a + jnp.int32(offset + (126 << 23)), jnp.uint32)
        shifted_b = lax.bitcast_convert_type(log_b, jnp.uint32)
        sentinel_a = lax.bitcast_convert_type(jnp.int32(254 << 23) - low_b, jnp.uint32)
        sentinel_b = lax.bitcast_convert_type(
            jnp.int32(254 << 23) - (low_a + jnp.int32(offset + (126 << 23))), jnp.uint32
        )
        normal_a = fb.is_normal_bits(fb.to_bits(a))
        normal_b = fb.is_normal_bits(fb.to_bits(b))
        shifted_a = jnp.where(normal_a, shifted_a, sentinel_a)
        shifted_b = jnp.where(normal_b, shifted_b, sentinel_b)
        word_a = sign_a | jnp.uint32(1 << fb.FRACTION_BITS)
        return (shifted_a, word_a), (shifted_b, sign_b)

    def product(a_parts, b_parts):
        shifted_a, word_a = a_parts
        shifted_b, sign_b = b_parts
        total = shifted_a + shifted_b
        kept = jnp.where(total < span, total, jnp.uint32(0xFF800000))
        return fb.from_bits(kept + (word_a ^ sign_b))

    return prepare, product, offset


def _normal_log_extremes(x, w):
    """(min, max) int32 unbiased log over the normal entries of x; (0, 0) if none."""
    log, _ = mitchell.encode_log(x, w)
    normal = fb.is_normal_bits(fb.to_bits(x))
    big = jnp.int32(1 << 30)
    low = jnp.min(jnp.where(normal, log, big))
    high = jnp.max(jnp.where(normal, log, -big))
    any_normal = jnp.any(normal)
    return jnp.where(any_normal, low, 0), jnp.where(any_normal, high, 0)


def fast_path_applies(extremes_a, extremes_b, offset, finite):
    """Whether `_fast_log_kernel` is exact for operands with these log extremes."""
    (low_a, high_a), (low_b, high_b) = extremes_a, extremes_b
    # Each comparison keeps both sides inside int32.
    no_overflow = high_a + jnp.int32(offset) < jnp.int32(128 << 23) - high_b
    no_wrap = low_a + jnp.int32(offset) > jnp.int32(-130 << 23) - low_b
    return finite & no_overflow & no_wrap


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
# The contraction loop



def make_accumulator(accumulation):
    """The addition of a running sum: float32, or float32 rounded after every addition.

    "float32" is exact accumulation (ordinary float32 additions); "bf16" rounds every
    sum to bfloat16, nearest even; "trunc<t>" (t in 1..22) cuts every sum's fraction
    to t bits, toward zero. The approximate forms exist to show what breaks when
    additions are approximated too.
    """
    if accumulation == "float32":
        return None
    if accumulation == "bf16":
        return lambda x, y: bfloat16.bf16_round(x + y, mode="nearest")
    if isinstance(accumulation, str) and accumulation.startswith("trunc"):
        digits = accumulation[len("trunc"):]
        if digits.isdigit() and 1 <= int(digits) <= 22:
            bits = int(digits)
            return lambda x, y: truncated.truncate_significand(x + y, w=bits)
    raise ValueError(
        f"accumulation={accumulation!r} is not valid; use 'float32', 'bf16' or 'trunc<t>' "
        "with t in 1..22 (for example 'trunc12')."
    )


def _sum_over_k(a_parts, b_parts, product, add=None):
    """Sum products over the contraction axis for one row block.

    Args:
      a_parts: encoded left operand, each [K, B, m] (contraction axis first, so that the
        slice of one k is contiguous).
      b_parts: encoded right operand, each [K, B, N].
      product: the kind's product function.
      add: addition of two float32 arrays (default exact float32 addition).

    Returns:
      float32 [B, m, N]. Each step of the loop adds UNROLL products per output element,
      summed left to right, to the running total; XLA fuses a step into one pass over
      the output, which is what makes this faster than a reduction over a [B, m, k, N]
      block.
    """
    contract = a_parts[0].shape[0]
    out_shape = (a_parts[0].shape[1], a_parts[0].shape[2], b_parts[0].shape[2])
    add = add or jnp.add

    def products(first, count):
        total = None
        for j in range(count):
            a_k = tuple(lax.dynamic_index_in_dim(p, first + j, 0, keepdims=False)[:, :, None]
                        for p in a_parts)
            b_k = tuple(lax.dynamic_index_in_dim(p, first + j, 0, keepdims=False)[:, None, :]
                        for p in b_parts)
            term = product(a_k, b_k)
            total = term if total is None else add(total, term)
        return total

    def body(total, step):
        return add(total, products(step * UNROLL, UNROLL)), None

    # -0 is the identity of float32 addition (+0 would turn a sum of -0 products into +0).
    total = jnp.full(out_shape, -0.0, jnp.float32)
    steps = contract // UNROLL
    if steps:
        total, _ = lax.scan(body, total, jnp.arange(steps))
    remainder = contract - steps * UNROLL
    if remainder:
        total = add(total, products(steps * UNROLL, remainder))
    return total


def _run_kernel(a_parts, b_parts, product, chunk_elements, add=None):
    """Sum the products of encoded operands ([B, M, K] and [B, K, N] parts) to [B, M, N]."""
    batch, rows, _ = a_parts[0].shape
    cols = b_parts[0].shape[2]
    a_parts = tuple(jnp.transpose(p, (2, 0, 1)) for p in a_parts)  # [K, B, M]
    b_parts = tuple(jnp.transpose(p, (1, 0, 2)) for p in b_parts)  # [K, B, N]
    row_block = max(1, chunk_elements // (batch * cols))
    if row_block >= rows:
        return _sum_over_k(a_parts, b_parts, product, add)
    return _sum_over_row_blocks(a_parts, b_parts, product, row_block, add)


def _contract_log(a, b, w, unbiased, chunk_elements, precision, implementation="xla"):
    """Mitchell contraction: the fast kernel when it is exact, else the general one."""
    prepare_fast, product_fast, offset = _fast_log_kernel(w, unbiased)
    prepare_general, product_general = _log_kernel(w, unbiased)
    extremes = (_normal_log_extremes(a, w), _normal_log_extremes(b, w))
    finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(b))

    def fast(a, b):
        a_parts, b_parts = prepare_fast(a, b, extremes)
        if implementation == "pallas":
            from approx import pallas_dot

            return pallas_dot.contract_encoded(a_parts, b_parts, unroll=UNROLL)
        return _run_kernel(a_parts, b_parts, product_fast, chunk_elements)

    def general(a, b):
        a_parts, b_parts = prepare_general(a, b)
        out = _run_kernel(a_parts, b_parts, product_general, chunk_elements)
        special = _special_terms(a, b, precision)
        return jnp.where(jnp.isfinite(special) & (special == 0), out, out + special)

    return lax.cond(fast_path_applies(*extremes, offset, finite), fast, general, a, b)


def _contract(a, b, multiplier, chunk_elements, precision, accumulation="float32",
              implementation="xla"):
    """[B, M, K] x [B, K, N] -> [B, M, N] with every product from `multiplier`."""
    batch, rows, contract = a.shape
    cols = b.shape[2]
    add = make_accumulator(accumulation)
    if multiplier.kind == "native" and add is None:
        a, b = multiplier.round_operand(a), multiplier.round_operand(b)
        return jnp.matmul(a, b, precision=precision)
    if contract == 0:
        return jnp.zeros((batch, rows, cols), jnp.float32)

    if multiplier.kind == "log" and add is None:
        config = multiplier.config
        return _contract_log(a, b, config["w"], config["unbiased"], chunk_elements, precision,
                             implementation)

    prepare, product = _elementwise_kernel(multiplier.multiply)
    a_parts, b_parts = prepare(a, b)
    return _run_kernel(a_parts, b_parts, product, chunk_elements, add)


def _sum_over_row_blocks(a_parts, b_parts, product, row_block, add=None):
    """Run `_sum_over_k` over blocks of rows with `lax.map`, padding the last block."""
    contract, batch, rows = a_parts[0].shape
    blocks = -(-rows // row_block)
    padded_rows = blocks * row_block

    def to_blocks(part):
        # Padded rows hold zeros of the part's dtype; their outputs are dropped below.
        part = jnp.pad(part, ((0, 0), (0, 0), (0, padded_rows - rows)))
        part = part.reshape(contract, batch, blocks, row_block)
        return jnp.moveaxis(part, 2, 0)  # [blocks, K, B, row_block]

    blocked = tuple(to_blocks(p) for p in a_parts)
    out = lax.map(lambda parts: _sum_over_k(parts, b_parts, product, add), blocked)  # [blocks, B, m, N]
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
    jax.jit,
    static_argnames=("dimension_numbers", "multiplier", "chunk_elements", "precision", "accumulation",
                     "implementation"),
)
def _dot_general(lhs, rhs, dimension_numbers, multiplier, chunk_elements, precision, accumulation,
                 implementation):
    lhs = jnp.asarray(lhs, jnp.float32)
    rhs = jnp.asarray(rhs, jnp.float32)
    a, b, out_shape = _to_canonical(lhs, rhs, dimension_numbers)
    out = _contract(a, b, multiplier, chunk_elements, precision, accumulation, implementation)
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
    accumulation="float32",
    implementation="xla",
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
      chunk_elements: maximum entries of the float32 output block computed at once; each
        loop step holds UNROLL products per entry.
      accumulation: "float32" (exact, the default), "bf16" or "trunc<t>"; see
        `make_accumulator`.
      implementation: "xla" (default) or "pallas", the Pallas kernel of
        `approx.pallas_dot` for Mitchell's fast path (interpret mode on CPU); both give
        the same bits.

    Returns:
      float32 array of shape batch + lhs free + rhs free, as `lax.dot_general`.
    """
    del preferred_element_type
    if not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise ValueError(f"chunk_elements={chunk_elements!r} must be a positive integer.")
    make_accumulator(accumulation)  # rejects an invalid name before tracing
    if implementation not in ("xla", "pallas"):
        raise ValueError(f"implementation={implementation!r} is not valid; use 'xla' or 'pallas'.")
    if precision is None:
        precision = lax.Precision.HIGHEST
    return _dot_general(
        lhs,
        rhs,
        _freeze_dimension_numbers(dimension_numbers),
        as_multiplier(multiplier),
        chunk_elements,
        precision,
        accumulation,
        implementation,
    )


def matmul(a, b, *, multiplier="exact", chunk_elements=DEFAULT_CHUNK_ELEMENTS,
           accumulation="float32", implementation="xla"):
    """[..., M, K] x [K, N] -> [..., M, N] with every product from `multiplier`."""
    a = jnp.asarray(a)
    return dot_general(
        a,
        b,
        (((a.ndim - 1,), (0,)), ((), ())),
        multiplier=multiplier,
        chunk_elements=chunk_elements,
        accumulation=accumulation,
        implementation=implementation,
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
    accumulation="float32",
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
      multiplier, chunk_elements, accumulation: as `dot_general`.

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
    if multiplier.kind == "native" and accumulation == "float32":
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
        accumulation=accumulation,
    )
    # dot_general appends the out-channel axis last; move it to the output's feature axis.
    return jnp.moveaxis(out, -1, feature_axis)
