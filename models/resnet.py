"""ResNets for 32 x 32 images in the style of He et al. (2016), section 4.2.

Depth 6n + 2: a 3x3 stem with 16 channels, three stages of n basic blocks with 16, 32
and 64 channels (the first block of stages two and three halves the resolution), global
average pooling and a linear classifier. ResNet-20 has n = 3, ResNet-56 has n = 9.

NOTE: shortcuts that change shape use a 1x1 convolution with batch norm (option B of the
paper) rather than zero-padded identities (option A), so ResNet-20 here has about 0.27M
parameters plus the few thousand of those projections.
"""

from typing import Callable

import flax.linen as nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection."""

    features: int
    strides: int
    conv: Callable[..., nn.Module]
    use_batch_norm: bool = True
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, *, train: bool):
        def norm(y, name):
            if not self.use_batch_norm:
                return y
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)(y)

        residual = x
        y = self.conv(self.features, (3, 3), strides=self.strides, use_bias=False, name="conv1")(x)
        y = self.activation(norm(y, "norm1"))
        y = self.conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
        y = norm(y, "norm2")

        if residual.shape != y.shape:
            residual = self.conv(
                self.features, (1, 1), strides=self.strides, use_bias=False, name="shortcut"
            )(residual)
            residual = norm(residual, "shortcut_norm")
        return self.activation(y + residual)


class ResNet(nn.Module):
    """CIFAR-style ResNet of depth 6 * blocks_per_stage + 2.

    Input [batch, 32, 32, 3] float32, output logits [batch, num_classes]. `activation`
    replaces every ReLU, e.g. by a quantized one.
    """

    blocks_per_stage: int = 3
    num_classes: int = 10
    widths: tuple[int, int, int] = (16, 32, 64)
    use_batch_norm: bool = True
    conv: Callable[..., nn.Module] = nn.Conv
    dense: Callable[..., nn.Module] = nn.Dense
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        x = self.conv(self.widths[0], (3, 3), use_bias=False, name="stem")(x)
        if self.use_batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_norm")(x)
        x = self.activation(x)

        for stage, width in enumerate(self.widths):
            for block in range(self.blocks_per_stage):
                strides = 2 if stage > 0 and block == 0 else 1
                x = BasicBlock(
                    width,
                    strides,
                    conv=self.conv,
                    use_batch_norm=self.use_batch_norm,
                    activation=self.activation,
                    name=f"stage{stage}_block{block}",
                )(x, train=train)

        x = x.mean(axis=(1, 2))
        return self.dense(self.num_classes, name="classifier")(x)


def resnet20(**kwargs):
    """ResNet-20: three basic blocks per stage."""
    return ResNet(blocks_per_stage=3, **kwargs)


def resnet56(**kwargs):
    """ResNet-56: nine basic blocks per stage."""
    return ResNet(blocks_per_stage=9, **kwargs)
