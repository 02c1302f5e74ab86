"""Named models of a ladder, from weak to strong, built with plain Flax layers."""

import flax.linen as nn

from models import MLP, LinearClassifier, MnistCNN, resnet20, resnet56

# Name -> (description for reports, factory taking num_classes). Listed weak to strong.
MODELS = {
    "linear": ("linear (logistic regression)", lambda n: LinearClassifier(num_classes=n, dense=nn.Dense)),
    "mlp": ("MLP, one hidden layer of 256", lambda n: MLP(num_classes=n, hidden=(256,), dense=nn.Dense)),
    "cnn": ("CNN, 2 conv layers + BN", lambda n: MnistCNN(num_classes=n, conv=nn.Conv, dense=nn.Dense)),
    "resnet20": ("ResNet-20", lambda n: resnet20(num_classes=n, conv=nn.Conv, dense=nn.Dense)),
    "resnet56": ("ResNet-56", lambda n: resnet56(num_classes=n, conv=nn.Conv, dense=nn.Dense)),
}


def check_names(names):
    """Raise ValueError for an unknown model name or a ladder of fewer than two models."""
    unknown = [name for name in names if name not in MODELS]
    if unknown:
        raise ValueError(f"unknown model names {unknown}; valid names are {list(MODELS)}.")
    if len(names) < 2:
        raise ValueError(f"a ladder needs at least two models, got {list(names)}.")
    if len(set(names)) != len(names):
        raise ValueError(f"ladder {list(names)} names a model twice; each rung must differ.")


def build(name, num_classes=10):
    """Build the Flax module of model `name`."""
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid names are {list(MODELS)}.")
    _, factory = MODELS[name]
    return factory(num_classes)


def describe(name):
    """Return the report description of model `name`."""
    return MODELS[name][0]
