"""Coloured noise against its analytic spectrum and variance, and against colorednoise.

Statistical checks use fixed keys and bounds of five standard errors, so they are
deterministic and a wrong exponent or normalisation fails them by a wide margin.
"""

import colorednoise
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rl.noise import powerlaw_noise

SERIES = 4000
BETAS = (-2.0, -1.0, 0.0, 0.5, 1.0, 2.0)


def analytic_periodogram(length, beta):
    """E|rfft(y)_k|^2 for unit-variance noise ∝ 1/f^beta, the mean taking the scale of 1/n.

    By Parseval, the mean of y_t^2 equals (1/n^2) times the sum of |Y_k|^2 over all n
    frequencies; requiring that to be 1 fixes the constant.
    """
    frequencies = np.fft.rfftfreq(length)
    frequencies[0] = 1.0 / length
    shape = frequencies ** (-beta)
    multiplicity = np.full(shape.shape, 2.0)
    multiplicity[0] = 1.0
    if length % 2 == 0:
        multiplicity[-1] = 1.0
    return shape * length**2 / np.sum(shape * multiplicity)


def mean_periodogram(samples):
    return np.mean(np.abs(np.fft.rfft(np.asarray(samples, np.float64), axis=-1)) ** 2, axis=0)


def lag_one_correlation(samples):
    samples = np.asarray(samples, np.float64)
    return np.mean(samples[:, 1:] * samples[:, :-1]) / np.mean(samples**2)


@pytest.mark.parametrize("length", [64, 63])
@pytest.mark.parametrize("beta", BETAS)
def test_every_sample_has_unit_variance(beta, length):
    noise = powerlaw_noise(jax.random.key(0), beta, (SERIES, length))
    assert noise.dtype == jnp.float32
    assert noise.shape == (SERIES, length)

    samples = np.asarray(noise, np.float64)
    per_step_variance = np.mean(samples**2, axis=0)
    assert np.max(np.abs(per_step_variance - 1.0)) < 5 * np.sqrt(2.0 / SERIES)
    series_means = samples.mean(axis=1)
    assert abs(series_means.mean()) < 5 * series_means.std() / np.sqrt(SERIES)


@pytest.mark.parametrize("length", [64, 63])
@pytest.mark.parametrize("beta", BETAS)
def test_periodogram_matches_analytic(beta, length):
    samples = powerlaw_noise(jax.random.key(1), beta, (SERIES, length))
    measured = mean_periodogram(samples)
    expected = analytic_periodogram(length, beta)
    # Each periodogram value is a scaled chi-square with 1 or 2 degrees of freedom, so
    # the mean over SERIES draws has relative standard error at most sqrt(2 / SERIES).
    relative_error = np.abs(measured / expected - 1.0)
    assert np.max(relative_error) < 5 * np.sqrt(2.0 / SERIES)


@pytest.mark.parametrize("beta", BETAS)
def test_log_log_slope_is_minus_beta(beta):
    length = 256
    samples = powerlaw_noise(jax.random.key(2), beta, (SERIES, length))
    interior = slice(1, length // 2)
    frequencies = np.fft.rfftfreq(length)[interior]
    slope = np.polyfit(np.log(frequencies), np.log(mean_periodogram(samples)[interior]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.05)


@pytest.mark.parametrize("beta", BETAS)
def test_agrees_with_colorednoise(beta):
    length = 64
    ours = np.asarray(powerlaw_noise(jax.random.key(3), beta, (SERIES, length)))
    reference = colorednoise.powerlaw_psd_gaussian(beta, (SERIES, length), random_state=3)

    # Same spectral shape at every interior frequency: both normalised to sum 1.
    interior = slice(1, length // 2)
    ours_shape = mean_periodogram(ours)[interior]
    reference_shape = mean_periodogram(reference)[interior]
    ours_shape /= ours_shape.sum()
    reference_shape /= reference_shape.sum()
    # Two independent means of SERIES chi-square(2) values: ratio error sqrt(2 / SERIES).
    assert np.max(np.abs(ours_shape / reference_shape - 1.0)) < 5 * np.sqrt(2.0 / SERIES)

    # The same temporal correlation. colorednoise's variance drifts above 1 as beta
    # grows, because its normaliser leaves out the mean and half the Nyquist term, so
    # correlations are compared rather than covariances.
    assert lag_one_correlation(ours) == pytest.approx(lag_one_correlation(reference), abs=0.02)


def test_white_noise_is_uncorrelated():
    length = 16
    samples = np.asarray(powerlaw_noise(jax.random.key(4), 0.0, (SERIES, length)), np.float64)
    correlation = np.corrcoef(samples, rowvar=False)
    off_diagonal = correlation[~np.eye(length, dtype=bool)]
    assert np.max(np.abs(off_diagonal)) < 5 / np.sqrt(SERIES)


def test_red_noise_is_strongly_correlated():
    samples = powerlaw_noise(jax.random.key(5), 2.0, (SERIES, 128))
    assert lag_one_correlation(samples) > 0.9
    blue = powerlaw_noise(jax.random.key(6), -1.0, (SERIES, 128))
    assert lag_one_correlation(blue) < -0.3


def test_axis_selects_correlated_axis():
    length = 64
    samples = np.asarray(powerlaw_noise(jax.random.key(7), 1.0, (length, 2, SERIES // 2), axis=0))
    assert samples.shape == (length, 2, SERIES // 2)
    along_time = np.moveaxis(samples, 0, -1).reshape(SERIES, length)
    relative_error = np.abs(mean_periodogram(along_time) / analytic_periodogram(length, 1.0) - 1.0)
    assert np.max(relative_error) < 5 * np.sqrt(2.0 / SERIES)
    # Series at different indices of the other axes are independent.
    first, second = samples[:, 0, :].ravel(), samples[:, 1, :].ravel()
    assert abs(np.corrcoef(first, second)[0, 1]) < 5 / np.sqrt(first.size / length)


def test_length_one_is_standard_normal():
    samples = np.asarray(powerlaw_noise(jax.random.key(8), 1.0, (SERIES, 1)))
    assert samples.shape == (SERIES, 1)
    assert np.var(samples) == pytest.approx(1.0, abs=5 * np.sqrt(2.0 / SERIES))


@pytest.mark.parametrize("beta", [-2.5, 2.01, float("nan"), "pink"])
def test_beta_outside_range_raises(beta):
    with pytest.raises(ValueError, match=r"beta=.*\[-2, 2\]"):
        powerlaw_noise(jax.random.key(9), beta, (4, 8))


def test_axis_out_of_range_raises():
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        powerlaw_noise(jax.random.key(10), 1.0, (4, 8), axis=2)


def test_traced_beta_matches_eager():
    key = jax.random.key(11)
    betas = jnp.array([-1.0, 0.5, 2.0])
    key_bits = jax.random.key_data(jax.random.split(key, 3))
    keys = jax.random.wrap_key_data(key_bits)
    batched = jax.jit(jax.vmap(lambda k, b: powerlaw_noise(k, b, (5, 32), axis=-1)))(keys, betas)
    for index, beta in enumerate([-1.0, 0.5, 2.0]):
        eager = powerlaw_noise(jax.random.wrap_key_data(key_bits[index]), beta, (5, 32))
        np.testing.assert_allclose(batched[index], eager, rtol=1e-5, atol=1e-6)
