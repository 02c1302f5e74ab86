"""Linear and multilayer-perceptron classifiers: the weak end of a ladder of models."""

from typing import Callable

import flax.linen as nn


class LinearClassifier(nn.Module):
    """Logistic regression on the flattened image.

    Input [batch, height, width, channels] float32, output logits [batch, num_classes].

    Attributes:
      num_classes: output classes.
      dense: layer class with the `flax.linen.Dense` signature.
    """

    num_classes: int = 10
    dense: Callable[..., nn.Module] = nn.Dense

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no batch norm or dropout
        x = x.reshape(x.shape[0], -1)
        return self.dense(features=self.num_classes, name="classifier")(x)


class MLP(nn.Module):
    """Fully connected ReLU layers on the flattened image, then a linear classifier.

    Input [batch, height, width, channels] float32, output logits [batch, num_classes].

    Attributes:
      num_classes: output classes.
      hidden: units of each hidden layer, input side first.
      dense: layer class with the `flax.linen.Dense` signature.
      activation: elementwise nonlinearity after each hidden layer.
    """

    num_classes: int = 10
    hidden: tuple[int, ...] = (256,)
    dense: Callable[..., nn.Module] = nn.Dense
    activation: Callable = nn.relu

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train  # no batch norm or dropout
        x = x.reshape(x.shape[0], -1)
        for index, units in enumerate(self.hidden):
            x = self.activation(self.dense(features=units, name=f"hidden{index}")(x))
        return self.dense(features=self.num_classes, name="classifier")(x)
