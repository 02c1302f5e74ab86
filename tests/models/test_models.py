"""Architectures: output shapes, parameter counts and injected layer classes."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from approx import layers
from models import MnistCNN, resnet20


def count(params):
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def test_mnist_cnn_shapes_and_batch_norm():
    model = MnistCNN()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert set(variables) == {"params", "batch_stats"}
    logits = model.apply(variables, jnp.zeros((3, 28, 28, 1)))
    assert logits.shape == (3, 10)
    plain = MnistCNN(use_batch_norm=False).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert set(plain) == {"params"}


def test_resnet20_parameter_count_and_shape():
    model = resnet20()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # 0.27M in He et al. (2016) with identity shortcuts; projections add 2,752 weights
    # and 192 batch-norm parameters.
    assert 270_000 < count(variables["params"]) < 276_000
    assert model.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_injected_layers_reuse_flax_parameters():
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = resnet20().init(jax.random.key(2), x)
    approximate = resnet20(
        conv=functools.partial(layers.Conv, multiplier="exact"),
        dense=functools.partial(layers.Dense, multiplier="exact"),
    )
    np.testing.assert_allclose(
        approximate.apply(variables, x), resnet20().apply(variables, x), rtol=1e-4, atol=1e-4
    )


def test_batch_norm_statistics_update_in_training():
    model = MnistCNN(conv=nn.Conv, dense=nn.Dense)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = variables["batch_stats"]["norm0"]["mean"]
    after = updates["batch_stats"]["norm0"]["mean"]
    assert not np.allclose(before, after)


def test_activation_replaces_every_relu():
    calls = []

    def counting_relu(x):
        calls.append(x.shape)
        return nn.relu(x)

    x = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
    variables = resnet20().init(jax.random.key(4), x)
    logits = resnet20(activation=counting_relu).apply(variables, x)
    # The stem, then two per basic block: 1 + 2 * 9.
    assert len(calls) == 19
    np.testing.assert_array_equal(logits, resnet20().apply(variables, x))

    calls.clear()
    images = jnp.zeros((1, 28, 28, 1))
    cnn_variables = MnistCNN().init(jax.random.key(5), images)
    MnistCNN(activation=counting_relu).apply(cnn_variables, images)
    assert len(calls) == 3


def test_linear_and_mlp_shapes_and_parameter_counts():
    from models import MLP, LinearClassifier

    x = jnp.zeros((3, 28, 28, 1))
    linear = LinearClassifier().init(jax.random.key(0), x)
    assert count(linear["params"]) == 784 * 10 + 10
    assert LinearClassifier().apply(linear, x).shape == (3, 10)
    mlp = MLP(hidden=(32, 16)).init(jax.random.key(0), x)
    assert count(mlp["params"]) == (784 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    assert MLP(hidden=(32, 16)).apply(mlp, x).shape == (3, 10)
