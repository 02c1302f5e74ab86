"""Flax networks of the agent and of the intrinsic-reward modules.

Observations are float32 [batch, height, width, channels]. Every module takes its
sizes as fields, so the presets scale them from CPU-sized to the published sizes.
"""

from typing import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

TORSOS = ("mlp", "cnn")


def _kernel_init(scale):
    """Gaussian kernels of variance scale^2 / fan_in, the gain of PPO's usual orthogonal init.

    Not orthogonal: jaxlib 0.10.2's CPU QR kernel, which `nn.initializers.orthogonal`
    calls, was seen to deadlock when `train` is vmapped over seeds.
    """
    return nn.initializers.variance_scaling(scale**2, "fan_in", "truncated_normal")


def neighbourhoods(x):
    """Stack the 3x3 neighbourhood of every cell, zero-padded at the border.

    [batch, height, width, channels] -> [batch, height, width, 9 * channels]. A dense
    layer on the result is a 3x3 convolution with "SAME" padding.
    """
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [padded[:, row:row + height, column:column + width, :] for row in range(3) for column in range(3)]
    return jnp.concatenate(shifted, axis=-1)


class Conv3x3(nn.Module):
    """3x3 convolution with "SAME" padding, written as a dense layer on `neighbourhoods`.

    On XLA's CPU backend (jaxlib 0.10.2) `nn.Conv` inside `train`'s scans ran several
    times slower than these slices and one matrix product, gradient included.
    """

    features: int
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, kernel_init=self.kernel_init)(neighbourhoods(x))


def _dense(features, scale=np.sqrt(2.0)):
    return nn.Dense(features, kernel_init=_kernel_init(scale), bias_init=nn.initializers.zeros)


class Torso(nn.Module):
    """Observation encoder: "mlp" (two dense layers on the flattened input) or "cnn".

    The "cnn" torso is two 3x3 convolutions (16 and 32 channels) and a dense layer, the
    size of the MinAtar baseline network.
    """

    kind: str = "mlp"
    hidden: int = 64

    @nn.compact
    def __call__(self, obs):
        x = obs
        if self.kind == "cnn":
            x = nn.relu(Conv3x3(16, kernel_init=_kernel_init(np.sqrt(2.0)))(x))
            x = nn.relu(Conv3x3(32, kernel_init=_kernel_init(np.sqrt(2.0)))(x))
            x = x.reshape(x.shape[0], -1)
            return nn.relu(_dense(self.hidden)(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.tanh(_dense(self.hidden)(x))
        return nn.tanh(_dense(self.hidden)(x))


class ActorCritic(nn.Module):
    """Policy with two value heads, extrinsic and intrinsic, on a shared torso.

    Returns (logits [batch, actions], extrinsic value [batch], intrinsic value [batch]).
    """

    num_actions: int
    hidden: int = 64
    torso: str = "mlp"

    @nn.compact
    def __call__(self, obs):
        features = Torso(self.torso, self.hidden)(obs)
        actor = nn.tanh(_dense(self.hidden)(features))
        logits = _dense(self.num_actions, scale=0.01)(actor)
        critic = nn.tanh(_dense(self.hidden)(features))
        values = _dense(2, scale=1.0)(critic)
        return logits, values[:, 0], values[:, 1]


class ConvBody(nn.Module):
    """`layers` 3x3 convolutions with `channels` channels and ReLU, spatial size kept.

    Returns [batch, height, width, channels], or the input unchanged when `layers` is 0.
    """

    channels: int = 32
    layers: int = 3

    @nn.compact
    def __call__(self, obs):
        x = obs
        for _ in range(self.layers):
            x = nn.relu(Conv3x3(self.channels)(x))
        return x


class MLP(nn.Module):
    """Dense layers with ReLU between them; `sizes[-1]` is the output size."""

    sizes: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for index, size in enumerate(self.sizes):
            x = nn.Dense(size)(x)
            if index < len(self.sizes) - 1:
                x = nn.relu(x)
        return x


def flatten(x):
    """Flatten every axis but the first."""
    return x.reshape(x.shape[0], -1)


class RNDNetwork(nn.Module):
    """Convolutional body and MLP that embed an observation ([batch, features])."""

    channels: int
    conv_layers: int
    sizes: Sequence[int]

    @nn.compact
    def __call__(self, obs):
        return MLP(self.sizes)(flatten(ConvBody(self.channels, self.conv_layers)(obs)))


class ICMNetwork(nn.Module):
    """Feature encoder, inverse model and forward model of the intrinsic curiosity module."""

    num_actions: int
    channels: int
    conv_layers: int
    hidden: int
    features: int

    def setup(self):
        self.body = ConvBody(self.channels, self.conv_layers)
        self.embed = nn.Dense(self.features)
        self.inverse = MLP((self.hidden, self.num_actions))
        self.forward_model = MLP((self.hidden, self.features))

    def encode(self, obs):
        return self.embed(flatten(self.body(obs)))

    def predict_action(self, features, next_features):
        return self.inverse(jnp.concatenate([features, next_features], axis=-1))

    def predict_next(self, features, action):
        one_hot = nn.one_hot(action, self.num_actions)
        return self.forward_model(jnp.concatenate([features, one_hot], axis=-1))

    def __call__(self, obs, action, next_obs):
        features, next_features = self.encode(obs), self.encode(next_obs)
        return self.predict_action(features, next_features), self.predict_next(features, action)


class InverseDynamics(nn.Module):
    """TeCLE's feature network: a convolutional body trained to predict a_t from (s_t, s_t+1).

    `features` returns the body's output [batch, height, width, channels];
    `predict_action` maps the features of both observations to action logits
    [batch, actions], and calling the module does both.
    """

    num_actions: int
    channels: int
    conv_layers: int
    hidden: int

    def setup(self):
        self.body = ConvBody(self.channels, self.conv_layers)
        self.head = MLP((self.hidden, self.num_actions))

    def features(self, obs):
        return self.body(obs)

    def predict_action(self, features, next_features):
        return self.head(jnp.concatenate([flatten(features), flatten(next_features)], axis=-1))

    def __call__(self, obs, next_obs):
        return self.predict_action(self.body(obs), self.body(next_obs))


class CVAE(nn.Module):
    """Conditional VAE of feature maps given the action, with externally drawn noise.

    Layout of the TeCLE authors' network: 1x1 convolutions, an MLP to a hidden code,
    the action embedding appended, separate MLP heads for the mean and log-variance of
    the latent, and an MLP decoder whose sigmoid is the reconstruction. The noise `eps`
    [batch, latent] of the reparameterisation z = mean + eps * exp(logvar / 2) is an
    argument, so the caller chooses its colour.

    Returns (reconstruction logits of the input's shape, mean [batch, latent],
    log-variance [batch, latent]).
    """

    num_actions: int
    latent: int = 16
    condition: int = 16
    encoder_channels: Sequence[int] = (64, 64)
    encoder_hidden: Sequence[int] = (256, 128)
    head_hidden: int = 64
    decoder_hidden: Sequence[int] = (64, 128, 256)

    @nn.compact
    def __call__(self, features, action, eps):
        condition = nn.Embed(self.num_actions, self.condition)(action)
        x = features
        for channels in self.encoder_channels:
            x = nn.relu(nn.Dense(channels)(x))  # a 1x1 convolution
        code = nn.relu(MLP(self.encoder_hidden)(flatten(x)))
        code = jnp.concatenate([code, condition], axis=-1)
        mean = MLP((self.head_hidden, self.latent), name="mean")(code)
        logvar = MLP((self.head_hidden, self.latent), name="logvar")(code)

        z = mean + eps * jnp.exp(0.5 * logvar)
        output_size = int(np.prod(features.shape[1:]))
        decoded = MLP(tuple(self.decoder_hidden) + (output_size,))(jnp.concatenate([z, condition], axis=-1))
        return decoded.reshape(features.shape), mean, logvar
