"""Quantizers and their straight-through gradients against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from quant import quantizers
from quant.quantizers import binarize, dorefa_activations, dorefa_weights, lsq, uniform_symmetric

W = np.array([-1.5, -0.3, 0.0, 0.2, 0.9, 2.0], np.float32)
MEAN_ABS_W = np.float32(4.9 / 6)
# Every test runs the quantizer eagerly and under jit, which must agree.
MODES = [pytest.param(lambda f: f, id="eager"), pytest.param(jax.jit, id="jit")]
# Scales recomputed from quantized values sum n equal float32 magnitudes, which XLA
# rounds to within a few units in the last place (2**-23 relative each).
SCALE_RTOL = 2**-21


def grad_of(quantizer, x, cotangent):
    """Gradient of sum(quantizer(x) * cotangent) with respect to x."""
    return jax.grad(lambda v: jnp.sum(quantizer(v) * cotangent))(jnp.asarray(x))


@pytest.mark.parametrize("mode", MODES)
def test_dorefa_weights_one_bit(mode):
    out = mode(lambda w: dorefa_weights(w, 1))(W)
    expected = MEAN_ABS_W * np.array([-1, -1, 1, 1, 1, 1], np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-7)
    cotangent = np.arange(6, dtype=np.float32)
    grad = mode(lambda w: grad_of(lambda v: dorefa_weights(v, 1), w, cotangent))(W)
    np.testing.assert_array_equal(grad, cotangent)


@pytest.mark.parametrize("mode", MODES)
def test_dorefa_weights_two_bits(mode):
    # tanh(W) / tanh(2) = [-0.939, -0.302, 0, 0.205, 0.743, 1]; r = that / 2 + 1/2;
    # round(3 r) = [0, 1, 2 (1.5 to even), 2, 3, 3]; output 2 n / 3 - 1.
    out = mode(lambda w: dorefa_weights(w, 2))(W)
    np.testing.assert_allclose(out, [-1, -1 / 3, 1 / 3, 1 / 3, 1, 1], rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_dorefa_weights_gradient_is_tanh_normalised(mode):
    cotangent = np.array([0.5, -1.0, 2.0, 1.0, 3.0, -2.0], np.float32)
    grad = mode(lambda w: grad_of(lambda v: dorefa_weights(v, 3), w, cotangent))(W)
    # d(t_i / M) / dw_j = delta_ij (1 - t_i^2) / M - t_i (1 - t_j^2) / M^2 for j the
    # argmax of |t| (here the last element, t > 0).
    t = np.tanh(W.astype(np.float64))
    peak = t[-1]
    expected = cotangent * (1 - t**2) / peak
    expected[-1] -= np.sum(cotangent * t) * (1 - peak**2) / peak**2
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_dorefa_weights_zero_maps_to_positive_level():
    for bits in (2, 3, 8):
        out = dorefa_weights(np.zeros((4,), np.float32), bits)
        np.testing.assert_allclose(out, np.full(4, 1 / (2**bits - 1)), rtol=1e-6)


def test_dorefa_weights_levels_and_idempotence():
    w = jax.random.normal(jax.random.key(0), (512,))
    for bits in (2, 3, 4, 6):
        levels = 2**bits - 1
        out = np.asarray(dorefa_weights(w, bits), np.float64)
        codes = out * levels
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert np.all(np.round(codes) % 2 == 1)  # odd multiples of 1/L only
        assert out.min() == -1
        assert out.max() == 1
    for bits in (2, 3):
        once = dorefa_weights(w, bits)
        np.testing.assert_array_equal(dorefa_weights(once, bits), once)
    # k = 4 maps the level 11/15 to 13/15, as the module docstring states.
    level = np.float32(11 / 15)
    np.testing.assert_allclose(dorefa_weights(np.array([level, 1.0], np.float32), 4)[0], 13 / 15, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_dorefa_activations_values_and_gradient(mode):
    x = np.array([-0.5, 0.0, 0.5, 0.75, 1.0, 1.2], np.float32)
    # One bit: round(0.5) = 0 (half to even), round(0.75) = 1.
    np.testing.assert_array_equal(mode(lambda v: dorefa_activations(v, 1))(x), [0, 0, 0, 1, 1, 1])
    # Two bits: 3 * 0.5 = 1.5 rounds to 2, 3 * 0.75 = 2.25 rounds to 2.
    np.testing.assert_allclose(
        mode(lambda v: dorefa_activations(v, 2))(x), [0, 0, 2 / 3, 2 / 3, 1, 1], rtol=1e-7
    )
    cotangent = np.arange(1, 7, dtype=np.float32)
    grad = mode(lambda v: grad_of(lambda u: dorefa_activations(u, 2), v, cotangent))(x)
    np.testing.assert_array_equal(grad, [0, 2, 3, 4, 5, 0])


@pytest.mark.parametrize("mode", MODES)
def test_binarize_values_and_clipped_gradient(mode):
    out = mode(binarize)(W)
    np.testing.assert_allclose(out, MEAN_ABS_W * np.array([-1, -1, 1, 1, 1, 1]), rtol=1e-7)
    cotangent = np.arange(1, 7, dtype=np.float32)
    grad = mode(lambda w: grad_of(binarize, w, cotangent))(W)
    np.testing.assert_array_equal(grad, [0, 2, 3, 4, 5, 0])


def test_binarize_gradient_boundary_is_inclusive():
    w = np.array([1.0, -1.0, np.nextafter(np.float32(1), np.float32(2))], np.float32)
    grad = grad_of(binarize, w, np.ones(3, np.float32))
    np.testing.assert_array_equal(grad, [1, 1, 0])


def test_binarize_per_channel_scale():
    w = np.array([[1.0, -3.0], [-1.0, 1.0]], np.float32)
    np.testing.assert_array_equal(binarize(w, channel_axis=-1), [[1, -2], [-1, 2]])
    np.testing.assert_array_equal(binarize(w, channel_axis=0), [[2, -2], [-1, 1]])


@pytest.mark.parametrize("mode", MODES)
def test_uniform_symmetric_values_and_gradient(mode):
    # 3 bits: levels -3..3 times s = max|W| / 3 = 2/3; W / s = [-2.25, -0.45, 0, 0.3, 1.35, 3].
    out = mode(lambda w: uniform_symmetric(w, 3))(W)
    np.testing.assert_allclose(out, [-4 / 3, 0, 0, 0, 2 / 3, 2], rtol=1e-7)
    assert not np.any(np.signbit(out[1:4]))  # round(-0.45) gives +0, not -0
    cotangent = np.arange(1, 7, dtype=np.float32)
    grad = mode(lambda w: grad_of(lambda v: uniform_symmetric(v, 3), w, cotangent))(W)
    np.testing.assert_array_equal(grad, cotangent)


def test_uniform_symmetric_rounds_half_to_even():
    # s = 3 / 3 = 1, so the inputs are their own scaled values.
    out = uniform_symmetric(np.array([0.5, 1.5, 2.5, 3.0, -2.5], np.float32), 3)
    np.testing.assert_array_equal(out, [0, 2, 2, 3, -2])


def test_uniform_symmetric_per_channel_scale():
    # 2 bits: levels -1, 0, 1; column scales 1 and 4.
    w = np.array([[1.0, 4.0], [-0.5, -2.0]], np.float32)
    np.testing.assert_array_equal(uniform_symmetric(w, 2, channel_axis=-1), [[1, 4], [0, 0]])


def test_uniform_symmetric_error_bound():
    # Rounding to the nearest level moves each weight by at most half a step.
    w = np.asarray(jax.random.normal(jax.random.key(1), (3, 3, 8, 16)))
    for bits in (2, 4, 8, 16):
        out = np.asarray(uniform_symmetric(w, bits, channel_axis=-1))
        scale = np.abs(w).max(axis=(0, 1, 2)) / (2 ** (bits - 1) - 1)
        assert np.all(np.abs(out - w) <= scale / 2 * (1 + 1e-5))


def test_zero_tensor_quantizes_to_zero():
    zeros = np.zeros((2, 3), np.float32)
    for out in (binarize(zeros), binarize(zeros, channel_axis=1), uniform_symmetric(zeros, 4),
                uniform_symmetric(zeros, 4, channel_axis=0)):
        np.testing.assert_array_equal(out, zeros)
        assert not np.any(np.signbit(out))


def test_nan_spreads_to_shared_scale():
    w = np.array([[np.nan, 1.0], [2.0, -1.0]], np.float32)
    for bits in (1, 2, 4):
        assert np.all(np.isnan(dorefa_weights(w, bits)))
    assert np.all(np.isnan(binarize(w)))
    per_column = np.asarray(uniform_symmetric(w, 4, channel_axis=1))
    assert np.all(np.isnan(per_column[:, 0]))
    np.testing.assert_allclose(per_column[:, 1], [1, -1], rtol=1e-7)


@pytest.mark.parametrize("channel_axis", [None, -1])
def test_quantizers_are_idempotent(channel_axis):
    w = jax.random.normal(jax.random.key(2), (3, 3, 16, 32))
    for quantize in (lambda v: binarize(v, channel_axis=channel_axis),
                     lambda v: uniform_symmetric(v, 4, channel_axis=channel_axis),
                     lambda v: uniform_symmetric(v, 8, channel_axis=channel_axis)):
        once = quantize(w)
        np.testing.assert_allclose(quantize(once), once, rtol=SCALE_RTOL, atol=0)
    once = dorefa_activations(w, 3)
    np.testing.assert_array_equal(dorefa_activations(once, 3), once)
    once = lsq(w, 0.25, 4)
    np.testing.assert_array_equal(lsq(once, 0.25, 4), once)


@pytest.mark.parametrize("mode", MODES)
def test_lsq_values_and_gradients(mode):
    x = np.array([-2.0, -0.6, 0.2, 0.74, 1.3, 5.0], np.float32)
    step = np.float32(0.5)
    # 3 bits signed: Qn = 4, Qp = 3; x / step = [-4, -1.2, 0.4, 1.48, 2.6, 10].
    out = mode(lambda v, s: lsq(v, s, 3, grad_scale=1.0))(x, step)
    np.testing.assert_allclose(out, [-2, -0.5, 0, 0.5, 1.5, 1.5], rtol=1e-7)

    def loss(v, s):
        return jnp.sum(lsq(v, s, 3, grad_scale=1.0))

    grad_x, grad_step = mode(jax.grad(loss, argnums=(0, 1)))(x, step)
    # x / step = -4 sits on the lower limit, outside the strict interior.
    np.testing.assert_array_equal(grad_x, [0, 1, 1, 1, 1, 0])
    # Per element: -Qn, round(v) - v inside, Qp above: -4 + 0.2 - 0.4 - 0.48 + 0.4 + 3.
    np.testing.assert_allclose(grad_step, -1.28, rtol=1e-5)
    _, scaled = jax.grad(lambda v, s: jnp.sum(lsq(v, s, 3)), argnums=(0, 1))(x, step)
    np.testing.assert_allclose(scaled, -1.28 / np.sqrt(6 * 3), rtol=1e-5)


def test_lsq_unsigned_and_per_channel_step():
    x = np.array([[-1.0, 0.2], [0.9, 7.0]], np.float32)
    # 2 bits unsigned: codes 0..3.
    np.testing.assert_allclose(lsq(x, 0.5, 2, signed=False), [[0, 0], [1, 1.5]], rtol=1e-7)
    steps = np.array([[0.5, 2.0]], np.float32)
    out = lsq(x, steps, 2, signed=False)
    np.testing.assert_allclose(out, [[0, 0], [1, 6]], rtol=1e-7)  # 7 / 2 clips to Qp = 3
    grad = jax.grad(lambda s: jnp.sum(lsq(x, s, 2, signed=False, grad_scale=1.0)))(steps)
    assert grad.shape == (1, 2)
    # Column 0: x/s = [-2, 1.8]: 0 (at -Qn = 0) and round(1.8) - 1.8 = 0.2.
    # Column 1: x/s = [0.1, 3.5]: round(0.1) - 0.1 = -0.1 and Qp = 3.
    np.testing.assert_allclose(grad, [[0.2, 2.9]], rtol=1e-5)


def test_lsq_init_step():
    x = np.array([1.0, -3.0], np.float32)
    np.testing.assert_allclose(quantizers.lsq_init_step(x, 3), 2 * 2 / np.sqrt(3), rtol=1e-6)


@pytest.mark.parametrize("bits", [0, 17, -1, 2.0, True, "4", None])
def test_invalid_bits_are_rejected(bits):
    for quantize in (lambda w: dorefa_weights(w, bits), lambda w: dorefa_activations(w, bits),
                     lambda w: uniform_symmetric(w, bits), lambda w: lsq(w, 0.1, bits)):
        with pytest.raises(ValueError, match=rf"bits={bits!r} is not a valid bit width"):
            quantize(W)


def test_one_bit_rejected_without_levels():
    with pytest.raises(ValueError, match=r"bits=1 .* integer in 2\.\.16"):
        uniform_symmetric(W, 1)
    with pytest.raises(ValueError, match=r"bits=1 .* integer in 2\.\.16"):
        lsq(W, 0.1, 1)
    np.testing.assert_array_equal(lsq(W, 1.0, 1, signed=False), [0, 0, 0, 0, 1, 1])


def test_invalid_channel_axis_and_step_shape_are_rejected():
    with pytest.raises(ValueError, match=r"channel_axis=2 is invalid for an array of rank 2"):
        binarize(np.ones((2, 3), np.float32), channel_axis=2)
    with pytest.raises(ValueError, match=r"channel_axis=-3"):
        uniform_symmetric(np.ones((2, 3), np.float32), 4, channel_axis=-3)
    with pytest.raises(ValueError, match=r"step of shape \(2,\) does not broadcast"):
        lsq(np.ones((2, 3), np.float32), np.ones((2,), np.float32), 4)
