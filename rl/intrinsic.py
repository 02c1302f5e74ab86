"""Intrinsic-reward modules behind one interface: none, RND, ICM and TeCLE.

`make(config, num_actions)` returns an `Intrinsic` of three pure functions:

    init(key, obs_shape)               -> IntrinsicState
    reward(state, transitions, key)    -> (rewards [time, envs], noise [time, envs, k])
    update(state, transitions, noise)  -> (IntrinsicState, metrics)

`reward` takes a whole rollout (transitions [time, envs, ...]) so that TeCLE can draw
noise correlated along time. It returns the noise it drew, one row per transition, and
`update` trains on minibatches of transitions together with their noise rows, so the
reward and the loss of a transition see the same draw. Methods without noise return
k = 0 columns. Observations arrive normalised by the caller.

- RND (Burda et al., 2018): the error of a trained predictor of a fixed random
  network's embedding of s_t+1.
- ICM (Pathak et al., 2017): the error of a forward model predicting the features of
  s_t+1 from those of s_t and a_t, in a feature space trained by an inverse model that
  predicts a_t. The forward loss does not shape the features.
- TeCLE (Oh, Kim and Kim, 2024, arXiv:2412.04775): the reconstruction error of a
  conditional VAE over inverse-dynamics features of s_t+1, conditioned on a_t, with
  coloured noise in its reparameterisation. With noise_axis="time" the noise of each
  environment and latent dimension is correlated along the rollout's time axis; with
  "latent" it is correlated along the latent axis of each transition, as the authors'
  public code draws it. The axis, like beta, is a value of the state (`frozen`), so
  one compiled program can sweep both.

Deviations of TeCLE from the authors' code: the reward is the squared error between
the reconstruction and sigmoid(features), the target the CVAE is trained on, where their
code compares it with the raw features; the CVAE has no batch normalisation; the loss
is the per-transition ELBO (binary cross-entropy averaged over features plus
`kl_weight` times the KL divergence), where their code sums the KL divergence over the
minibatch, which equals kl_weight = minibatch size.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rl import networks
from rl.noise import check_beta, powerlaw_noise

METHODS = ("none", "rnd", "icm", "tecle")
NOISE_AXES = ("time", "latent")


@dataclasses.dataclass(frozen=True, kw_only=True)
class IntrinsicConfig:
    """Intrinsic-reward method and its network sizes. Defaults are the TeCLE authors' sizes."""

    method: str = "none"
    """none, rnd, icm or tecle."""
    learning_rate: float = 1e-3
    """Adam learning rate of the module's networks."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip of the module's update."""
    channels: int = 32
    """Channels of the 3x3 convolutional body (RND, ICM and TeCLE's inverse-dynamics network)."""
    conv_layers: int = 3
    """Convolutions in that body; 0 feeds the flattened observation to the dense layers."""
    hidden: int = 256
    """Hidden width of the dense layers (RND, the ICM models, TeCLE's inverse head)."""
    features: int = 128
    """Embedding size of RND and feature size of ICM."""
    icm_forward_weight: float = 0.2
    """ICM loss: (1 - w) * inverse loss + w * forward loss."""
    beta: float = 0.0
    """TeCLE noise exponent in [-2, 2]: 0 white, 1 pink, 2 red, negative blue."""
    noise_axis: str = "time"
    """TeCLE noise correlation: time (along the rollout) or latent (within a transition)."""
    latent: int = 16
    """TeCLE latent size."""
    condition: int = 16
    """TeCLE action-embedding size."""
    encoder_channels: tuple[int, ...] = (64, 64)
    """TeCLE CVAE 1x1-convolution channels."""
    encoder_hidden: tuple[int, ...] = (256, 128)
    """TeCLE CVAE encoder MLP widths."""
    head_hidden: int = 64
    """TeCLE CVAE mean and log-variance head width."""
    decoder_hidden: tuple[int, ...] = (64, 128, 256)
    """TeCLE CVAE decoder MLP widths before the output layer."""
    kl_weight: float = 1.0
    """TeCLE weight of the KL divergence per transition."""
    update_proportion: float = 1.0
    """Fraction of each PPO minibatch the module trains on (RND's PyTorch code uses 0.25)."""


def validate(config):
    """Raise ValueError for an unknown method or noise axis, or a beta outside [-2, 2]."""
    if config.method not in METHODS:
        raise ValueError(f"intrinsic method={config.method!r} is not valid; choose one of {METHODS}.")
    if config.noise_axis not in NOISE_AXES:
        raise ValueError(f"noise_axis={config.noise_axis!r} is not valid; choose one of {NOISE_AXES}.")
    check_beta(config.beta)
    if config.conv_layers < 0:
        raise ValueError(f"conv_layers={config.conv_layers} must be 0 or more.")
    if not 0.0 < config.update_proportion <= 1.0:
        raise ValueError(f"update_proportion={config.update_proportion} is outside (0, 1]; "
                         "1 trains the module on every transition of a minibatch.")


class Transitions(NamedTuple):
    """Normalised observations around an action; leading axes [time, envs] or [batch]."""

    obs: jax.Array  # [..., height, width, channels] float32
    action: jax.Array  # [...] int32
    next_obs: jax.Array  # [..., height, width, channels] float32, before any reset


class IntrinsicState(NamedTuple):
    """Trained parameters, values the update leaves alone, and the optimizer state."""

    params: Any
    frozen: Any  # RND's target network; TeCLE's beta (float32) and latent_axis (bool) scalars
    opt_state: Any


class Intrinsic(NamedTuple):
    """An intrinsic-reward module: see the module docstring for the three functions."""

    init: Callable
    reward: Callable
    update: Callable


def _flat(transitions):
    """Merge the [time, envs] axes of a rollout into one batch axis."""
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), transitions)


REWARD_CHUNK = 128
"""Transitions per chunk of the reward pass (per run when vmapped)."""


def _chunk_steps(time, envs):
    """Return the largest divisor of `time` whose steps hold at most REWARD_CHUNK transitions, or 1."""
    limit = max(1, REWARD_CHUNK // envs)
    return max(steps for steps in range(1, time + 1) if time % steps == 0 and steps <= limit)


def _score_in_chunks(score, transitions, *rows):
    """Score a rollout chunk by chunk of whole time steps.

    On XLA's CPU backend a convolution over a thousand observations at once ran about
    five times slower per observation than over a hundred or so, whose working set
    stays in cache. So the chunks run one after another under `lax.map`.

    Args:
      score: (flat transitions [n, ...], *flat rows [n, ...]) -> scores [n].
      transitions: a rollout, leading axes [time, envs].
      rows: further arrays [time, envs, ...] cut the same way, such as TeCLE's noise.

    Returns:
      scores [time, envs].
    """
    time, envs = transitions.action.shape
    steps = _chunk_steps(time, envs)
    chunks = jax.tree.map(lambda x: x.reshape((time // steps, steps * envs) + x.shape[2:]), (transitions, rows))
    scores = jax.lax.map(lambda chunk: score(chunk[0], *chunk[1]), chunks)
    return scores.reshape(time, envs)


def _optimizer(config):
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(config.learning_rate))


def _apply_gradients(tx, state, grads):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates), opt_state=opt_state)


def _no_noise(rewards):
    return jnp.zeros(rewards.shape + (0,), jnp.float32)


# --------------------------------------------------------------------------------------
# No intrinsic reward


def make_none():
    """Return the module of plain PPO: zero rewards and no parameters."""

    def init(key, obs_shape):
        del key, obs_shape
        return IntrinsicState(params={}, frozen={}, opt_state={})

    def reward(state, transitions, key):
        del state, key
        rewards = jnp.zeros(transitions.action.shape, jnp.float32)
        return rewards, _no_noise(rewards)

    def update(state, transitions, noise):
        del transitions, noise
        return state, {}

    return Intrinsic(init, reward, update)


# --------------------------------------------------------------------------------------
# Random network distillation


def make_rnd(config):
    """Return RND: reward = mean squared error of the predictor against the fixed target."""
    target = networks.RNDNetwork(config.channels, config.conv_layers, (config.hidden, config.features))
    predictor = networks.RNDNetwork(config.channels, config.conv_layers,
                                    (config.hidden, config.hidden, config.features))
    tx = _optimizer(config)

    def errors(params, frozen, next_obs):
        predicted = predictor.apply(params, next_obs)
        embedded = jax.lax.stop_gradient(target.apply(frozen, next_obs))
        return jnp.mean((predicted - embedded) ** 2, axis=-1)

    def init(key, obs_shape):
        target_key, predictor_key = jax.random.split(key)
        example = jnp.zeros((1,) + tuple(obs_shape), jnp.float32)
        params = predictor.init(predictor_key, example)
        return IntrinsicState(params=params, frozen=target.init(target_key, example), opt_state=tx.init(params))

    def reward(state, transitions, key):
        del key
        rewards = _score_in_chunks(lambda chunk: errors(state.params, state.frozen, chunk.next_obs), transitions)
        return rewards, _no_noise(rewards)

    def update(state, transitions, noise):
        del noise
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(errors(p, state.frozen, transitions.next_obs)))(
            state.params)
        return _apply_gradients(tx, state, grads), {"rnd_loss": loss}

    return Intrinsic(init, reward, update)


# --------------------------------------------------------------------------------------
# Intrinsic curiosity module


def make_icm(config, num_actions):
    """Return ICM: reward = half the mean squared error of the forward model's features."""
    network = networks.ICMNetwork(num_actions, config.channels, config.conv_layers, config.hidden, config.features)
    tx = _optimizer(config)
    weight = config.icm_forward_weight

    def forward_errors(params, transitions):
        features = jax.lax.stop_gradient(network.apply(params, transitions.obs, method="encode"))
        next_features = jax.lax.stop_gradient(network.apply(params, transitions.next_obs, method="encode"))
        predicted = network.apply(params, features, transitions.action, method="predict_next")
        return 0.5 * jnp.mean((predicted - next_features) ** 2, axis=-1)

    def loss_fn(params, transitions):
        features = network.apply(params, transitions.obs, method="encode")
        next_features = network.apply(params, transitions.next_obs, method="encode")
        logits = network.apply(params, features, next_features, method="predict_action")
        inverse_loss = optax.softmax_cross_entropy_with_integer_labels(logits, transitions.action).mean()
        forward_loss = forward_errors(params, transitions).mean()
        loss = (1 - weight) * inverse_loss + weight * forward_loss
        return loss, {"icm_inverse_loss": inverse_loss, "icm_forward_loss": forward_loss}

    def init(key, obs_shape):
        example = jnp.zeros((1,) + tuple(obs_shape), jnp.float32)
        params = network.init(key, example, jnp.zeros((1,), jnp.int32), example)
        return IntrinsicState(params=params, frozen={}, opt_state=tx.init(params))

    def reward(state, transitions, key):
        del key
        rewards = _score_in_chunks(lambda chunk: forward_errors(state.params, chunk), transitions)
        return rewards, _no_noise(rewards)

    def update(state, transitions, noise):
        del noise
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, transitions)
        return _apply_gradients(tx, state, grads), metrics

    return Intrinsic(init, reward, update)


# --------------------------------------------------------------------------------------
# TeCLE


def draw_noise(key, beta, latent_axis, shape):
    """Unit-variance 1/f^beta noise [time, envs, latent], correlated along time or latent.

    `beta` and `latent_axis` (a bool) may be traced. Both colourings are drawn and one
    is selected; the arrays are a few thousand numbers, so the unused draw costs little
    next to the networks.
    """
    time_key, latent_key = jax.random.split(key)
    along_time = powerlaw_noise(time_key, beta, shape, axis=0)
    along_latent = powerlaw_noise(latent_key, beta, shape, axis=-1)
    return jnp.where(latent_axis, along_latent, along_time)


def make_tecle(config, num_actions):
    """Return TeCLE: reward = squared reconstruction error of the CVAE under coloured noise."""
    inverse = networks.InverseDynamics(num_actions, config.channels, config.conv_layers, config.hidden)
    cvae = networks.CVAE(
        num_actions, latent=config.latent, condition=config.condition,
        encoder_channels=config.encoder_channels, encoder_hidden=config.encoder_hidden,
        head_hidden=config.head_hidden, decoder_hidden=config.decoder_hidden,
    )
    tx = _optimizer(config)

    def reconstruct(params, next_features, action, eps):
        # The CVAE models the features; its loss does not shape them.
        next_features = jax.lax.stop_gradient(next_features)
        logits, mean, logvar = cvae.apply(params["cvae"], next_features, action, eps)
        return logits, jax.nn.sigmoid(next_features), mean, logvar

    def loss_fn(params, transitions, eps):
        # The features of s_t+1 feed both the inverse model and the CVAE, so the
        # convolutional body runs once per observation.
        features = inverse.apply(params["inverse"], transitions.obs, method="features")
        next_features = inverse.apply(params["inverse"], transitions.next_obs, method="features")
        action_logits = inverse.apply(params["inverse"], features, next_features, method="predict_action")
        inverse_loss = optax.softmax_cross_entropy_with_integer_labels(action_logits, transitions.action).mean()
        logits, target, mean, logvar = reconstruct(params, next_features, transitions.action, eps)
        batch = logits.shape[0]
        reconstruction = optax.sigmoid_binary_cross_entropy(logits, target).reshape(batch, -1).mean(axis=1).mean()
        kl = (-0.5 * jnp.sum(1 + logvar - jnp.exp(logvar) - mean**2, axis=-1)).mean()
        loss = inverse_loss + reconstruction + config.kl_weight * kl
        return loss, {"tecle_inverse_loss": inverse_loss, "tecle_reconstruction_loss": reconstruction,
                      "tecle_kl": kl}

    def init(key, obs_shape):
        inverse_key, cvae_key = jax.random.split(key)
        example = jnp.zeros((1,) + tuple(obs_shape), jnp.float32)
        inverse_params = inverse.init(inverse_key, example, example)
        features = inverse.apply(inverse_params, example, method="features")
        cvae_params = cvae.init(cvae_key, features, jnp.zeros((1,), jnp.int32), jnp.zeros((1, config.latent)))
        params = {"inverse": inverse_params, "cvae": cvae_params}
        frozen = {"beta": jnp.float32(config.beta), "latent_axis": jnp.bool_(config.noise_axis == "latent")}
        return IntrinsicState(params=params, frozen=frozen, opt_state=tx.init(params))

    def reward(state, transitions, key):
        time, envs = transitions.action.shape
        eps = draw_noise(key, state.frozen["beta"], state.frozen["latent_axis"], (time, envs, config.latent))

        def score(chunk, chunk_eps):
            next_features = inverse.apply(state.params["inverse"], chunk.next_obs, method="features")
            logits, target, _, _ = reconstruct(state.params, next_features, chunk.action, chunk_eps)
            errors = (jax.nn.sigmoid(logits) - target) ** 2
            return errors.reshape(errors.shape[0], -1).mean(axis=1)

        return _score_in_chunks(score, transitions, eps), eps

    def update(state, transitions, noise):
        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, transitions, noise)
        return _apply_gradients(tx, state, grads), metrics

    return Intrinsic(init, reward, update)


def make(config, num_actions):
    """Return the `Intrinsic` of `config.method` for an environment with `num_actions` actions."""
    validate(config)
    if config.method == "none":
        return make_none()
    if config.method == "rnd":
        return make_rnd(config)
    if config.method == "icm":
        return make_icm(config, num_actions)
    return make_tecle(config, num_actions)
