"""LeNet-5: output shapes and parameter count."""

import jax
import jax.numpy as jnp

from models.lenet import LeNet5


def count(params):
    return sum(x.size for x in jax.tree_util.tree_leaves(params))


def test_lenet5_shapes_and_parameter_count():
    mnist = LeNet5()
    variables = mnist.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    assert set(variables) == {"params"}
    # Classic LeNet-5: 156 + 2,416 convolution and 48,120 + 10,164 + 850 dense parameters.
    assert count(variables["params"]) == 61_706
    assert mnist.apply(variables, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)

    cifar = LeNet5(first_padding="VALID")
    variables = cifar.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert cifar.apply(variables, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)
