"""Gaussian noise with a power-law spectrum (coloured noise), generated in JAX.

The method of Timmer and König (1995), "On generating power law noise", Astron.
Astrophys. 300, 707-710: draw one complex Gaussian coefficient per frequency of a real
FFT, scale it by f^(-beta/2), and transform back. The result is stationary and circular
along the chosen axis, and its expected periodogram is proportional to 1/f^beta.

| beta | colour | lag-one autocorrelation (long series) |
|---|---|---|
| -2 | violet | strongly negative |
| -1 | blue | negative |
| 0 | white | 0: independent samples |
| 1 | pink | positive, slowly decaying |
| 2 | red (Brownian) | close to 1 |

Conventions, shared with the `colorednoise` package (2.2):
- the zero frequency gets the scale of the lowest non-zero frequency 1/n, so the mean
  of a series stays finite for beta > 0;
- the zero-frequency and, for even n, the Nyquist coefficient are real, with the
  variance of a full complex coefficient.

Unlike `colorednoise`, which normalises by a formula that leaves out those two terms,
every sample here has variance exactly 1 in expectation: the normaliser is the sum over
all n frequencies of the expected squared coefficient magnitudes, divided by n^2.
"""

import numbers

import jax
import jax.numpy as jnp
import numpy as np

BETA_RANGE = (-2.0, 2.0)


def check_beta(beta):
    """Raise ValueError unless `beta` is a real number in [-2, 2]. Traced values pass unchecked."""
    if isinstance(beta, jax.core.Tracer):
        return
    if not isinstance(beta, numbers.Real) and not (isinstance(beta, (np.ndarray, jax.Array)) and np.ndim(beta) == 0):
        raise ValueError(f"beta={beta!r} must be a real number in [{BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}].")
    value = float(beta)
    if not BETA_RANGE[0] <= value <= BETA_RANGE[1]:
        raise ValueError(
            f"beta={value:g} is outside the valid range [{BETA_RANGE[0]:g}, {BETA_RANGE[1]:g}] "
            "(0 white, 1 pink, 2 red, negative blue)."
        )


def frequency_scales(length, beta):
    """Return the amplitude scale f^(-beta/2) of each real-FFT frequency of a series.

    Args:
      length: samples per series, n >= 1.
      beta: spectral exponent; may be traced.

    Returns:
      float32 array [n // 2 + 1]; entry 0 (the mean) takes the scale of frequency 1/n.
    """
    frequencies = np.fft.rfftfreq(length)
    if length > 1:
        frequencies[0] = frequencies[1]
    else:
        frequencies[0] = 1.0
    return jnp.asarray(frequencies, jnp.float32) ** (-jnp.asarray(beta, jnp.float32) / 2)


def expected_variance(length, beta):
    """Return the expected variance of one sample before normalisation, for unit-scale draws.

    Each sample of the inverse FFT of n coefficients Y_k has variance
    (1/n^2) * sum_k E|Y_k|^2. Interior frequencies appear twice (positive and negative)
    with E|Y_k|^2 = 2 s_k^2; the real mean and Nyquist terms have E|Y|^2 = 2 s^2 once.
    """
    scales = frequency_scales(length, beta)
    power = 2 * scales**2
    multiplicity = np.full(scales.shape, 2.0)
    multiplicity[0] = 1.0
    if length % 2 == 0 and length > 1:
        multiplicity[-1] = 1.0
    return jnp.sum(power * multiplicity) / length**2


def _last_axis_noise(key, beta, batch_shape, length):
    """Coloured noise of shape batch_shape + (length,), coloured along the last axis."""
    if length == 1:
        return jax.random.normal(key, batch_shape + (1,), jnp.float32)
    scales = frequency_scales(length, beta)
    count = scales.shape[0]
    real_key, imaginary_key = jax.random.split(key)
    real = jax.random.normal(real_key, batch_shape + (count,), jnp.float32)
    imaginary = jax.random.normal(imaginary_key, batch_shape + (count,), jnp.float32)

    # The mean, and the Nyquist term for even n, must be real for a real series. Doubling
    # the variance of their real part gives them the power of a complex coefficient.
    real_only = np.zeros(count, bool)
    real_only[0] = True
    if length % 2 == 0:
        real_only[-1] = True
    real = jnp.where(real_only, real * np.sqrt(2.0), real)
    imaginary = jnp.where(real_only, 0.0, imaginary)

    coefficients = (real + 1j * imaginary) * scales
    series = jnp.fft.irfft(coefficients, n=length, axis=-1)
    return (series / jnp.sqrt(expected_variance(length, beta))).astype(jnp.float32)


def powerlaw_noise(key, beta, shape, *, axis=-1):
    """Draw unit-variance Gaussian noise whose power spectrum along `axis` is ∝ 1/f^beta.

    Series along `axis` are independent of each other. A series of length 1 is white.

    Args:
      key: PRNG key.
      beta: spectral exponent in [-2, 2]: 0 white, 1 pink, 2 red, negative blue. A traced
        value (under jit or vmap) is not range-checked.
      shape: output shape.
      axis: the axis along which samples are correlated.

    Returns:
      float32 array of `shape`.

    Raises:
      ValueError: beta outside [-2, 2], or `axis` out of range for `shape`.
    """
    check_beta(beta)
    shape = tuple(int(size) for size in shape)
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis={axis} is out of range for shape {shape} of rank {len(shape)}.")
    axis = axis % len(shape)
    length = shape[axis]
    batch_shape = shape[:axis] + shape[axis + 1:]
    noise = _last_axis_noise(key, beta, batch_shape, length)
    return jnp.moveaxis(noise, -1, axis)
