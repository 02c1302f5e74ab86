"""Running mean and variance, and the intrinsic-return filter that scales intrinsic rewards.

`RunningStats` keeps the mean and (population) variance of every sample seen so far,
per feature. A batch is merged with the parallel formula of Chan, Golub and LeVeque
(1979): with counts n_a and n_b, means m_a and m_b, and delta = m_b - m_a,

    mean = m_a + delta * n_b / n
    M2   = var_a * n_a + var_b * n_b + delta^2 * n_a * n_b / n,   var = M2 / n,

which equals the statistics of the concatenated samples exactly, whatever the batch
sizes. Every leading axis of a batch beyond the feature shape counts as samples, so the
statistics never keep a batch dimension.

`ReturnFilter` is the reward normalisation of Burda et al. (2018), "Exploration by
Random Network Distillation". Each environment keeps a running discounted sum of its
intrinsic rewards, which is never reset at episode ends. Intrinsic rewards are divided
by the running standard deviation of those sums.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

# A tiny prior count, as in OpenAI baselines, keeps the first merge finite and makes an
# unused normaliser the identity (mean 0, variance 1).
PRIOR_COUNT = 1e-4


class RunningStats(NamedTuple):
    """Mean, variance and sample count of a stream of arrays of one feature shape."""

    mean: jax.Array  # [*features] float32
    var: jax.Array  # [*features] float32, population variance
    count: jax.Array  # [] float32, samples merged (plus the prior count)


def init_stats(feature_shape, *, prior_count=PRIOR_COUNT):
    """Return statistics of mean 0 and variance 1 that weigh as `prior_count` samples."""
    return RunningStats(
        mean=jnp.zeros(feature_shape, jnp.float32),
        var=jnp.ones(feature_shape, jnp.float32),
        count=jnp.asarray(prior_count, jnp.float32),
    )


def merge_moments(stats, batch_mean, batch_var, batch_count):
    """Merge a batch's mean, population variance and count into `stats` (Chan et al.)."""
    total = stats.count + batch_count
    delta = batch_mean - stats.mean
    mean = stats.mean + delta * batch_count / total
    squares = stats.var * stats.count + batch_var * batch_count + delta**2 * stats.count * batch_count / total
    return RunningStats(mean=mean, var=squares / total, count=total)


def update_stats(stats, batch):
    """Merge `batch` [*sample_axes, *features] into `stats`. Every leading axis counts as samples."""
    feature_rank = stats.mean.ndim
    batch = jnp.asarray(batch, jnp.float32)
    if batch.ndim < feature_rank or batch.shape[batch.ndim - feature_rank:] != stats.mean.shape:
        raise ValueError(
            f"batch of shape {batch.shape} does not end in the feature shape {stats.mean.shape}."
        )
    sample_axes = tuple(range(batch.ndim - feature_rank))
    batch_count = 1
    for axis in sample_axes:
        batch_count *= batch.shape[axis]
    batch_mean = jnp.mean(batch, axis=sample_axes)
    batch_var = jnp.var(batch, axis=sample_axes)
    return merge_moments(stats, batch_mean, batch_var, jnp.float32(batch_count))


def normalize(stats, x, *, clip=None, epsilon=1e-8):
    """Return (x - mean) / sqrt(var + epsilon), clipped to [-clip, clip] when `clip` is set."""
    normalized = (x - stats.mean) / jnp.sqrt(stats.var + epsilon)
    if clip is not None:
        normalized = jnp.clip(normalized, -clip, clip)
    return normalized


class ReturnFilter(NamedTuple):
    """Per-environment discounted intrinsic returns and the running statistics of their values."""

    returns: jax.Array  # [num_envs] float32, discounted sum of intrinsic rewards so far
    stats: RunningStats  # scalar statistics of every running return seen


def init_return_filter(num_envs):
    """Return a filter with zero running returns and unit variance."""
    return ReturnFilter(returns=jnp.zeros((num_envs,), jnp.float32), stats=init_stats(()))


def update_return_filter(return_filter, rewards, gamma):
    """Extend each environment's running return by `rewards` [time, num_envs] and merge them.

    Returns:
      (filter, running returns [time, num_envs] after each step).
    """

    def accumulate(running, reward):
        running = running * gamma + reward
        return running, running

    final, history = jax.lax.scan(accumulate, return_filter.returns, rewards)
    return ReturnFilter(returns=final, stats=update_stats(return_filter.stats, history)), history


def scale_by_return_std(return_filter, rewards, *, epsilon=1e-8):
    """Divide `rewards` by the running standard deviation of the intrinsic returns."""
    return rewards / jnp.sqrt(return_filter.stats.var + epsilon)
