"""A small decoder-only transformer whose matrix products can all be swapped.

Pre-norm blocks of causal multi-head self-attention and a GELU MLP, learned position
embeddings and an untied output head. Every matrix product goes through either the
`dense` layer class (projections, MLP, head) or the `dot_general` function (the two
attention products, query-key scores and weights-values), so an approximate multiplier
can replace all of them. Embedding lookups and layer norms involve no matrix product.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax


def _native_dot_general(lhs, rhs, dimension_numbers):
    return lax.dot_general(lhs, rhs, dimension_numbers, precision=lax.Precision.HIGHEST)


class CausalSelfAttention(nn.Module):
    """Multi-head attention over [batch, length, features] with a causal mask."""

    num_heads: int
    dense: Callable[..., nn.Module]
    dot_general: Callable

    @nn.compact
    def __call__(self, x):
        batch, length, features = x.shape
        if features % self.num_heads:
            raise ValueError(f"features={features} is not divisible by num_heads={self.num_heads}.")
        head_dim = features // self.num_heads

        def project(name):
            y = self.dense(features, name=name)(x)
            return y.reshape(batch, length, self.num_heads, head_dim)

        query, key, value = project("query"), project("key"), project("value")
        # scores[b, h, t, s] = sum_d query[b, t, h, d] * key[b, s, h, d]
        scores = self.dot_general(query, key, (((3,), (3,)), ((0, 2), (0, 2))))
        scores = scores / jnp.sqrt(jnp.float32(head_dim))
        mask = jnp.tril(jnp.ones((length, length), bool))
        weights = nn.softmax(jnp.where(mask, scores, jnp.finfo(jnp.float32).min), axis=-1)
        # mixed[b, h, t, d] = sum_s weights[b, h, t, s] * value[b, s, h, d]
        mixed = self.dot_general(weights, value, (((3,), (1,)), ((0, 1), (0, 2))))
        mixed = jnp.transpose(mixed, (0, 2, 1, 3)).reshape(batch, length, features)
        return self.dense(features, name="out")(mixed)


class Block(nn.Module):
    """Pre-norm transformer block: attention and MLP, each with a residual connection."""

    num_heads: int
    mlp_ratio: int
    dense: Callable[..., nn.Module]
    dot_general: Callable

    @nn.compact
    def __call__(self, x):
        features = x.shape[-1]
        attention = CausalSelfAttention(self.num_heads, self.dense, self.dot_general, name="attention")
        x = x + attention(nn.LayerNorm(name="norm1")(x))
        hidden = self.dense(features * self.mlp_ratio, name="mlp_in")(nn.LayerNorm(name="norm2")(x))
        return x + self.dense(features, name="mlp_out")(nn.gelu(hidden))


class DecoderLM(nn.Module):
    """Token ids [batch, length] -> next-token logits [batch, length, vocab_size].

    Attributes:
      vocab_size: number of token ids.
      max_length: longest sequence (size of the position table).
      features, num_layers, num_heads, mlp_ratio: model size.
      dense: layer class with the `flax.linen.Dense` signature.
      dot_general: function with the `lax.dot_general(lhs, rhs, dimension_numbers)` signature.
    """

    vocab_size: int
    max_length: int = 128
    features: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dense: Callable[..., nn.Module] = nn.Dense
    dot_general: Callable = _native_dot_general

    @nn.compact
    def __call__(self, tokens):
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"sequence length {length} exceeds max_length={self.max_length}.")
        x = nn.Embed(self.vocab_size, self.features, name="embed")(tokens)
        positions = self.param("positions", nn.initializers.normal(0.02), (self.max_length, self.features))
        x = x + positions[:length]
        for index in range(self.num_layers):
            x = Block(self.num_heads, self.mlp_ratio, self.dense, self.dot_general, name=f"block{index}")(x)
        x = nn.LayerNorm(name="norm_final")(x)
        return self.dense(self.vocab_size, name="head")(x)
