"""Running statistics and the intrinsic-return filter against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl import normalize


def test_two_merges_equal_concatenation():
    rng = np.random.default_rng(0)
    first = rng.normal(3.0, 2.0, (3, 2)).astype(np.float32)
    second = rng.normal(-1.0, 0.5, (5, 2)).astype(np.float32)
    stats = normalize.init_stats((2,), prior_count=0.0)
    stats = normalize.update_stats(stats, first)
    stats = normalize.update_stats(stats, second)
    together = np.concatenate([first, second]).astype(np.float64)
    np.testing.assert_allclose(stats.mean, together.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.var, together.var(axis=0), rtol=1e-5)
    assert float(stats.count) == 8.0


def test_merge_with_prior_by_hand():
    stats = normalize.update_stats(normalize.init_stats(()), jnp.array([1.0, 2.0, 3.0]))
    # Prior: mean 0, variance 1, count 1e-4. Batch: mean 2, variance 2/3, count 3.
    total = 3.0001
    expected_mean = 2.0 * 3 / total
    expected_var = (1.0 * 1e-4 + (2 / 3) * 3 + 2.0**2 * 1e-4 * 3 / total) / total
    assert float(stats.count) == pytest.approx(total)
    assert float(stats.mean) == pytest.approx(expected_mean, rel=1e-6)
    assert float(stats.var) == pytest.approx(expected_var, rel=1e-6)


def test_batch_axes_are_not_kept():
    stats = normalize.init_stats((4,))
    batch = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 4)
    stats = normalize.update_stats(stats, batch)
    stats = normalize.update_stats(stats, batch[0])
    assert stats.mean.shape == (4,)
    assert stats.var.shape == (4,)
    assert stats.count.shape == ()
    assert float(stats.count) == pytest.approx(9 + 1e-4)


def test_update_under_jit_matches_eager():
    batch = jnp.linspace(-2.0, 5.0, 12).reshape(4, 3)
    eager = normalize.update_stats(normalize.init_stats((3,)), batch)
    jitted = jax.jit(normalize.update_stats)(normalize.init_stats((3,)), batch)
    for a, b in zip(eager, jitted):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_wrong_feature_shape_raises():
    with pytest.raises(ValueError, match=r"does not end in the feature shape \(4,\)"):
        normalize.update_stats(normalize.init_stats((4,)), jnp.zeros((2, 3)))


def test_normalize_clips():
    stats = normalize.RunningStats(mean=jnp.array([1.0, 1.0]), var=jnp.array([4.0, 4.0]), count=jnp.float32(10))
    normalized = normalize.normalize(stats, jnp.array([[3.0, 100.0]]), clip=5.0, epsilon=0.0)
    np.testing.assert_allclose(normalized, [[1.0, 5.0]])


def test_return_filter_by_hand():
    return_filter = normalize.init_return_filter(2)
    rewards = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    return_filter, history = normalize.update_return_filter(return_filter, rewards, 0.5)
    # Env 0: 1, then 0.5 * 1 + 3 = 3.5. Env 1: 2, then 0.5 * 2 + 4 = 5.
    np.testing.assert_allclose(history, [[1.0, 2.0], [3.5, 5.0]])
    np.testing.assert_allclose(return_filter.returns, [3.5, 5.0])

    # Returns 1, 2, 3.5, 5: mean 2.875, population variance 9.1875 / 4 = 2.296875,
    # merged with the prior (mean 0, variance 1, count 1e-4).
    total = 4.0001
    expected_mean = 2.875 * 4 / total
    expected_var = (1e-4 + 2.296875 * 4 + 2.875**2 * 1e-4 * 4 / total) / total
    assert float(return_filter.stats.mean) == pytest.approx(expected_mean, rel=1e-6)
    assert float(return_filter.stats.var) == pytest.approx(expected_var, rel=1e-6)

    scaled = normalize.scale_by_return_std(return_filter, jnp.array([2.0]))
    assert float(scaled[0]) == pytest.approx(2.0 / np.sqrt(expected_var), rel=1e-6)


def test_return_filter_continues_across_calls():
    return_filter = normalize.init_return_filter(2)
    return_filter, _ = normalize.update_return_filter(return_filter, jnp.array([[1.0, 2.0], [3.0, 4.0]]), 0.5)
    return_filter, history = normalize.update_return_filter(return_filter, jnp.zeros((1, 2)), 0.5)
    # The running return is never reset: it decays from 3.5 and 5.
    np.testing.assert_allclose(history, [[1.75, 2.5]])
    assert float(return_filter.stats.count) == pytest.approx(6 + 1e-4)
