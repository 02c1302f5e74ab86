"""PPO end to end on a real environment, its pieces, and its config errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import intrinsic, ppo

TINY_INTRINSIC = intrinsic.IntrinsicConfig(
    channels=4, conv_layers=1, hidden=16, features=8, latent=4, condition=4,
    encoder_channels=(4,), encoder_hidden=(16,), head_hidden=8, decoder_hidden=(16,),
)

# Empty-8x8 pays 1 - 0.9 * steps / 256 for reaching the goal, about 0.05 on average for
# a uniform random policy, which rarely finds it within the step limit.
LEARNING = ppo.PPOConfig(
    env="MiniGrid-Empty-8x8", num_envs=16, num_steps=64, total_timesteps=16 * 64 * 24,
    update_epochs=4, num_minibatches=4, learning_rate=2.5e-3, hidden=32, ext_coef=1.0,
    int_coef=0.0, intrinsic=TINY_INTRINSIC,
)


def finished_returns(metrics, updates):
    """Mean return of the episodes that ended in the given updates, weighted by their count."""
    returns = np.asarray(metrics["episode_return"])[..., updates]
    counts = np.asarray(metrics["episodes"])[..., updates]
    ended = counts > 0
    return float(np.sum(np.where(ended, returns, 0.0) * counts) / counts[ended].sum())


def test_ppo_learns_empty_gridworld():
    calls = []
    config = dataclasses.replace(LEARNING, log_every=8)
    train = ppo.make_train(config, progress=lambda index, metrics: calls.append((index, set(metrics))))
    _, metrics = jax.jit(jax.vmap(train))(jax.random.split(jax.random.key(0), 2))

    assert metrics["episode_return"].shape == (2, 24)
    first = finished_returns(metrics, slice(0, 3))
    last = finished_returns(metrics, slice(-3, None))
    # The untrained policy's early episodes return little; the trained one walks to the goal.
    assert last > first + 0.3, (first, last)
    assert last > 0.5
    # The callback runs on the host every 8 updates only, once per seed under vmap.
    assert sorted(index for index, _ in calls) == [7, 7, 15, 15, 23, 23]
    assert "episode_return" in calls[0][1]


def test_tecle_runs_with_noisy_tv_and_counts_tv():
    config = dataclasses.replace(
        LEARNING, env="MiniGrid-DoorKey-5x5", noisy_tv="noise", total_timesteps=16 * 64 * 2,
        int_coef=1.0, intrinsic=dataclasses.replace(TINY_INTRINSIC, method="tecle", beta=1.0),
    )
    train = jax.jit(ppo.make_train_over_beta(config))
    _, metrics = train(jax.random.key(0), jnp.float32(-1.0))

    assert metrics["tv_fraction"].shape == (2,)
    assert 0.0 < float(metrics["tv_fraction"][0]) < 1.0
    assert float(metrics["intrinsic_reward"][0]) > 0.0
    for name in ("tecle_reconstruction_loss", "tecle_kl", "policy_loss", "value_loss"):
        assert bool(jnp.all(jnp.isfinite(metrics[name]))), name
    np.testing.assert_array_equal(metrics["env_steps"], [16 * 64, 2 * 16 * 64])


def test_intrinsic_update_sees_its_proportion_of_each_minibatch():
    # 16 x 64 steps in 4 minibatches of 256 rows: a quarter is 64 rows, never fewer than 1.
    config = dataclasses.replace(LEARNING, intrinsic=dataclasses.replace(TINY_INTRINSIC, update_proportion=0.25))
    assert ppo.intrinsic_rows(config, 256) == 64
    tiny = dataclasses.replace(config, intrinsic=dataclasses.replace(TINY_INTRINSIC, update_proportion=0.001))
    assert ppo.intrinsic_rows(tiny, 256) == 1

    seen = []
    setup = ppo.build(dataclasses.replace(config, intrinsic=dataclasses.replace(
        config.intrinsic, method="rnd")))
    recording = setup.intrinsic._replace(
        update=lambda state, transitions, noise: (seen.append(transitions.action.shape) or state, {}))
    setup = dataclasses.replace(setup, intrinsic=recording)
    runner = ppo.init_runner(setup, jax.random.key(0), 0.0)
    jax.eval_shape(lambda r, k: ppo.train_iteration(setup, r, k), runner, jax.random.key(1))
    assert seen == [(64,)]


def test_tecle_noise_axis_sweeps_in_one_program():
    config = dataclasses.replace(
        LEARNING, env="MiniGrid-Empty-8x8",
        total_timesteps=16 * 64, int_coef=1.0,
        intrinsic=dataclasses.replace(TINY_INTRINSIC, method="tecle", beta=2.0))
    train = jax.jit(jax.vmap(ppo.make_train_over_noise(config), in_axes=(None, None, 0)))
    runner, metrics = train(jax.random.key(0), jnp.float32(2.0), jnp.array([False, True]))
    np.testing.assert_array_equal(runner.intrinsic.frozen["latent_axis"], [False, True])
    # The same key and beta with the other axis draws other noise, so other rewards.
    rewards = np.asarray(metrics["intrinsic_reward"])
    assert rewards[0, 0] != rewards[1, 0]


def test_advantages_bootstrap_from_final_observation_on_truncation():
    # The rollout's extrinsic next values come from `next_obs`, the observation before the
    # automatic reset: a truncated step with a non-zero final value must bootstrap it.
    setup = ppo.build(dataclasses.replace(LEARNING, num_envs=1, num_steps=2, num_minibatches=1))
    runner = ppo.init_runner(setup, jax.random.key(0), 0.0)
    obs = runner.obs
    rollout = ppo.Rollout(
        obs=jnp.stack([obs, obs]), action=jnp.zeros((2, 1), jnp.int32),
        log_prob=jnp.zeros((2, 1)), value_ext=jnp.zeros((2, 1)), value_int=jnp.zeros((2, 1)),
        reward=jnp.zeros((2, 1)), terminated=jnp.array([[False], [True]]),
        done=jnp.array([[True], [True]]), next_obs=jnp.stack([obs, obs]),
        episode_return=jnp.zeros((2, 1)), episode_ended=jnp.ones((2, 1), bool),
    )
    _, next_value, _ = setup.network.apply(runner.policy.params, obs)
    config = setup.config
    _, return_ext, _ = ppo.advantages(setup, runner, rollout, jnp.zeros((2, 1)))

    # Step 0 was truncated: return = gamma * v(final obs). Step 1 terminated: return = 0.
    np.testing.assert_allclose(return_ext[0, 0], config.gamma * next_value[0], rtol=1e-5)
    assert float(return_ext[1, 0]) == 0.0


def test_episode_return_is_nan_without_finished_episodes():
    rollout_fields = dict(episode_return=jnp.zeros((3, 2)), episode_ended=jnp.zeros((3, 2), bool))
    metrics = ppo.episode_metrics(ppo.Rollout(*([None] * 9), **rollout_fields))
    assert np.isnan(float(metrics["episode_return"]))
    assert float(metrics["episodes"]) == 0.0


@pytest.mark.parametrize("change, match", [
    ({"env": "MiniGrid-KeyCorridor"}, r"unknown environment 'MiniGrid-KeyCorridor'"),
    ({"env": "Pong-MinAtar"}, r"unknown environment 'Pong-MinAtar'"),
    ({"num_minibatches": 3}, r"num_minibatches=3 does not divide the batch size num_envs \* num_steps = 1024"),
    ({"num_envs": 0}, r"num_envs=0 must be a positive integer"),
    ({"total_timesteps": 100}, r"total_timesteps=100 is less than one rollout"),
    ({"noisy_tv": "static"}, r"noisy_tv='static' is not valid"),
    ({"sticky_p": 1.5}, r"sticky_p=1.5 is outside \[0, 1\]"),
    ({"torso": "rnn"}, r"torso='rnn' is not valid"),
    ({"gamma": 1.2}, r"gamma=1.2 is outside \[0, 1\]"),
])
def test_invalid_ppo_config_raises(change, match):
    with pytest.raises(ValueError, match=match):
        ppo.make_train(dataclasses.replace(LEARNING, **change))


@pytest.mark.parametrize("beta", [2.5, -2.01])
def test_beta_outside_range_raises(beta):
    config = dataclasses.replace(LEARNING, intrinsic=dataclasses.replace(TINY_INTRINSIC, method="tecle", beta=beta))
    with pytest.raises(ValueError, match=r"beta=.* is outside the valid range \[-2, 2\]"):
        ppo.make_train(config)
