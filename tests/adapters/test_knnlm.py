"""adapters.knnlm: the log-space interpolation against hand-computed values, exact search."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters import knnlm


def test_interpolate_matches_hand_computation():
    lm = jnp.log(jnp.full((1, 4), 0.25))
    sq = jnp.array([[1.0, 1.0, 3.0]])
    tokens = jnp.array([[2, 0, 2]])
    out = np.exp(np.asarray(knnlm.interpolate(lm, sq, tokens, lam=0.5, temperature=1.0)))
    total = 2 * math.exp(-1) + math.exp(-3)
    knn = [math.exp(-1) / total, 0.0, (math.exp(-1) + math.exp(-3)) / total, 0.0]
    expected = [0.5 * k + 0.5 * 0.25 for k in knn]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


def test_temperature_flattens_weights():
    sq = jnp.array([[0.0, 2.0]])
    tokens = jnp.array([[0, 1]])
    out = np.exp(np.asarray(knnlm.neighbor_log_probs(sq, tokens, 3, temperature=2.0)))
    # weights exp(0) and exp(-1), normalised.
    np.testing.assert_allclose(out[0], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 0.0], rtol=1e-6)


def test_interpolate_extremes():
    lm = jax.nn.log_softmax(jnp.array([[0.3, -1.0, 2.0]]))
    sq = jnp.array([[0.5, 0.1]])
    tokens = jnp.array([[1, 1]])
    np.testing.assert_allclose(knnlm.interpolate(lm, sq, tokens, lam=0.0), lm, rtol=1e-6)
    only_knn = np.asarray(knnlm.interpolate(lm, sq, tokens, lam=1.0))
    assert only_knn[0, 1] == pytest.approx(0.0, abs=1e-6)
    assert np.isneginf(only_knn[0, 0])
    assert np.isneginf(only_knn[0, 2])


@pytest.mark.parametrize("lam, temperature, message", [(1.5, 1.0, "lam=1.5"), (0.5, 0.0, "temperature=0.0")])
def test_invalid_weights_raise(lam, temperature, message):
    with pytest.raises(ValueError, match=message):
        knnlm.interpolate(jnp.zeros((1, 2)), jnp.zeros((1, 1)), jnp.zeros((1, 1), jnp.int32), lam=lam,
                          temperature=temperature)


def test_search_is_exact():
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(37, 5)).astype(np.float32)
    queries = rng.normal(size=(4, 5)).astype(np.float32)
    padded, norms = knnlm.pad_keys(keys, 8)
    sq, index = jax.jit(knnlm.search, static_argnames=("k", "chunk_size"))(
        jnp.asarray(queries), padded, norms, k=6, chunk_size=8)
    brute = ((queries[:, None, :].astype(np.float64) - keys[None]) ** 2).sum(-1)
    expected_index = np.argsort(brute, axis=1)[:, :6]
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_allclose(sq, np.take_along_axis(brute, expected_index, 1), rtol=1e-4, atol=1e-4)


def test_empty_memory_raises():
    with pytest.raises(ValueError, match="empty"):
        knnlm.pad_keys(np.zeros((0, 4), np.float32), 8)
