"""LeNet-5 style networks without batch normalisation, for posit and other number formats.

Without batch norm every operation between layers is ReLU or max pooling, which are
exact in any number format, so all rounding happens in the convolution and dense layers.
"""

from typing import Callable

import flax.linen as nn


class LeNet5(nn.Module):
    """conv-ReLU-pool twice, two hidden dense layers and a linear classifier (LeCun et al., 1998).

    Input [batch, height, width, channels] float32, output logits [batch, num_classes].
    With the defaults on 28 x 28 images (the first convolution pads to keep 28 x 28)
    this is the classic 6-16-120-84-10 layout with ReLU and max pooling in place of the
    scaled tanh and subsampling of the original.

    Attributes:
      num_classes: output classes.
      widths: channels of the two 5 x 5 convolutions.
      hidden: units of the two hidden dense layers.
      first_padding: padding of the first convolution, "SAME" for 28 x 28 inputs and
        "VALID" for 32 x 32 inputs (both give 5 x 5 maps before the dense layers).
      conv, dense: layer classes with the `flax.linen.Conv` / `Dense` signature.
    """

    num_classes: int = 10
    widths: tuple[int, int] = (6, 16)
    hidden: tuple[int, int] = (120, 84)
    first_padding: str = "SAME"
    conv: Callable[..., nn.Module] = nn.Conv
    dense: Callable[..., nn.Module] = nn.Dense

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no batch norm or dropout
        paddings = (self.first_padding, "VALID")
        for index, (width, padding) in enumerate(zip(self.widths, paddings)):
            x = self.conv(features=width, kernel_size=(5, 5), padding=padding, name=f"conv{index}")(x)
            x = nn.max_pool(nn.relu(x), window_shape=(2, 2), strides=(2, 2))

        x = x.reshape(x.shape[0], -1)
        for index, units in enumerate(self.hidden):
            x = nn.relu(self.dense(features=units, name=f"hidden{index}")(x))
        return self.dense(features=self.num_classes, name="classifier")(x)
