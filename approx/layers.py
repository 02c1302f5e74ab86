"""Flax linen `Dense` and `Conv` whose products use an approximate multiplier.

Parameter names, shapes and initialisers match `flax.linen.Dense` and `flax.linen.Conv`
(`kernel` with LeCun-normal init, `bias` with zeros), so parameters trained with the
exact layers load unchanged. Only the contraction differs: every product goes through
`multiplier` and every sum is float32. Bias addition is exact.

When the "operands" collection is mutable (`model.apply(..., mutable=["operands"])`),
each layer also records the two matrices whose products it sums, `lhs` [M, K] and
`rhs` [K, N], so that error statistics can be taken on a network's real operands.
"""

OPERANDS = "operands"

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from approx import dot
from approx.registry import as_multiplier

default_kernel_init = nn.initializers.lecun_normal()


class Dense(nn.Module):
    """Dense layer over the last axis: [..., in_features] -> [..., features].

    Attributes:
      features: output features.
      multiplier: a registered name ("exact", "bf16", "mitchell"), a `Multiplier` from
        `approx.get_multiplier`, or an elementwise function f(a, b).
      use_bias: add a learned bias.
      kernel_init, bias_init: as `flax.linen.Dense`.
      chunk_elements: maximum output entries computed at once by the contraction.
      accumulation: "float32" (exact), "bf16" or "trunc<t>"; see `dot.make_accumulator`.
      output_scales: optional mapping from a layer's path ("stage0_block1/conv2") to a
        factor applied to the contraction's output before the bias, for calibrated
        corrections of a multiplier's mean error; missing paths use 1.
    """

    features: int
    multiplier: Any = "exact"
    use_bias: bool = True
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    chunk_elements: int = dot.DEFAULT_CHUNK_ELEMENTS
    accumulation: str = "float32"
    output_scales: Any = None

    @nn.compact
    def __call__(self, inputs):
        inputs = jnp.asarray(inputs, jnp.float32)
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features))
        if self.is_mutable_collection(OPERANDS) and not self.is_initializing():
            self.sow(OPERANDS, "lhs", inputs.reshape(-1, inputs.shape[-1]))
            self.sow(OPERANDS, "rhs", kernel)
        y = dot.dot_general(
            inputs,
            kernel,
            (((inputs.ndim - 1,), (0,)), ((), ())),
            multiplier=as_multiplier(self.multiplier),
            chunk_elements=self.chunk_elements,
            accumulation=self.accumulation,
        )
        y = _apply_output_scale(self, y)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y


def layer_path(module):
    """The module's path inside its model, e.g. "stage0_block1/conv2"."""
    return "/".join(module.scope.path)


def _apply_output_scale(module, y):
    if not module.output_scales:
        return y
    scale = dict(module.output_scales).get(layer_path(module), 1.0)
    return y * jnp.float32(scale)


def _canonical_tuple(value, rank, name):
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(value)
    if len(value) != rank:
        raise ValueError(f"{name}={value} must have {rank} entries, one per spatial axis.")
    return value


class Conv(nn.Module):
    """Channels-last convolution: [batch, *spatial, in_features] -> [batch, *spatial', features].

    Attributes:
      features: output channels.
      kernel_size: window size per spatial axis, e.g. (3, 3).
      strides: stride per spatial axis (an int applies to all).
      padding: "SAME", "VALID" or explicit (low, high) pairs per spatial axis.
      kernel_dilation: dilation of the window per spatial axis.
      multiplier: as `Dense`.
      use_bias, kernel_init, bias_init, chunk_elements, accumulation, output_scales: as
        `Dense`.
    """

    features: int
    kernel_size: Sequence[int]
    strides: int | Sequence[int] = 1
    padding: str | Sequence[tuple[int, int]] = "SAME"
    kernel_dilation: int | Sequence[int] = 1
    multiplier: Any = "exact"
    use_bias: bool = True
    kernel_init: Callable = default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    chunk_elements: int = dot.DEFAULT_CHUNK_ELEMENTS
    accumulation: str = "float32"
    output_scales: Any = None

    @nn.compact
    def __call__(self, inputs):
        inputs = jnp.asarray(inputs, jnp.float32)
        kernel_size = tuple(self.kernel_size)
        rank = len(kernel_size)
        if inputs.ndim != rank + 2:
            raise ValueError(
                f"Conv with a {rank}-d kernel expects inputs of shape [batch, {rank} spatial "
                f"axes, features], got shape {inputs.shape}."
            )
        strides = _canonical_tuple(self.strides, rank, "strides")
        dilation = _canonical_tuple(self.kernel_dilation, rank, "kernel_dilation")
        if isinstance(self.padding, str):
            if self.padding not in ("SAME", "VALID"):
                raise ValueError(f"padding={self.padding!r} must be 'SAME', 'VALID' or (low, high) pairs.")
            padding = self.padding
        else:
            padding = tuple(tuple(pair) for pair in self.padding)

        kernel_shape = kernel_size + (inputs.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape)
        dimension_numbers = lax.ConvDimensionNumbers(
            lhs_spec=(0, rank + 1) + tuple(range(1, rank + 1)),
            rhs_spec=(rank + 1, rank) + tuple(range(rank)),
            out_spec=(0, rank + 1) + tuple(range(1, rank + 1)),
        )
        if self.is_mutable_collection(OPERANDS) and not self.is_initializing():
            lhs, rhs = dot.conv_operands(
                inputs, kernel, strides, padding, rhs_dilation=dilation,
                dimension_numbers=dimension_numbers,
            )
            self.sow(OPERANDS, "lhs", lhs)
            self.sow(OPERANDS, "rhs", rhs)
        y = dot.conv_general_dilated(
            inputs,
            kernel,
            strides,
            padding,
            rhs_dilation=dilation,
            dimension_numbers=dimension_numbers,
            multiplier=as_multiplier(self.multiplier),
            chunk_elements=self.chunk_elements,
            accumulation=self.accumulation,
        )
        y = _apply_output_scale(self, y)
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y
