"""kNN-LM: mix a language model's next-token distribution with one read off neighbours.

Glossary:
  memory       keys [n, d] (context representations) with values [n] (the gold next
               token of each key), as built by `adapters.pema.build_memory`.
  query        the current context representation, [batch, d].
  k            neighbours retrieved per query.
  sq_distances squared Euclidean distances to the k neighbours, [batch, k].
  temperature  T > 0; neighbour weights are softmax(-sq_distances / T).
  lam          interpolation weight in [0, 1] of the neighbour distribution:
               P = lam * P_kNN + (1 - lam) * P_LM (Khandelwal et al., 2020).

Everything is computed on log-probabilities with logsumexp, so tokens that neither
distribution supports come out as -inf, not as the log of an underflowed 0.
"""

import jax
import jax.numpy as jnp
import numpy as np


def _check_weight(lam):
    if isinstance(lam, (int, float)) and not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} is not a valid interpolation weight; use a value in [0, 1].")


def neighbor_log_probs(sq_distances, neighbor_tokens, vocab_size, *, temperature=1.0):
    """log P_kNN over the vocabulary: log of the summed weights of neighbours per token.

    Args:
      sq_distances: [batch, k] float.
      neighbor_tokens: [batch, k] int token ids.
      vocab_size: V.
      temperature: T > 0.

    Returns:
      [batch, V] float32 log-probabilities; tokens without a neighbour get -inf.
    """
    if isinstance(temperature, (int, float)) and temperature <= 0:
        raise ValueError(f"temperature={temperature} is not valid; use a value > 0.")
    log_weights = jax.nn.log_softmax(-jnp.asarray(sq_distances, jnp.float32) / temperature, axis=-1)
    # [batch, k, V]: neighbour i contributes its weight to its own token only.
    hits = neighbor_tokens[:, :, None] == jnp.arange(vocab_size)[None, None, :]
    per_token = jnp.where(hits, log_weights[:, :, None], -jnp.inf)
    return jax.nn.logsumexp(per_token, axis=1)


def interpolate(lm_log_probs, sq_distances, neighbor_tokens, *, lam, temperature=1.0):
    """Mix the model's distribution with the neighbours': log(lam P_kNN + (1 - lam) P_LM).

    Args:
      lm_log_probs: [batch, V] log-probabilities of the language model.
      sq_distances: [batch, k] squared distances to the retrieved neighbours.
      neighbor_tokens: [batch, k] the neighbours' gold next tokens.
      lam: weight of the neighbour distribution, in [0, 1].
      temperature: T > 0 of the neighbour softmax.

    Returns:
      [batch, V] float32 log-probabilities.
    """
    _check_weight(lam)
    knn = neighbor_log_probs(sq_distances, neighbor_tokens, lm_log_probs.shape[-1], temperature=temperature)
    lam = jnp.asarray(lam, jnp.float32)
    # log(0) = -inf is intended at lam = 0 or 1: logaddexp(-inf, x) = x.
    return jnp.logaddexp(jnp.log(lam) + knn, jnp.log1p(-lam) + lm_log_probs)


def _chunk_top_k(queries, keys, key_norms, k):
    # |q - x|^2 = |q|^2 - 2 q.x + |x|^2; the product runs on the matrix unit.
    products = jnp.matmul(queries, keys.T, precision=jax.lax.Precision.HIGHEST)
    sq = jnp.sum(queries * queries, axis=-1, keepdims=True) - 2.0 * products + key_norms[None, :]
    negative, index = jax.lax.top_k(-sq, k)
    return jnp.maximum(-negative, 0.0), index


def pad_keys(keys, chunk_size):
    """Pad keys [n, d] to a multiple of `chunk_size` rows; return (keys, norms) as arrays.

    Padded rows get an infinite squared norm, so they are never among the nearest.
    """
    keys = np.asarray(keys, np.float32)
    n = keys.shape[0]
    if n == 0:
        raise ValueError("the kNN memory is empty; build it from at least one target token.")
    padded = -(-n // chunk_size) * chunk_size
    norms = np.full((padded,), np.inf, np.float32)
    norms[:n] = np.sum(keys.astype(np.float64) ** 2, axis=-1)
    out = np.zeros((padded, keys.shape[1]), np.float32)
    out[:n] = keys
    return jnp.asarray(out), jnp.asarray(norms)


def search(queries, keys, key_norms, *, k, chunk_size):
    """Exact k nearest neighbours by squared Euclidean distance, one key chunk at a time.

    Jittable: scans over chunks of `chunk_size` keys, keeping the best k seen so far,
    so peak memory is [batch, chunk_size] instead of [batch, n].

    Args:
      queries: [batch, d] float32.
      keys, key_norms: from `pad_keys`: [n_padded, d] and [n_padded] (inf on padding).
      k: neighbours to return; at most chunk_size.
      chunk_size: keys per chunk; divides n_padded.

    Returns:
      (sq_distances [batch, k] ascending, indices [batch, k] int32 into keys).
    """
    if k > chunk_size:
        raise ValueError(f"k={k} exceeds chunk_size={chunk_size}; use a chunk of at least k keys.")
    batch = queries.shape[0]
    chunks = keys.shape[0] // chunk_size
    keys = keys.reshape(chunks, chunk_size, -1)
    norms = key_norms.reshape(chunks, chunk_size)

    def body(best, chunk):
        best_sq, best_index = best
        chunk_keys, chunk_norms, offset = chunk
        sq, index = _chunk_top_k(queries, chunk_keys, chunk_norms, k)
        merged_sq = jnp.concatenate([best_sq, sq], axis=1)
        merged_index = jnp.concatenate([best_index, index + offset], axis=1)
        negative, order = jax.lax.top_k(-merged_sq, k)
        return (-negative, jnp.take_along_axis(merged_index, order, axis=1)), None

    start = (jnp.full((batch, k), jnp.inf, jnp.float32), jnp.zeros((batch, k), jnp.int32))
    offsets = jnp.arange(chunks, dtype=jnp.int32) * chunk_size
    (sq, index), _ = jax.lax.scan(body, start, (keys, norms, offsets))
    return sq, index
