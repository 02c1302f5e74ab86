"""The matrix-product 3x3 convolution against flax's convolution."""

import flax.linen as nn
import jax
import numpy as np

from rl import networks


def test_conv3x3_matches_flax_conv():
    x_key, init_key = jax.random.split(jax.random.key(0))
    x = jax.random.normal(x_key, (2, 5, 6, 3))
    conv = nn.Conv(4, (3, 3), padding="SAME")
    params = conv.init(init_key, x)
    kernel = params["params"]["kernel"]  # [3, 3, in, out]
    ours = {"params": {"Dense_0": {"kernel": kernel.reshape(9 * 3, 4), "bias": params["params"]["bias"]}}}

    expected = conv.apply(params, x)
    actual = networks.Conv3x3(4).apply(ours, x)
    assert actual.shape == (2, 5, 6, 4)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
