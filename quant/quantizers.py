"""Weight and activation quantizers with explicit straight-through gradients.

Every quantizer returns the dequantized (fake-quantized) float32 array, so a network
trains on float master weights and sees only the quantized values in its forward pass.
Each is a `jax.custom_vjp` whose backward rule is written out, because rounding and
sign have a zero derivative almost everywhere and training needs a surrogate.

Rounding is `jnp.round`, which rounds half to even (0.5 -> 0, 1.5 -> 2, 2.5 -> 2).

Truth table (L = 2**k - 1 for k bits, Qp = 2**(b-1) - 1 for b bits, g the incoming
gradient, all scales per tensor unless `channel_axis` is given, and the gradient
0 wherever the table names no value):

    | quantizer                   | forward                                  | gradient to the input      |
    |-----------------------------|------------------------------------------|----------------------------|
    | dorefa_weights(w, 1)        | mean|w| * sign(w), sign(0) = +1          | g                          |
    | dorefa_weights(w, k >= 2)   | (2 round(L r) - L) * (1/L) with          | gradient of tanh(w) /      |
    |                             | r = tanh(w) / (2 max|tanh(w)|) + 1/2     | max|tanh(w)|               |
    | dorefa_activations(x, k)    | round(L clip(x, 0, 1)) * (1/L)           | g where 0 <= x <= 1        |
    | binarize(w)                 | mean|w| * sign(w), sign(0) = +1          | g where |w| <= 1           |
    | uniform_symmetric(w, b)     | s round(w / s), s = max|w| * (1/Qp)      | g                          |
    | lsq(x, s, b)                | s round(clip(x / s, -Qn, Qp))            | g where -Qn < x/s < Qp     |
    |                             | Qn = 2**(b-1) and Qp as above if signed, |                            |
    |                             | else Qn = 0 and Qp = 2**b - 1            |                            |

Special cases, each checked by a test:

- dorefa_weights with k >= 2 has no level at zero: its levels are the odd multiples of
  1/L in [-1, 1]. A zero weight has r = 1/2 and L r = 2**(k-1) - 1/2, which rounds half
  to even up to 2**(k-1), so zero maps to +1/L. An all-zero tensor maps to +1/L
  everywhere (the max-abs normaliser 0 is replaced by 1).
- dorefa_weights is idempotent for k <= 3 but not for larger k, because the tanh of a
  level is not proportional to the level (k = 4 maps 11/15 to 13/15).
- binarize, 1-bit dorefa_weights and uniform_symmetric are idempotent up to the float32
  rounding of their scale, which is recomputed from the quantized values.
- binarize and uniform_symmetric map an all-zero tensor (or channel) to zeros, and codes
  of zero are +0, never -0.
- dorefa_activations clips at both ends: x = 1 gives 1 and x = 0 gives 0, and both
  boundaries pass the gradient.
- A NaN element turns into NaN every output that shares its scale: the whole tensor
  for dorefa_weights, its tensor or channel for binarize and uniform_symmetric.

Sources: S. Zhou et al., "DoReFa-Net: Training Low Bitwidth Convolutional Neural
Networks with Low Bitwidth Gradients", arXiv:1606.06160 (2016); M. Rastegari et al.,
"XNOR-Net", ECCV 2016 (mean-absolute scale of binary weights); S. K. Esser et al.,
"Learned Step Size Quantization", ICLR 2020 (LSQ).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_BITS = 16


# --------------------------------------------------------------------------------------
# Argument checks, run at trace time because bit widths and axes are static.


def check_bits(bits, *, name="bits", minimum=1):
    """Raise ValueError unless `bits` is a Python int in minimum..16."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not minimum <= bits <= MAX_BITS:
        raise ValueError(
            f"{name}={bits!r} is not a valid bit width: it must be an integer in "
            f"{minimum}..{MAX_BITS}."
        )
    return bits


def _check_channel_axis(channel_axis, ndim):
    if channel_axis is None:
        return None
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, int) or not -ndim <= channel_axis < ndim:
        raise ValueError(
            f"channel_axis={channel_axis!r} is invalid for an array of rank {ndim}: it must be "
            f"None or an integer in {-ndim}..{ndim - 1}."
        )
    return channel_axis % ndim


def _reduce_axes(ndim, channel_axis):
    """Axes reduced to compute a scale: all, or all but the channel axis."""
    return tuple(axis for axis in range(ndim) if axis != channel_axis)


def _as_float32(x):
    return jnp.asarray(x, jnp.float32)


def _reciprocal(count):
    # Scales multiply by a float32 reciprocal instead of dividing by a constant, because
    # XLA rewrites division by a constant as this multiplication inside jit but not in
    # eager mode, and the two can differ in the last bit.
    return np.float32(1 / count)


def _positive_zero(codes):
    # round(-0.3) is -0.0; integer codes have no sign of zero, so neither do these.
    return jnp.where(codes == 0, 0.0, codes)


# --------------------------------------------------------------------------------------
# Integer codes and scales. Each quantizer's forward value is exactly codes * scale, and
# `quant.transforms.export` stores these same codes as integers, so dequantizing the
# export reproduces the fake-quantized array bit for bit.


def sign_codes(w):
    """+1 where w >= 0 and -1 elsewhere (sign(0) = +1), as float32."""
    return jnp.where(w >= 0, 1.0, -1.0).astype(jnp.float32)


def pairwise_sum(x, axes):
    """Sum over `axes` in a fixed pairwise order, keeping the summed axes with size 1.

    XLA's reduce may sum in a different order inside a fused jitted graph than alone,
    which changes the last bit of a float32 sum. Halving the array with elementwise
    additions fixes the order, so a scale computed here has the same bits in every
    context, and `quant.transforms.export` reproduces fake quantization bit for bit.
    """
    kept = tuple(a for a in range(x.ndim) if a not in axes)
    moved = jnp.transpose(x, kept + tuple(axes))
    outer = moved.shape[: len(kept)]
    flat = moved.reshape(outer + (-1,))
    size = flat.shape[-1]
    padded = 1 << max(size - 1, 0).bit_length()
    flat = jnp.pad(flat, [(0, 0)] * len(kept) + [(0, padded - size)])
    while flat.shape[-1] > 1:
        half = flat.shape[-1] // 2
        flat = flat[..., :half] + flat[..., half:]
    kept_shape = [1 if a in axes else x.shape[a] for a in range(x.ndim)]
    return flat.reshape(kept_shape)


def mean_abs_scale(w, channel_axis=None):
    """Mean absolute value per tensor (shape []) or per channel (keeps dims, size 1 elsewhere)."""
    w = _as_float32(w)
    axis = _check_channel_axis(channel_axis, w.ndim)
    axes = _reduce_axes(w.ndim, axis)
    count = max(1, int(np.prod([w.shape[a] for a in axes], dtype=np.int64)))
    total = pairwise_sum(jnp.abs(w), axes)
    if axis is None:
        total = total.reshape(())
    return total * _reciprocal(count)


def binary_parts(w, channel_axis=None):
    """Codes in {-1, +1} and the mean-absolute scale of `binarize` and 1-bit DoReFa."""
    w = _as_float32(w)
    return sign_codes(w), mean_abs_scale(w, channel_axis)


def _dorefa_normalized(w):
    """tanh(w) / max|tanh(w)|, in [-1, 1]; an all-zero tensor stays zero."""
    t = jnp.tanh(w)
    peak = jnp.max(jnp.abs(t))
    return t / jnp.where(peak == 0, 1.0, peak)


def dorefa_weight_parts(w, bits):
    """Codes and scale of `dorefa_weights`: odd integers in [-L, L] and 1/L.

    For bits = 1 the codes are signs and the scale is mean|w|, as `binary_parts`.
    """
    check_bits(bits)
    w = _as_float32(w)
    if bits == 1:
        return binary_parts(w)
    levels = 2**bits - 1
    r = _dorefa_normalized(w) / 2 + 0.5
    n = jnp.round(levels * r)
    return 2 * n - levels, jnp.float32(_reciprocal(levels))


def symmetric_scale(w, bits, channel_axis=None):
    """max|w| / (2**(bits-1) - 1) per tensor or per channel; zero where the tensor is zero."""
    w = _as_float32(w)
    axis = _check_channel_axis(channel_axis, w.ndim)
    top = 2 ** (bits - 1) - 1
    if axis is None:
        peak = jnp.max(jnp.abs(w))
    else:
        peak = jnp.max(jnp.abs(w), axis=_reduce_axes(w.ndim, axis), keepdims=True)
    return peak * _reciprocal(top)


def uniform_symmetric_parts(w, bits, channel_axis=None):
    """Codes in [-(2**(bits-1) - 1), 2**(bits-1) - 1] and the max-abs scale."""
    check_bits(bits, minimum=2)
    w = _as_float32(w)
    top = 2 ** (bits - 1) - 1
    scale = symmetric_scale(w, bits, channel_axis)
    safe = jnp.where(scale > 0, scale, 1.0)
    # The clip only guards against w / scale landing a rounding error above `top`.
    codes = jnp.clip(jnp.round(w / safe), -top, top)
    return _positive_zero(codes), scale


def lsq_range(bits, signed):
    """(Qn, Qp): the codes of LSQ lie in [-Qn, Qp]."""
    if signed:
        check_bits(bits, minimum=2)
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    check_bits(bits)
    return 0, 2**bits - 1


def lsq_parts(x, step, bits, *, signed=True):
    """Codes in [-Qn, Qp] and the step of `lsq`."""
    qn, qp = lsq_range(bits, signed)
    x = _as_float32(x)
    step = _as_float32(step)
    return _positive_zero(jnp.clip(jnp.round(x / step), -qn, qp)), step


# --------------------------------------------------------------------------------------
# Quantizers


@jax.custom_vjp
def _binary_identity(w, scale):
    return sign_codes(w) * scale


def _binary_identity_fwd(w, scale):
    return sign_codes(w) * scale, scale


def _binary_identity_bwd(scale, g):
    # DoReFa computes sign(w / E) * E with an identity gradient through sign, so the
    # chain-rule factors 1/E and E cancel and the weight receives g unchanged.
    return g, jnp.zeros_like(scale)


_binary_identity.defvjp(_binary_identity_fwd, _binary_identity_bwd)


@jax.custom_vjp
def _dorefa_multibit(w, codes, scale):
    return codes * scale


def _dorefa_multibit_fwd(w, codes, scale):
    return codes * scale, (w, codes, scale)


def _dorefa_multibit_bwd(residuals, g):
    w, codes, scale = residuals
    # The output is tanh(w) / max|tanh(w)| up to rounding, and rounding passes the
    # gradient straight through, so the weight gets the gradient of that smooth map.
    _, vjp = jax.vjp(_dorefa_normalized, w)
    (grad_w,) = vjp(g)
    return grad_w, jnp.zeros_like(codes), jnp.zeros_like(scale)


_dorefa_multibit.defvjp(_dorefa_multibit_fwd, _dorefa_multibit_bwd)


def dorefa_weights(w, bits):
    """Quantize weights to `bits` bits as DoReFa-Net does and return the dequantized array.

    bits = 1: mean|w| * sign(w) with sign(0) = +1, one scale per tensor, and an identity
    gradient. bits >= 2: tanh(w) is mapped to [0, 1], rounded (half to even) to one of
    2**bits levels and mapped back to [-1, 1]; the gradient is that of
    tanh(w) / max|tanh(w)|, as in DoReFa-Net, so the max element also gets a gradient.

    Args:
      w: float array of any shape.
      bits: integer in 1..16.

    Returns:
      float32 array of w's shape.

    Raises:
      ValueError: `bits` is not an integer in 1..16.
    """
    codes, scale = dorefa_weight_parts(w, bits)
    w = _as_float32(w)
    if bits == 1:
        return _binary_identity(w, jax.lax.stop_gradient(scale))
    return _dorefa_multibit(w, codes, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _dorefa_activations(x, bits):
    levels = 2**bits - 1
    return jnp.round(levels * jnp.clip(x, 0.0, 1.0)) * _reciprocal(levels)


def _dorefa_activations_fwd(x, bits):
    return _dorefa_activations(x, bits), x


def _dorefa_activations_bwd(bits, x, g):
    # Straight through the rounding and zero where the clip keeps the output constant.
    # Both clip boundaries pass the gradient.
    return (jnp.where((x >= 0) & (x <= 1), g, 0.0),)


_dorefa_activations.defvjp(_dorefa_activations_fwd, _dorefa_activations_bwd)


def dorefa_activations(x, bits):
    """Clip activations to [0, 1] and round them to `bits` bits, as DoReFa-Net does.

    The output is round(L * clip(x, 0, 1)) * (1 / L) with L = 2**bits - 1, rounding half
    to even. It replaces a ReLU: pass `functools.partial(dorefa_activations, bits=k)` as a
    model's `activation`. The gradient is g where 0 <= x <= 1 and 0 elsewhere.

    Args:
      x: float array of any shape.
      bits: integer in 1..16.

    Raises:
      ValueError: `bits` is not an integer in 1..16.
    """
    check_bits(bits)
    return _dorefa_activations(_as_float32(x), bits)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _binarize(w, channel_axis):
    codes, scale = binary_parts(w, channel_axis)
    return codes * scale


def _binarize_fwd(w, channel_axis):
    return _binarize(w, channel_axis), w


def _binarize_bwd(channel_axis, w, g):
    # Clipped straight-through estimator (BinaryConnect, XNOR-Net): sign(w) is treated as
    # w inside [-1, 1], and weights beyond it stop moving outwards.
    return (jnp.where(jnp.abs(w) <= 1, g, 0.0),)


_binarize.defvjp(_binarize_fwd, _binarize_bwd)


def binarize(w, *, channel_axis=None):
    """Binarize weights to +-mean|w| and return the dequantized array.

    sign(0) = +1. The scale is the mean absolute value of the whole tensor, or of each
    index along `channel_axis` (use -1 for the output channels of Flax Conv and Dense
    kernels). The scale is treated as a constant, and the gradient is g where |w| <= 1
    (inclusive) and 0 elsewhere.

    Args:
      w: float array of any shape.
      channel_axis: None for one scale, or the axis that gets one scale per index.

    Raises:
      ValueError: `channel_axis` is not a valid axis of `w`.
    """
    w = _as_float32(w)
    return _binarize(w, _check_channel_axis(channel_axis, w.ndim))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _uniform_symmetric(w, bits, channel_axis):
    codes, scale = uniform_symmetric_parts(w, bits, channel_axis)
    return codes * scale


def _uniform_symmetric_fwd(w, bits, channel_axis):
    return _uniform_symmetric(w, bits, channel_axis), None


def _uniform_symmetric_bwd(bits, channel_axis, _, g):
    # The max-abs scale leaves nothing to clip, so the straight-through estimator passes
    # g everywhere.
    return (g,)


_uniform_symmetric.defvjp(_uniform_symmetric_fwd, _uniform_symmetric_bwd)


def uniform_symmetric(w, bits, *, channel_axis=None):
    """Round weights to the symmetric levels +-m * s, m = 0..2**(bits-1) - 1.

    s = max|w| / (2**(bits-1) - 1), one per tensor or one per index along `channel_axis`,
    so the largest weight keeps its value. The gradient passes straight through.

    Args:
      w: float array of any shape.
      bits: integer in 2..16; one bit would leave only the level 0, use `binarize`.
      channel_axis: None for one scale, or the axis that gets one scale per index.

    Raises:
      ValueError: `bits` is not an integer in 2..16, or `channel_axis` is invalid.
    """
    check_bits(bits, minimum=2)
    w = _as_float32(w)
    return _uniform_symmetric(w, bits, _check_channel_axis(channel_axis, w.ndim))


def _sum_to_shape(x, shape):
    """Sum `x` over the axes that broadcasting added or stretched to reach x.shape from `shape`."""
    lead = x.ndim - len(shape)
    x = jnp.sum(x, axis=tuple(range(lead))) if lead else x
    stretched = tuple(i for i, size in enumerate(shape) if size == 1 and x.shape[i] != 1)
    return jnp.sum(x, axis=stretched, keepdims=True).reshape(shape) if stretched else x.reshape(shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _lsq(x, step, bits, signed, grad_scale):
    codes, step = lsq_parts(x, step, bits, signed=signed)
    return codes * step


def _lsq_fwd(x, step, bits, signed, grad_scale):
    return _lsq(x, step, bits, signed, grad_scale), (x, step)


def _lsq_bwd(bits, signed, grad_scale, residuals, g):
    x, step = residuals
    qn, qp = lsq_range(bits, signed)
    v = x / step
    inside = (v > -qn) & (v < qp)
    # LSQ's gradients: straight through inside the range, and for the step the
    # derivative of s * round(clip(x/s)) with round's derivative taken as 1. grad_scale
    # keeps the step's update in proportion to the weights' updates.
    grad_x = jnp.where(inside, g, 0.0)
    d_step = jnp.where(inside, jnp.round(v) - v, jnp.where(v <= -qn, -qn, qp))
    grad_step = _sum_to_shape(g * d_step, step.shape) * grad_scale
    return grad_x, grad_step


_lsq.defvjp(_lsq_fwd, _lsq_bwd)


def lsq_grad_scale(size, bits, *, signed=True):
    """LSQ's step-gradient scale 1 / sqrt(size * Qp) for `size` quantized elements."""
    _, qp = lsq_range(bits, signed)
    return 1.0 / math.sqrt(size * qp)


def lsq_init_step(x, bits, *, signed=True):
    """LSQ's initial step 2 mean|x| / sqrt(Qp), as a float32 scalar."""
    _, qp = lsq_range(bits, signed)
    return 2 * jnp.mean(jnp.abs(_as_float32(x))) / math.sqrt(qp)


def lsq(x, step, bits, *, signed=True, grad_scale=None):
    """Learned step size quantization: step * round(clip(x / step, -Qn, Qp)).

    Signed: Qn = 2**(bits-1), Qp = 2**(bits-1) - 1 (bits >= 2); unsigned: Qn = 0,
    Qp = 2**bits - 1. Both `x` and `step` get gradients: x receives g where
    -Qn < x/step < Qp (strict, as in the paper) and 0 elsewhere; step receives LSQ's
    gradient times `grad_scale`, summed over the elements that share it.

    Args:
      x: float array.
      step: positive float array broadcastable to x (a scalar, or one per channel with
        size-1 axes elsewhere).
      bits: integer in 2..16 (signed) or 1..16 (unsigned).
      signed: whether the levels are symmetric around zero (weights) or start at zero
        (activations after a ReLU).
      grad_scale: factor on the step gradient. The default is LSQ's choice for
        weights, 1 / sqrt(n * Qp), with n the number of elements that share one step.

    Raises:
      ValueError: `bits` is out of range, or `step` does not broadcast to x's shape.
    """
    lsq_range(bits, signed)
    x = _as_float32(x)
    step = _as_float32(step)
    try:
        broadcast = jnp.broadcast_shapes(step.shape, x.shape)
    except ValueError:
        broadcast = None
    if broadcast != x.shape:
        raise ValueError(f"step of shape {step.shape} does not broadcast to x of shape {x.shape}.")
    if grad_scale is None:
        grad_scale = lsq_grad_scale(x.size // max(step.size, 1), bits, signed=signed)
    return _lsq(x, step, bits, signed, float(grad_scale))
