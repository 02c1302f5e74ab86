"""approx.layers against flax.linen: parameters, shapes and outputs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import approx
from approx import layers


def test_dense_params_match_flax():
    x = jnp.ones((2, 5, 7))
    ours = layers.Dense(4).init(jax.random.key(0), x)
    theirs = nn.Dense(4).init(jax.random.key(0), x)
    assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(theirs)
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("strides,padding", [(1, "SAME"), (2, "VALID"), ((2, 1), ((1, 1), (0, 2)))])
def test_conv_params_and_exact_output_match_flax(strides, padding):
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 3))
    ours = layers.Conv(5, (3, 3), strides=strides, padding=padding)
    theirs = nn.Conv(5, (3, 3), strides=strides, padding=padding)
    params = ours.init(jax.random.key(2), x)
    reference = theirs.init(jax.random.key(2), x)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), rtol=1e-5, atol=1e-5)


def test_layers_accept_name_multiplier_and_function():
    x = jax.random.normal(jax.random.key(3), (4, 6))
    params = layers.Dense(3).init(jax.random.key(4), x)
    by_name = layers.Dense(3, multiplier="mitchell").apply(params, x)
    by_object = layers.Dense(3, multiplier=approx.get_multiplier("mitchell", w=23)).apply(params, x)
    by_function = layers.Dense(3, multiplier=approx.mitchell_mul).apply(params, x)
    np.testing.assert_array_equal(by_name, by_object)
    np.testing.assert_allclose(by_function, by_name, rtol=1e-6, atol=1e-6)
    exact = layers.Dense(3).apply(params, x)
    assert not np.allclose(by_name, exact, rtol=1e-4, atol=0)


def test_mitchell_dense_output_is_mitchell_dot_plus_bias():
    x = jax.random.normal(jax.random.key(5), (3, 8))
    module = layers.Dense(2, multiplier=approx.get_multiplier("mitchell", w=4),
                          bias_init=nn.initializers.ones)
    params = module.init(jax.random.key(6), x)
    kernel = params["params"]["kernel"]
    products = approx.mitchell_mul(x[:, :, None], kernel[None], w=4)
    expected = np.asarray(products, np.float64).sum(axis=1) + 1.0
    np.testing.assert_allclose(module.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_operands_are_recorded_only_when_requested():
    x = jax.random.normal(jax.random.key(7), (2, 6, 6, 3))
    module = layers.Conv(4, (3, 3))
    variables = module.init(jax.random.key(8), x)
    assert set(variables) == {"params"}
    _, state = module.apply(variables, x, mutable=[layers.OPERANDS])
    (lhs,), (rhs,) = state[layers.OPERANDS]["lhs"], state[layers.OPERANDS]["rhs"]
    assert lhs.shape == (2 * 6 * 6, 27)
    assert rhs.shape == (27, 4)
    np.testing.assert_allclose(lhs @ rhs + variables["params"]["bias"],
                               module.apply(variables, x).reshape(-1, 4), rtol=1e-5, atol=1e-5)


def test_conv_rejects_bad_arguments():
    x = jnp.ones((1, 5, 5, 2))
    with pytest.raises(ValueError, match="padding='FULL'"):
        layers.Conv(3, (3, 3), padding="FULL").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        layers.Conv(3, (3, 3)).init(jax.random.key(0), jnp.ones((5, 5, 2)))
    with pytest.raises(ValueError, match="strides="):
        layers.Conv(3, (3, 3), strides=(1, 1, 1)).init(jax.random.key(0), x)


def test_layer_class_plugs_into_partial():
    conv = functools.partial(layers.Conv, multiplier=approx.get_multiplier("bf16"))
    x = jnp.ones((1, 4, 4, 1))
    variables = conv(2, (3, 3)).init(jax.random.key(0), x)
    assert conv(2, (3, 3)).apply(variables, x).shape == (1, 4, 4, 2)


def test_output_scales_apply_per_layer_path():
    from models import MnistCNN

    x = jax.random.normal(jax.random.key(9), (2, 28, 28, 1))
    plain = MnistCNN(conv=layers.Conv, dense=layers.Dense, use_batch_norm=False)
    variables = plain.init(jax.random.key(10), x)
    scales = {"classifier": 2.0}
    scaled = MnistCNN(conv=functools.partial(layers.Conv, output_scales=scales),
                      dense=functools.partial(layers.Dense, output_scales=scales), use_batch_norm=False)
    bias = variables["params"]["classifier"]["bias"]
    expected = 2.0 * (plain.apply(variables, x) - bias) + bias
    np.testing.assert_allclose(scaled.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
    _, state = plain.apply(variables, x, mutable=["intermediates"], capture_intermediates=True)
    assert "classifier" in state["intermediates"]
