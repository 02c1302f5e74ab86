"""A Llama-family decoder (Llama 2/3, SmolLM2) in Flax linen, with a key-value cache.

Glossary:
  RMSNorm: x / sqrt(mean(x**2) + eps) * scale, over the feature axis, without centring.
  RoPE: rotary position embedding. Each query and key head vector is split into two
    halves (x1, x2) and rotated pair-wise, x1[i] with x2[i], by the angle
    position * rope_theta ** (-2i / head_dim). This is the "rotate-half" layout of
    Hugging Face transformers. llama.cpp permutes the rows of the query and key
    projections for its interleaved layout, so `models.llama_io` undoes that.
  GQA: grouped-query attention. num_heads query heads share num_kv_heads key-value
    heads, num_heads / num_kv_heads query heads per group.
  SwiGLU: the MLP down_proj(silu(gate_proj(x)) * up_proj(x)).
  tied embeddings: the LM head reuses the token embedding matrix, logits = h @ E.T.
  KV cache: the keys and values of every earlier position, per layer, so decoding one
    token costs one position's work.

Positions and padding: every token carries an int32 position. A negative position
marks padding, which no query attends to; the causal mask lets a query at position p
attend to keys at positions 0..p. Left-padded batches therefore decode correctly when
their pad tokens get position -1 and their real tokens 0, 1, 2, ...
"""

import dataclasses
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

PADDING_POSITION = -1


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Sizes and constants of a Llama-family decoder.

    Attributes:
      vocab_size: number of token ids.
      hidden_size: width of the residual stream.
      intermediate_size: width of the SwiGLU MLP.
      num_layers: number of decoder blocks.
      num_heads: query heads; hidden_size must be a multiple of it.
      num_kv_heads: key-value heads; num_heads must be a multiple of it.
      rms_norm_eps: epsilon inside every RMSNorm.
      rope_theta: base of the rotary frequencies.
      max_position_embeddings: maximum context length the model was trained for.
      tie_embeddings: whether the LM head reuses the embedding matrix.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    max_position_embeddings: int = 2048
    tie_embeddings: bool = True

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    def validate(self):
        """Raise ValueError naming the first invalid field; return self otherwise."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"LlamaConfig.{name}={value!r} is invalid; it must be a positive integer.")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"LlamaConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_heads={self.num_heads}; choose sizes with hidden_size % num_heads == 0."
            )
        if self.head_dim % 2:
            raise ValueError(
                f"LlamaConfig head_dim={self.head_dim} (hidden_size / num_heads) is odd; rotary "
                "embeddings rotate pairs of features, so it must be even."
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"LlamaConfig.num_heads={self.num_heads} is not divisible by "
                f"num_kv_heads={self.num_kv_heads}; each key-value head serves a whole group of query heads."
            )
        if not self.rms_norm_eps > 0:
            raise ValueError(f"LlamaConfig.rms_norm_eps={self.rms_norm_eps!r} is invalid; it must be positive.")
        if not self.rope_theta > 0:
            raise ValueError(f"LlamaConfig.rope_theta={self.rope_theta!r} is invalid; it must be positive.")
        return self


def tiny_config(vocab_size, *, max_position_embeddings=128):
    """Return a LlamaConfig of about 0.1 M parameters plus the embeddings, for fast CPU tests."""
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=176,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rms_norm_eps=1e-5,
        rope_theta=10_000.0,
        max_position_embeddings=max_position_embeddings,
    ).validate()


class KVCache(NamedTuple):
    """Keys and values of earlier positions, with the slot that the next token writes.

    Attributes:
      keys: one array per layer, [batch, max_length, num_kv_heads, head_dim].
      values: one array per layer, [batch, max_length, num_kv_heads, head_dim].
      positions: int32 [batch, max_length], the position of each slot's token;
        PADDING_POSITION for padding and for slots not yet written.
      index: int32 scalar, the number of slots written so far.
    """

    keys: tuple
    values: tuple
    positions: jax.Array
    index: jax.Array


def init_cache(config, batch, max_length, dtype=jnp.float32):
    """Return an empty KVCache for `batch` sequences of up to `max_length` tokens."""
    shape = (batch, max_length, config.num_kv_heads, config.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
    return KVCache(
        keys=zeros,
        values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
        positions=jnp.full((batch, max_length), PADDING_POSITION, jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


# --------------------------------------------------------------------------------------
# Pure functions


def rms_norm(x, scale, eps):
    """RMSNorm over the last axis, computed in float32; x [..., features], scale [features]."""
    x32 = x.astype(jnp.float32)
    normed = x32 * lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale).astype(x.dtype)


def rotary_angles(positions, head_dim, theta):
    """Rotation angles float32 [batch, length, head_dim / 2] for int positions [batch, length]."""
    inverse_frequencies = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    return positions.astype(jnp.float32)[..., None] * inverse_frequencies


def apply_rotary(x, angles):
    """Rotate-half RoPE on x [batch, length, heads, head_dim] by angles [batch, length, head_dim / 2]."""
    first, second = jnp.split(x, 2, axis=-1)
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


def attention_mask(query_positions, key_positions):
    """bool [batch, queries, keys]: causal, and no key at a padding position.

    Args:
      query_positions: int32 [batch, queries].
      key_positions: int32 [batch, keys]; negative for padding or empty cache slots.
    """
    causal = key_positions[:, None, :] <= query_positions[:, :, None]
    return causal & (key_positions[:, None, :] >= 0)


def grouped_query_attention(query, key, value, mask):
    """Scaled dot-product attention where groups of query heads share a key-value head.

    Args:
      query: [batch, queries, num_heads, head_dim].
      key, value: [batch, keys, num_kv_heads, head_dim].
      mask: bool [batch, queries, keys]; a query with no allowed key (padding) gets a
        uniform average of the values instead of NaN.

    Returns:
      [batch, queries, num_heads, head_dim].
    """
    batch, queries, num_heads, head_dim = query.shape
    num_kv_heads = key.shape[2]
    grouped = query.reshape(batch, queries, num_kv_heads, num_heads // num_kv_heads, head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", grouped, key).astype(jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = jnp.where(mask[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    mixed = jnp.einsum("bkgqs,bskd->bqkgd", weights, value)
    return mixed.reshape(batch, queries, num_heads, head_dim)


# --------------------------------------------------------------------------------------
# Modules


class RMSNorm(nn.Module):
    """RMSNorm with a learned `scale` [features], initialised to ones."""

    eps: float

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        return rms_norm(x, scale, self.eps)


def default_dense(features, *, name=None):
    """Build the projection layer of a pretrained Llama: no bias, kernel [in, out]."""
    return nn.Dense(features, use_bias=False, kernel_init=nn.initializers.normal(0.02), name=name)


def default_dot_general(lhs, rhs, dimension_numbers):
    """Compute `lax.dot_general` at full float32 precision, the default of the tied head."""
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=lax.Precision.HIGHEST)


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE and an optional cache of one layer."""

    config: LlamaConfig
    dense: Callable[..., nn.Module] = default_dense

    @nn.compact
    def __call__(self, x, positions, layer_cache=None):
        """Attend over x [batch, length, hidden_size].

        Args:
          positions: int32 [batch, length].
          layer_cache: None, or (keys, values, cache_positions, index) of this layer;
            cache_positions already hold the positions of this call's tokens.

        Returns:
          (output [batch, length, hidden_size], (keys, values) written to the cache or None).
        """
        config = self.config
        batch, length, _ = x.shape
        head_dim = config.head_dim

        def project(name, heads):
            return self.dense(heads * head_dim, name=name)(x).reshape(batch, length, heads, head_dim)

        angles = rotary_angles(positions, head_dim, config.rope_theta)
        query = apply_rotary(project("q_proj", config.num_heads), angles)
        key = apply_rotary(project("k_proj", config.num_kv_heads), angles)
        value = project("v_proj", config.num_kv_heads)

        if layer_cache is None:
            key_positions, updated = positions, None
        else:
            cached_keys, cached_values, key_positions, index = layer_cache
            start = (0, index, 0, 0)
            key = lax.dynamic_update_slice(cached_keys, key.astype(cached_keys.dtype), start)
            value = lax.dynamic_update_slice(cached_values, value.astype(cached_values.dtype), start)
            updated = (key, value)

        mask = attention_mask(positions, key_positions)
        mixed = grouped_query_attention(query, key.astype(query.dtype), value.astype(query.dtype), mask)
        output = self.dense(config.hidden_size, name="o_proj")(mixed.reshape(batch, length, -1))
        return output, updated


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    config: LlamaConfig
    dense: Callable[..., nn.Module] = default_dense

    @nn.compact
    def __call__(self, x):
        gate = self.dense(self.config.intermediate_size, name="gate_proj")(x)
        up = self.dense(self.config.intermediate_size, name="up_proj")(x)
        return self.dense(self.config.hidden_size, name="down_proj")(nn.silu(gate) * up)


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x))."""

    config: LlamaConfig
    dense: Callable[..., nn.Module] = default_dense

    @nn.compact
    def __call__(self, x, positions, layer_cache=None):
        eps = self.config.rms_norm_eps
        attended, updated = Attention(self.config, self.dense, name="attn")(
            RMSNorm(eps, name="input_norm")(x), positions, layer_cache
        )
        x = x + attended
        x = x + MLP(self.config, self.dense, name="mlp")(RMSNorm(eps, name="post_attention_norm")(x))
        return x, updated


class Llama(nn.Module):
    """Token ids -> (logits, last hidden state before the final norm, cache).

    Parameters: `embed` (embedding [vocab, hidden]), `layers_<i>` (blocks), `final_norm`,
    and `lm_head` only when the embeddings are untied. Every projection kernel is
    [in, out] without bias.

    `dense(features, name=...)` builds every projection (and the untied head) and
    `dot_general` computes the tied head, so an approximate multiplier can replace the
    products that hold nearly all of the model's multiplications, as in
    `Llama(config, dense=partial(approx.layers.Dense, multiplier="mitchell", use_bias=False))`.
    NOTE: the two attention products (query-key scores and weights-values) stay exact
    float32; in SmolLM2-135M over causal windows of up to 256 tokens they are under 4%
    of the products.
    """

    config: LlamaConfig
    dense: Callable[..., nn.Module] = default_dense
    dot_general: Callable = default_dot_general

    def setup(self):
        config = self.config.validate()
        self.embed = nn.Embed(
            config.vocab_size, config.hidden_size, embedding_init=nn.initializers.normal(0.02)
        )
        self.layers = [Block(config, self.dense) for _ in range(config.num_layers)]
        self.final_norm = RMSNorm(config.rms_norm_eps)
        if not config.tie_embeddings:
            self.lm_head = self.dense(config.vocab_size)

    def __call__(self, tokens, *, positions=None, cache=None):
        """Run the decoder over tokens int32 [batch, length].

        Args:
          positions: int32 [batch, length]; default 0..length-1, continuing from
            `cache.index` when a cache is given. Negative entries mark padding.
          cache: None, or a KVCache from `init_cache` with room for `length` more tokens.

        Returns:
          (logits, hidden, cache). logits: float32 [batch, length, vocab_size].
          hidden: [batch, length, hidden_size], the last block's output before the
          final RMSNorm. cache: the updated KVCache, or None when none was given.
        """
        batch, length = tokens.shape
        if positions is None:
            offset = 0 if cache is None else cache.index
            positions = jnp.broadcast_to(offset + jnp.arange(length, dtype=jnp.int32), (batch, length))
        positions = positions.astype(jnp.int32)
        if cache is not None:
            max_length = cache.positions.shape[1]
            if not isinstance(cache.index, jax.core.Tracer) and int(cache.index) + length > max_length:
                raise ValueError(
                    f"the cache contains {max_length} positions, {int(cache.index)} are already used "
                    f"and {length} more do not fit; allocate a larger cache with init_cache."
                )
            cache_positions = lax.dynamic_update_slice(cache.positions, positions, (0, cache.index))

        x = self.embed(tokens)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.layers):
            layer_cache = None
            if cache is not None:
                layer_cache = (cache.keys[i], cache.values[i], cache_positions, cache.index)
            x, updated = layer(x, positions, layer_cache)
            if updated is not None:
                new_keys.append(updated[0])
                new_values.append(updated[1])

        new_cache = None
        if cache is not None:
            new_cache = KVCache(tuple(new_keys), tuple(new_values), cache_positions, cache.index + length)
        return self.head(x), x, new_cache

    def head(self, hidden):
        """Final RMSNorm and LM head: hidden [..., hidden_size] -> float32 logits [..., vocab_size]."""
        normed = self.final_norm(hidden)
        if self.config.tie_embeddings:
            # normed [..., hidden] x embedding [vocab, hidden] -> [..., vocab]
            logits = self.dot_general(normed, self.embed.embedding, (((normed.ndim - 1,), (1,)), ((), ())))
        else:
            logits = self.lm_head(normed)
        return logits.astype(jnp.float32)
