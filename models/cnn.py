"""A small convolutional network with batch normalisation for 28 x 28 grey images."""

from typing import Callable

import flax.linen as nn


class MnistCNN(nn.Module):
    """conv-BN-ReLU-pool twice, then a hidden dense layer and a linear classifier.

    Input [batch, 28, 28, 1] float32, output logits [batch, num_classes].

    Attributes:
      num_classes: output classes.
      widths: channels of the two convolutions.
      hidden: units of the hidden dense layer.
      use_batch_norm: insert BatchNorm after each convolution and the hidden layer.
      conv, dense: layer classes with the `flax.linen.Conv` / `Dense` signature.
      activation: elementwise nonlinearity after each normalisation, e.g. a quantized
        ReLU.
    """

    num_classes: int = 10
    widths: tuple[int, int] = (32, 64)
    hidden: int = 128
    use_batch_norm: bool = True
    conv: Callable[..., nn.Module] = nn.Conv
    dense: Callable[..., nn.Module] = nn.Dense
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        def norm(y, name):
            if not self.use_batch_norm:
                return y
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(y)

        for index, width in enumerate(self.widths):
            x = self.conv(features=width, kernel_size=(3, 3), name=f"conv{index}")(x)
            x = self.activation(norm(x, f"norm{index}"))
            x = nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))

        x = x.reshape(x.shape[0], -1)
        x = self.dense(features=self.hidden, name="hidden")(x)
        x = self.activation(norm(x, "norm_hidden"))
        return self.dense(features=self.num_classes, name="classifier")(x)
