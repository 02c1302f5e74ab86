"""approx.posit_layers against posit.dot, posit.mul and flax.linen."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from approx import dot as dot_lib
from approx import posit
from approx import posit_layers
from approx.posit import PositFormat

FMT16 = PositFormat(16, 1)


def random_bits(key, shape, fmt, scale=1.0):
    return posit.encode(scale * jax.random.normal(key, shape), fmt)


@pytest.mark.parametrize("products", ["exact", "plam"])
def test_quire_matmul_is_dot_of_rows_and_columns(products):
    fmt = FMT16
    a = random_bits(jax.random.key(0), (9, 30), fmt)
    b = random_bits(jax.random.key(1), (30, 4), fmt)
    bias = random_bits(jax.random.key(2), (4,), fmt)
    one = jnp.full((9, 4, 1), 1 << (fmt.nbits - 2), jnp.uint32)
    rows = jnp.concatenate([jnp.broadcast_to(a[:, None, :], (9, 4, 30)), one], axis=-1)
    cols = jnp.concatenate([jnp.broadcast_to(b.T[None], (9, 4, 30)), jnp.broadcast_to(bias[None, :, None], (9, 4, 1))], axis=-1)
    expected = posit.dot(rows, cols, fmt, products=products)
    for chunk_products in (5, 37, posit_layers.DEFAULT_CHUNK_PRODUCTS):
        actual = posit_layers.matmul(a, b, fmt, products=products, bias=bias, chunk_products=chunk_products)
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize("products", ["exact", "plam"])
def test_float32_accumulation_sums_rounded_products(products):
    # posit<8,0> products are multiples of 2**-6 below 2**7, so float32 sums of 20 of
    # them are exact in any order and the expected value is unambiguous.
    fmt = PositFormat(8, 0)
    a = random_bits(jax.random.key(3), (5, 20), fmt)
    b = random_bits(jax.random.key(4), (20, 3), fmt)
    bias = random_bits(jax.random.key(5), (3,), fmt)
    multiply = posit.mul if products == "exact" else posit.plam_mul
    terms = posit.decode(multiply(a[:, :, None], b[None], fmt), fmt)
    expected = posit.encode(jnp.sum(terms, axis=1) + posit.decode(bias, fmt), fmt)
    actual = posit_layers.matmul(a, b, fmt, products=products, accumulate="float32", bias=bias)
    np.testing.assert_array_equal(actual, expected)


def test_dense_params_and_output():
    x = jax.random.normal(jax.random.key(6), (2, 3, 10))
    layer = posit_layers.Dense(4, bias_init=nn.initializers.normal(1.0))
    params = layer.init(jax.random.key(7), x)
    reference = nn.Dense(4).init(jax.random.key(7), x)
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(reference)

    y = layer.apply(params, x)
    assert y.shape == (2, 3, 4)
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    expected = posit_layers.matmul(posit.encode(x.reshape(6, 10), FMT16), posit.encode(kernel, FMT16), FMT16,
                                   bias=posit.encode(bias, FMT16))
    np.testing.assert_array_equal(posit.encode(y, FMT16).reshape(6, 4), expected)
    np.testing.assert_allclose(y, nn.Dense(4).apply(params, x), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("strides, padding", [(1, "SAME"), (2, "VALID"), ((1, 2), ((1, 0), (2, 1)))])
def test_conv_matches_quire_contraction_of_patches(strides, padding):
    x = jax.random.normal(jax.random.key(8), (2, 7, 6, 3))
    layer = posit_layers.Conv(5, (3, 3), strides=strides, padding=padding, products="plam")
    params = layer.init(jax.random.key(9), x)
    reference = nn.Conv(5, (3, 3), strides=strides, padding=padding).init(jax.random.key(9), x)
    for ours, theirs in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(ours, theirs)

    y = layer.apply(params, x)
    expected_shape = nn.Conv(5, (3, 3), strides=strides, padding=padding).apply(params, x).shape
    assert y.shape == expected_shape
    lhs, rhs = dot_lib.conv_operands(
        posit.decode(posit.encode(x, FMT16), FMT16), params["params"]["kernel"],
        strides if isinstance(strides, tuple) else (strides, strides), padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    # Our patches and the exact layers' operands must list the same products.
    _, flat_kernel = posit_layers.unfold_patches(x, params["params"]["kernel"], (1, 1), "VALID", (1, 1),
                                                 ("NHWC", "HWIO", "NHWC"))
    np.testing.assert_array_equal(flat_kernel, rhs)
    expected = posit_layers.matmul(posit.encode(lhs, FMT16), posit.encode(rhs, FMT16), FMT16, products="plam",
                                   bias=posit.encode(params["params"]["bias"], FMT16))
    np.testing.assert_array_equal(posit.encode(y, FMT16).reshape(-1, 5), expected)


def test_plam_layer_error_is_mitchell_sized():
    x = jax.random.normal(jax.random.key(10), (64, 32))
    params = posit_layers.Dense(16).init(jax.random.key(11), x)
    exact = posit_layers.Dense(16).apply(params, x)
    plam = posit_layers.Dense(16, products="plam").apply(params, x)
    assert not np.array_equal(exact, plam)
    # Each product is 0 to 11.1% small, so sums shrink by a few percent on average.
    ratio = jnp.sum(jnp.abs(plam)) / jnp.sum(jnp.abs(exact))
    assert 0.85 < float(ratio) < 1.0


def test_bad_settings_are_rejected():
    x = jnp.ones((2, 4))
    with pytest.raises(ValueError, match="accumulate='float16'"):
        posit_layers.Dense(3, accumulate="float16").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="products='mitchell'"):
        posit_layers.Dense(3, products="mitchell").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="PositFormat"):
        posit_layers.Dense(3, fmt=(16, 1)).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        posit_layers.Conv(3, (3, 3)).init(jax.random.key(0), x)
    bits = jnp.zeros((2, 3), jnp.uint32)
    with pytest.raises(ValueError, match=r"shapes \[M, K\] and \[K, N\]"):
        posit_layers.matmul(bits, bits, FMT16)
