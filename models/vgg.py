"""A VGG-style network for 32 x 32 images: stacked 3x3 convolutions, pooling, dense head."""

from typing import Callable, Sequence

import flax.linen as nn

# Channels per convolution, "M" for 2x2 max pooling: six convolutions in three stages.
VGG_SMALL = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class VGG(nn.Module):
    """conv-BN-ReLU stacks with max pooling, then a hidden dense layer and a classifier.

    Input [batch, 32, 32, channels] float32, output logits [batch, num_classes].
    """

    layers: Sequence[int | str] = VGG_SMALL
    hidden: int = 256
    num_classes: int = 10
    use_batch_norm: bool = True
    conv: Callable[..., nn.Module] = nn.Conv
    dense: Callable[..., nn.Module] = nn.Dense

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        def norm(y, name):
            if not self.use_batch_norm:
                return y
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(y)

        index = 0
        for item in self.layers:
            if item == "M":
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
                continue
            x = self.conv(int(item), (3, 3), use_bias=False, name=f"conv{index}")(x)
            x = nn.relu(norm(x, f"norm{index}"))
            index += 1

        x = x.reshape(x.shape[0], -1)
        x = nn.relu(norm(self.dense(self.hidden, name="hidden")(x), "norm_hidden"))
        return self.dense(self.num_classes, name="classifier")(x)
