"""Posit inference layers: contractions and Flax `Dense`/`Conv` computed in posit<n, es>.

Weights and activations are rounded to posits (`approx.posit.encode`), every product is
`mul` (exact) or `plam_mul` (PLAM), and the products of one output are summed either

    | accumulate | products                      | sum                                    |
    |------------|-------------------------------|----------------------------------------|
    | "quire"    | unrounded, exact or PLAM      | exact in the quire, bias included, one |
    |            |                               | rounding to a posit at the end         |
    | "float32"  | each rounded to a posit       | float32 (XLA's order), then the bias,  |
    |            |                               | then one rounding to a posit           |

Layer outputs are float32 arrays holding posit values, so ReLU and max pooling between
layers stay exact and the next layer's rounding of its input changes nothing.

Parameter names, shapes and initialisers match `flax.linen.Dense` and `flax.linen.Conv`,
so parameters trained with float32 layers load unchanged. These layers are for
inference only: posit rounding has no gradient here.
"""

import functools
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from approx import posit
from approx.posit import PositFormat

ACCUMULATIONS = ("quire", "float32")
DEFAULT_CHUNK_PRODUCTS = 1 << 18
DEFAULT_FORMAT = PositFormat(16, 1)


def check_accumulate(accumulate):
    """Raise ValueError unless `accumulate` is one of ACCUMULATIONS."""
    if accumulate not in ACCUMULATIONS:
        raise ValueError(f"accumulate={accumulate!r} is not supported; use one of {ACCUMULATIONS}.")


def _chunks(rows, contract, cols, chunk_products):
    """Row block m and contraction chunk k with m * k * cols <= chunk_products (at least 1)."""
    k = max(1, min(contract, posit.BLOCK_TERMS, chunk_products // max(1, cols)))
    m = max(1, min(rows, chunk_products // (k * max(1, cols))))
    return m, k


def _expand(fields, axis):
    return posit.Unpacked(*(jnp.expand_dims(f, axis) for f in fields))


@functools.partial(jax.jit, static_argnames=("fmt", "products", "accumulate", "chunk_products"))
def _matmul(a, b, bias, fmt, products, accumulate, chunk_products):
    rows, contract = a.shape
    cols = b.shape[1]
    if bias is not None and accumulate == "quire":
        # bias * 1 is one more exact term of the quire sum.
        one = jnp.full((rows, 1), 1 << (fmt.nbits - 2), jnp.uint32)
        a = jnp.concatenate([a, one], axis=1)
        b = jnp.concatenate([b, bias[None, :]], axis=0)
        contract += 1

    row_block, k_chunk = _chunks(rows, contract, cols, chunk_products)
    blocks, chunks = -(-rows // row_block), -(-contract // k_chunk)
    # Zero padding: the posit 0 adds nothing, and padded rows are dropped below.
    a = jnp.pad(a, ((0, blocks * row_block - rows), (0, chunks * k_chunk - contract)))
    b = jnp.pad(b, ((0, chunks * k_chunk - contract), (0, 0)))
    a = a.reshape(blocks, row_block, chunks, k_chunk).transpose(0, 2, 1, 3)  # [blocks, chunks, m, k]
    b = b.reshape(chunks, k_chunk, cols)
    layout = posit.quire_layout(fmt)

    def quire_step(carry, chunk):
        quire, nar = carry
        a_chunk, b_chunk = chunk
        product = posit.make_product(_expand(posit.unpack(a_chunk, fmt), 2),
                                     _expand(posit.unpack(b_chunk, fmt), 0), fmt, products)
        index, digits = posit.product_digits(product, fmt)
        quire = posit.propagate_carries(quire + posit.accumulate_digits(index, digits, layout, axis=1))
        return (quire, nar | jnp.any(product.nar, axis=1)), None

    def float_step(total, chunk):
        a_chunk, b_chunk = chunk
        product = posit.make_product(_expand(posit.unpack(a_chunk, fmt), 2),
                                     _expand(posit.unpack(b_chunk, fmt), 0), fmt, products)
        values = posit.to_float32(posit.round_product(product, fmt), fmt)
        return total + jnp.sum(values, axis=1), None

    def block_rows(a_block):
        if accumulate == "quire":
            start = (jnp.zeros((row_block, cols, layout.digits), jnp.int32),
                     jnp.zeros((row_block, cols), bool))
            (quire, nar), _ = lax.scan(quire_step, start, (a_block, b))
            return posit.round_quire(quire, nar, fmt)
        total, _ = lax.scan(float_step, jnp.zeros((row_block, cols), jnp.float32), (a_block, b))
        if bias is not None:
            total = total + posit.to_float32(bias, fmt)
        return posit.from_float32(total, fmt)

    out = lax.map(block_rows, a)
    return out.reshape(blocks * row_block, cols)[:rows]


def matmul(a, b, fmt, *, products="exact", accumulate="quire", bias=None,
           chunk_products=DEFAULT_CHUNK_PRODUCTS):
    """Posit matrix product [M, K] x [K, N] (+ bias [N]) -> [M, N], all uint32 patterns.

    Args:
      a, b: uint32 posit patterns of `fmt`.
      fmt: the `PositFormat` of operands and result.
      products: "exact" or "plam".
      accumulate: "quire" or "float32"; see the module docstring.
      bias: optional uint32 patterns [N] added before the final rounding.
      chunk_products: maximum products held at once.
    """
    posit.check_format(fmt)
    posit.check_products(products)
    check_accumulate(accumulate)
    a, b = posit.check_bits(a, "a"), posit.check_bits(b, "b")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul needs shapes [M, K] and [K, N], got {a.shape} and {b.shape}.")
    if bias is not None:
        bias = posit.check_bits(bias, "bias")
        if bias.shape != (b.shape[1],):
            raise ValueError(f"bias must have shape ({b.shape[1]},), got {bias.shape}.")
    if not isinstance(chunk_products, int) or chunk_products < 1:
        raise ValueError(f"chunk_products={chunk_products!r} must be a positive integer.")
    return _matmul(a, b, bias, fmt, products, accumulate, chunk_products)


def _check_settings(layer):
    posit.check_format(layer.fmt)
    posit.check_products(layer.products)
    check_accumulate(layer.accumulate)


class Dense(nn.Module):
    """Posit dense layer over the last axis: [..., in_features] -> [..., features].

    Attributes:
      features: output features.
      fmt: posit format of weights, activations and outputs.
      products: "exact" (`posit.mul`) or "plam" (`posit.plam_mul`).
      accumulate: "quire" or "float32".
      use_bias, kernel_init, bias_init: as `flax.linen.Dense`.
      chunk_products: maximum products held at once.
    """

    features: int
    fmt: PositFormat = DEFAULT_FORMAT
    products: str = "exact"
    accumulate: str = "quire"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    chunk_products: int = DEFAULT_CHUNK_PRODUCTS

    @nn.compact
    def __call__(self, inputs):
        _check_settings(self)
        inputs = jnp.asarray(inputs, jnp.float32)
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None

        lhs = posit.encode(inputs.reshape(-1, inputs.shape[-1]), self.fmt)
        out = matmul(lhs, posit.encode(kernel, self.fmt), self.fmt, products=self.products,
                     accumulate=self.accumulate,
                     bias=None if bias is None else posit.encode(bias, self.fmt),
                     chunk_products=self.chunk_products)
        return posit.decode(out, self.fmt).reshape(inputs.shape[:-1] + (self.features,))


def unfold_patches(inputs, kernel, strides, padding, dilation, dimension_numbers):
    """Unfold a convolution into patches [batch, *spatial', K] and a kernel [K, features].

    K = in_features * prod(kernel_size), in the order [in_feature, *window] that
    `lax.conv_general_dilated_patches` gives, so the convolution is patches @ kernel.
    The patches only copy input values (HIGHEST precision keeps them unrounded).
    """
    rank = kernel.ndim - 2
    patches = lax.conv_general_dilated_patches(
        inputs, kernel.shape[:rank], strides, padding, rhs_dilation=dilation,
        dimension_numbers=dimension_numbers, precision=lax.Precision.HIGHEST,
    )
    # [*window, in, out] -> [in, *window, out] -> [K, out]
    flat_kernel = jnp.moveaxis(kernel, rank, 0).reshape(-1, kernel.shape[-1])
    return patches, flat_kernel


def _per_axis(value, rank, name):
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(value)
    if len(value) != rank:
        raise ValueError(f"{name}={value} must have {rank} entries, one per spatial axis.")
    return value


class Conv(nn.Module):
    """Posit channels-last convolution: [batch, *spatial, in] -> [batch, *spatial', features].

    The input is unfolded into patches (im2col, which only copies values) and contracted
    with the kernel by `matmul`.

    Attributes:
      features, kernel_size, strides, padding, kernel_dilation: as `flax.linen.Conv`
        (padding "SAME", "VALID" or (low, high) pairs).
      fmt, products, accumulate, use_bias, kernel_init, bias_init, chunk_products: as
        `Dense`.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    fmt: PositFormat = DEFAULT_FORMAT
    products: str = "exact"
    accumulate: str = "quire"
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    chunk_products: int = DEFAULT_CHUNK_PRODUCTS

    @nn.compact
    def __call__(self, inputs):
        _check_settings(self)
        inputs = jnp.asarray(inputs, jnp.float32)
        kernel_size = tuple(self.kernel_size)
        rank = len(kernel_size)
        if inputs.ndim != rank + 2:
            raise ValueError(
                f"Conv with a {rank}-d kernel expects inputs of shape [batch, {rank} spatial "
                f"axes, features], got shape {inputs.shape}."
            )
        strides = _per_axis(self.strides, rank, "strides")
        dilation = _per_axis(self.kernel_dilation, rank, "kernel_dilation")
        if isinstance(self.padding, str):
            if self.padding not in ("SAME", "VALID"):
                raise ValueError(f"padding={self.padding!r} must be 'SAME', 'VALID' or (low, high) pairs.")
            padding = self.padding
        else:
            padding = tuple(tuple(pair) for pair in self.padding)

        kernel = self.param("kernel", self.kernel_init, kernel_size + (inputs.shape[-1], self.features))
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
        dimension_numbers = lax.ConvDimensionNumbers(
            lhs_spec=(0, rank + 1) + tuple(range(1, rank + 1)),
            rhs_spec=(rank + 1, rank) + tuple(range(rank)),
            out_spec=(0, rank + 1) + tuple(range(1, rank + 1)),
        )
        # Rounding before unfolding: patches copy posit values, so they stay posits.
        rounded = posit.decode(posit.encode(inputs, self.fmt), self.fmt)
        patches, flat_kernel = unfold_patches(rounded, kernel, strides, padding, dilation,
                                              dimension_numbers)
        out = matmul(posit.encode(patches.reshape(-1, patches.shape[-1]), self.fmt),
                     posit.encode(flat_kernel, self.fmt), self.fmt, products=self.products,
                     accumulate=self.accumulate,
                     bias=None if bias is None else posit.encode(bias, self.fmt),
                     chunk_products=self.chunk_products)
        return posit.decode(out, self.fmt).reshape(patches.shape[:-1] + (self.features,))
