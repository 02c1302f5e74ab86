"""The intrinsic-reward interface: shapes, training, and where TeCLE's noise is correlated."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import intrinsic

TIME, ENVS, ACTIONS = 32, 4, 5
OBS_SHAPE = (5, 5, 3)

# Networks a few hundred parameters wide, so every test compiles in seconds.
TINY = intrinsic.IntrinsicConfig(
    channels=4, conv_layers=1, hidden=16, features=8, latent=8, condition=4,
    encoder_channels=(4,), encoder_hidden=(16,), head_hidden=8, decoder_hidden=(16,),
)


def make_transitions(key, time=TIME, envs=ENVS):
    """Random transitions [time, envs, ...] whose next observation depends on the action."""
    obs_key, action_key = jax.random.split(key)
    obs = jax.random.normal(obs_key, (time, envs) + OBS_SHAPE)
    action = jax.random.randint(action_key, (time, envs), 0, ACTIONS)
    next_obs = obs + action[..., None, None, None].astype(jnp.float32) / ACTIONS
    return intrinsic.Transitions(obs=obs, action=action, next_obs=next_obs)


def flat(tree):
    return jax.tree.map(lambda x: x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:]), tree)


def lag_one_correlation(x, axis):
    """Mean correlation of neighbouring samples along `axis` of a unit-variance array."""
    x = np.moveaxis(np.asarray(x), axis, -1)
    return float(np.mean(x[..., 1:] * x[..., :-1]))


@pytest.mark.parametrize("method", intrinsic.METHODS)
def test_reward_shapes_and_noise_rows(method):
    config = dataclasses.replace(TINY, method=method)
    module = intrinsic.make(config, ACTIONS)
    init_key, data_key, reward_key = jax.random.split(jax.random.key(0), 3)
    state = module.init(init_key, OBS_SHAPE)
    rewards, noise = jax.jit(module.reward)(state, make_transitions(data_key), reward_key)

    assert rewards.shape == (TIME, ENVS)
    assert rewards.dtype == jnp.float32
    assert noise.shape == (TIME, ENVS, config.latent if method == "tecle" else 0)
    assert bool(jnp.all(jnp.isfinite(rewards)))
    if method == "none":
        assert float(jnp.abs(rewards).max()) == 0.0
    else:
        assert float(rewards.min()) >= 0.0
        assert float(rewards.max()) > 0.0


# The loss each module's update must lower, and the fraction of its first value that it
# must fall below. ICM's forward error is measured in a feature space that the inverse
# loss rescales, so only the inverse loss must fall. TeCLE's binary cross-entropy against
# soft targets sigmoid(features) cannot fall below the targets' entropy.
FALLING_LOSS = {"rnd": ("rnd_loss", 0.7), "icm": ("icm_inverse_loss", 0.7),
                "tecle": ("tecle_reconstruction_loss", 0.95)}


@pytest.mark.parametrize("method", tuple(FALLING_LOSS))
def test_update_lowers_loss_on_seen_data(method):
    config = dataclasses.replace(TINY, method=method, learning_rate=3e-3)
    module = intrinsic.make(config, ACTIONS)
    init_key, data_key, reward_key, later_key = jax.random.split(jax.random.key(1), 4)
    state = module.init(init_key, OBS_SHAPE)
    transitions = make_transitions(data_key)
    rewards, noise = module.reward(state, transitions, reward_key)

    update = jax.jit(module.update)
    batch, batch_noise = flat(transitions), noise.reshape(TIME * ENVS, -1)
    state, first = update(state, batch, batch_noise)
    for _ in range(60):
        state, last = update(state, batch, batch_noise)

    for name, value in last.items():
        assert np.isfinite(float(value)), name
    loss, fraction = FALLING_LOSS[method]
    assert float(last[loss]) < fraction * float(first[loss]), (first[loss], last[loss])
    if method != "icm":
        # Training on a batch makes it familiar, so its intrinsic reward falls too.
        after, _ = module.reward(state, transitions, later_key)
        assert float(after.mean()) < fraction * float(rewards.mean())


def tecle_noise(noise_axis, beta, seed=0):
    config = dataclasses.replace(TINY, method="tecle", latent=64, beta=beta, noise_axis=noise_axis)
    module = intrinsic.make(config, ACTIONS)
    init_key, data_key, reward_key = jax.random.split(jax.random.key(seed), 3)
    state = module.init(init_key, OBS_SHAPE)
    _, noise = module.reward(state, make_transitions(data_key, time=64, envs=8), reward_key)
    return np.asarray(noise)


def test_tecle_red_noise_along_time():
    noise = tecle_noise("time", beta=2.0)
    assert noise.shape == (64, 8, 64)
    # Red noise: neighbouring steps of one environment and latent unit nearly agree,
    # while neighbouring latent units of one step are independent.
    assert lag_one_correlation(noise, axis=0) > 0.8
    assert abs(lag_one_correlation(noise, axis=2)) < 0.1
    assert abs(float(noise.std()) - 1.0) < 0.15


def test_tecle_red_noise_along_latent():
    noise = tecle_noise("latent", beta=2.0)
    assert lag_one_correlation(noise, axis=2) > 0.8
    assert abs(lag_one_correlation(noise, axis=0)) < 0.1


def test_tecle_blue_noise_anticorrelated_in_time():
    assert lag_one_correlation(tecle_noise("time", beta=-1.0), axis=0) < -0.2


def test_tecle_white_noise_uncorrelated_on_both_axes():
    for noise_axis in intrinsic.NOISE_AXES:
        noise = tecle_noise(noise_axis, beta=0.0)
        assert abs(lag_one_correlation(noise, axis=0)) < 0.1, noise_axis
        assert abs(lag_one_correlation(noise, axis=2)) < 0.1, noise_axis


def test_tecle_beta_is_a_state_value():
    # `rl.ppo.make_train_over_beta` sweeps beta by overriding the frozen scalar: the
    # noise must follow it without rebuilding the module.
    config = dataclasses.replace(TINY, method="tecle", latent=64, beta=0.0)
    module = intrinsic.make(config, ACTIONS)
    init_key, data_key, reward_key = jax.random.split(jax.random.key(2), 3)
    state = module.init(init_key, OBS_SHAPE)
    red = state._replace(frozen={**state.frozen, "beta": jnp.float32(2.0)})
    _, noise = module.reward(red, make_transitions(data_key, time=64, envs=8), reward_key)
    assert lag_one_correlation(noise, axis=0) > 0.8


def test_tecle_noise_axis_is_a_state_value():
    # `rl.ppo.make_train_over_noise` sweeps the axis by overriding the frozen flag.
    config = dataclasses.replace(TINY, method="tecle", latent=64, beta=2.0, noise_axis="time")
    module = intrinsic.make(config, ACTIONS)
    init_key, data_key, reward_key = jax.random.split(jax.random.key(3), 3)
    state = module.init(init_key, OBS_SHAPE)
    assert not bool(state.frozen["latent_axis"])
    latent = state._replace(frozen={**state.frozen, "latent_axis": jnp.bool_(True)})
    _, noise = module.reward(latent, make_transitions(data_key, time=64, envs=8), reward_key)
    assert lag_one_correlation(noise, axis=2) > 0.8
    assert abs(lag_one_correlation(noise, axis=0)) < 0.1


@pytest.mark.parametrize("field, value, match", [
    ("method", "ngu", r"intrinsic method='ngu' is not valid"),
    ("update_proportion", 0.0, r"update_proportion=0.0 is outside \(0, 1\]"),
    ("update_proportion", 1.5, r"update_proportion=1.5 is outside \(0, 1\]"),
    ("noise_axis", "space", r"noise_axis='space' is not valid"),
    ("beta", 2.5, r"beta=2.5 is outside the valid range \[-2, 2\]"),
    ("beta", -3.0, r"beta=-3 is outside the valid range \[-2, 2\]"),
    ("conv_layers", -1, r"conv_layers=-1 must be 0 or more"),
])
def test_invalid_config_raises(field, value, match):
    config = dataclasses.replace(intrinsic.IntrinsicConfig(method="tecle"), **{field: value})
    with pytest.raises(ValueError, match=match):
        intrinsic.make(config, ACTIONS)
