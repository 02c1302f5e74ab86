"""GAE against hand-computed values, with truncation and termination kept apart."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.gae import gae_advantages


def test_truncation_and_termination_by_hand():
    # Step 1 ends an episode by truncation: next_values[1] = 4 is the value of its final
    # observation, not of the reset observation at step 2 (values[2] = 1.5).
    # Step 3 ends the next episode by termination.
    rewards = jnp.array([1.0, 0.0, 2.0, 1.0])
    values = jnp.array([0.5, 1.0, 1.5, 2.0])
    next_values = jnp.array([1.0, 4.0, 2.0, 3.0])
    terminated = jnp.array([False, False, False, True])
    done = jnp.array([False, True, False, True])
    advantages, returns = gae_advantages(rewards, values, next_values, terminated, done, gamma=0.5, lam=0.5)

    # deltas: 1 + 0.5*1 - 0.5 = 1; 0 + 0.5*4 - 1 = 1; 2 + 0.5*2 - 1.5 = 1.5; 1 - 2 = -1.
    # A_3 = -1; A_2 = 1.5 + 0.25*(-1) = 1.25; A_1 = 1 (episode ended); A_0 = 1 + 0.25*1 = 1.25.
    np.testing.assert_allclose(advantages, [1.25, 1.0, 1.25, -1.0])
    np.testing.assert_allclose(returns, [1.75, 2.0, 2.75, 1.0])


def test_batch_axis_and_continuing_stream():
    rewards = jnp.ones((4, 2))
    zeros = jnp.zeros((4, 2))
    flags = jnp.zeros((4, 2), bool)
    advantages, _ = gae_advantages(rewards, zeros, zeros, flags, flags, gamma=0.5, lam=0.5)
    # A_t = 1 + 0.25 * A_{t+1}: 1, 1.25, 1.3125, 1.328125 from the last step back.
    expected = np.array([1.328125, 1.3125, 1.25, 1.0])
    np.testing.assert_allclose(advantages[:, 0], expected)
    np.testing.assert_allclose(advantages[:, 1], expected)


def test_lambda_one_gives_discounted_return():
    rewards = jnp.array([1.0, 2.0, 3.0])
    values = jnp.array([0.7, -0.2, 0.4])
    next_values = jnp.array([-0.2, 0.4, 10.0])
    flags = jnp.zeros(3, bool)
    _, returns = gae_advantages(rewards, values, next_values, flags, flags, gamma=0.9, lam=1.0)
    # With lambda 1 the return is the Monte-Carlo return bootstrapped from the last value.
    expected = [1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 10, 2 + 0.9 * 3 + 0.81 * 10, 3 + 0.9 * 10]
    np.testing.assert_allclose(returns, expected, rtol=1e-6)


def test_truncation_bootstraps_termination_does_not():
    rewards = jnp.array([1.0])
    values = jnp.array([0.0])
    next_values = jnp.array([2.0])
    done = jnp.array([True])
    truncated, _ = gae_advantages(rewards, values, next_values, jnp.array([False]), done, gamma=0.9, lam=0.95)
    terminated, _ = gae_advantages(rewards, values, next_values, jnp.array([True]), done, gamma=0.9, lam=0.95)
    assert float(truncated[0]) == pytest.approx(1.0 + 0.9 * 2.0)
    assert float(terminated[0]) == pytest.approx(1.0)


def test_jit_matches_eager():
    rng = np.random.default_rng(0)
    rewards, values, next_values = (jnp.asarray(rng.normal(size=(6, 3)), jnp.float32) for _ in range(3))
    terminated = jnp.asarray(rng.random((6, 3)) < 0.2)
    done = terminated | jnp.asarray(rng.random((6, 3)) < 0.2)
    eager = gae_advantages(rewards, values, next_values, terminated, done, gamma=0.99, lam=0.95)
    jitted = jax.jit(gae_advantages, static_argnames=("gamma", "lam"))(
        rewards, values, next_values, terminated, done, gamma=0.99, lam=0.95)
    np.testing.assert_allclose(eager[0], jitted[0], rtol=1e-5)
    np.testing.assert_allclose(eager[1], jitted[1], rtol=1e-5)
