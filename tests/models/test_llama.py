"""Llama decoder: cached decoding, causal and padding masks, GQA, rotary layout, config checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import llama
from models.llama import Llama, LlamaConfig, init_cache

TINY = LlamaConfig(
    vocab_size=50,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    rms_norm_eps=1e-5,
    rope_theta=10_000.0,
    max_position_embeddings=64,
)


def init(config, seed=0):
    model = Llama(config)
    params = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    return model, params


def random_tokens(seed, shape, vocab=TINY.vocab_size):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


def test_parameter_names_and_shapes():
    _, params = init(TINY)
    head_dim = TINY.head_dim
    assert params["embed"]["embedding"].shape == (50, 32)
    attn = params["layers_1"]["attn"]
    assert attn["q_proj"]["kernel"].shape == (32, 4 * head_dim)
    assert attn["k_proj"]["kernel"].shape == (32, 2 * head_dim)
    assert attn["v_proj"]["kernel"].shape == (32, 2 * head_dim)
    assert attn["o_proj"]["kernel"].shape == (32, 32)
    mlp = params["layers_0"]["mlp"]
    assert mlp["gate_proj"]["kernel"].shape == (32, 48)
    assert mlp["up_proj"]["kernel"].shape == (32, 48)
    assert mlp["down_proj"]["kernel"].shape == (48, 32)
    assert params["layers_0"]["input_norm"]["scale"].shape == (32,)
    assert params["layers_0"]["post_attention_norm"]["scale"].shape == (32,)
    assert params["final_norm"]["scale"].shape == (32,)
    assert set(params) == {"embed", "layers_0", "layers_1", "final_norm"}
    leaves = jax.tree_util.tree_leaves_with_path(params)
    assert not [path for path, _ in leaves if "bias" in jax.tree_util.keystr(path)]


def test_forward_shapes_and_head_matches_logits():
    model, params = init(TINY)
    tokens = random_tokens(1, (3, 7))
    logits, hidden, cache = model.apply({"params": params}, tokens)
    assert logits.shape == (3, 7, 50)
    assert logits.dtype == jnp.float32
    assert hidden.shape == (3, 7, 32)
    assert cache is None
    from_hidden = model.apply({"params": params}, hidden, method=Llama.head)
    np.testing.assert_allclose(from_hidden, logits, rtol=1e-6, atol=1e-6)


def test_untied_head_has_its_own_kernel():
    model, params = init(dataclasses.replace(TINY, tie_embeddings=False))
    assert params["lm_head"]["kernel"].shape == (32, 50)
    logits, _, _ = model.apply({"params": params}, random_tokens(2, (1, 5)))
    assert logits.shape == (1, 5, 50)


def test_cached_decoding_equals_full_forward():
    model, params = init(TINY)
    tokens = random_tokens(3, (2, 9))
    full, full_hidden, _ = model.apply({"params": params}, tokens)

    cache = init_cache(TINY, 2, 12)
    prefix_logits, _, cache = model.apply({"params": params}, tokens[:, :4], cache=cache)
    steps = [prefix_logits]
    hiddens = []
    for t in range(4, 9):
        logits, hidden, cache = model.apply({"params": params}, tokens[:, t : t + 1], cache=cache)
        steps.append(logits)
        hiddens.append(hidden)
    assert int(cache.index) == 9
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jnp.concatenate(hiddens, axis=1), full_hidden[:, 4:], rtol=1e-4, atol=1e-4)


def test_future_tokens_do_not_change_earlier_logits():
    model, params = init(TINY)
    tokens = random_tokens(4, (1, 8))
    changed = tokens.at[:, 5:].set((tokens[:, 5:] + 1) % TINY.vocab_size)
    original, _, _ = model.apply({"params": params}, tokens)
    edited, _, _ = model.apply({"params": params}, changed)
    np.testing.assert_allclose(edited[:, :5], original[:, :5], rtol=1e-5, atol=1e-5)
    assert not np.allclose(edited[:, 5:], original[:, 5:], atol=1e-3)


def test_left_padding_matches_unpadded_sequence():
    model, params = init(TINY)
    tokens = random_tokens(5, (1, 6))
    plain, _, _ = model.apply({"params": params}, tokens)
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), tokens], axis=1)
    positions = jnp.array([[-1, -1, -1, 0, 1, 2, 3, 4, 5]], jnp.int32)
    logits, _, _ = model.apply({"params": params}, padded, positions=positions)
    np.testing.assert_allclose(logits[:, 3:], plain, rtol=1e-4, atol=1e-4)


def test_grouped_query_attention_equals_repeated_heads():
    # GQA with 2 key-value heads for 4 query heads is multi-head attention whose
    # key-value heads are each repeated for their 2 query heads.
    keys = jax.random.split(jax.random.key(6), 3)
    query = jax.random.normal(keys[0], (2, 5, 4, 8))
    key = jax.random.normal(keys[1], (2, 5, 2, 8))
    value = jax.random.normal(keys[2], (2, 5, 2, 8))
    positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
    mask = llama.attention_mask(positions, positions)
    grouped = llama.grouped_query_attention(query, key, value, mask)
    repeated = llama.grouped_query_attention(
        query, jnp.repeat(key, 2, axis=2), jnp.repeat(value, 2, axis=2), mask
    )
    np.testing.assert_allclose(grouped, repeated, rtol=1e-5, atol=1e-5)
    # The first query attends only to the first key, so it returns that value exactly.
    np.testing.assert_allclose(grouped[:, 0, 0], value[:, 0, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grouped[:, 0, 3], value[:, 0, 1], rtol=1e-5, atol=1e-6)


def test_rotary_matches_complex_rotation():
    # Rotate-half RoPE rotates the pair (x[i], x[i + d/2]) as the complex number
    # x[i] + 1j * x[i + d/2] multiplied by exp(1j * position * theta ** (-2i/d)).
    x = jax.random.normal(jax.random.key(7), (1, 3, 2, 8))
    positions = jnp.array([[0, 1, 5]])
    angles = llama.rotary_angles(positions, 8, 10_000.0)
    rotated = np.asarray(llama.apply_rotary(x, angles))
    x = np.asarray(x)
    frequencies = 10_000.0 ** (-np.arange(0, 8, 2) / 8)
    phase = np.exp(1j * np.array([0, 1, 5])[:, None] * frequencies)
    expected = (x[..., :4] + 1j * x[..., 4:]) * phase[None, :, None, :]
    np.testing.assert_allclose(rotated[..., :4], expected.real, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rotated[..., 4:], expected.imag, rtol=1e-5, atol=1e-5)
    # Scores depend only on the distance between positions.
    q, k = jax.random.normal(jax.random.key(8), (2, 1, 1, 1, 8))

    def score(p_q, p_k):
        rq = llama.apply_rotary(q, llama.rotary_angles(jnp.array([[p_q]]), 8, 10_000.0))
        rk = llama.apply_rotary(k, llama.rotary_angles(jnp.array([[p_k]]), 8, 10_000.0))
        return float(jnp.sum(rq * rk))

    assert score(7, 3) == pytest.approx(score(14, 10), rel=1e-4)


def test_rms_norm_values():
    x = jnp.array([[3.0, 4.0]])
    normed = llama.rms_norm(x, jnp.array([1.0, 2.0]), 0.0)
    rms = np.sqrt((9 + 16) / 2)
    np.testing.assert_allclose(normed, [[3 / rms, 8 / rms]], rtol=1e-6)


def test_cache_overflow_raises():
    model, params = init(TINY)
    cache = init_cache(TINY, 1, 4)
    with pytest.raises(ValueError, match="cache contains 4 positions"):
        model.apply({"params": params}, random_tokens(9, (1, 5)), cache=cache)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("hidden_size", 30, "not divisible by num_heads"),
        ("num_kv_heads", 3, "not divisible by num_kv_heads"),
        ("num_layers", 0, "num_layers=0 is invalid"),
        ("vocab_size", -5, "vocab_size=-5 is invalid"),
        ("rms_norm_eps", 0.0, "rms_norm_eps=0.0 is invalid"),
        ("hidden_size", 36, "head_dim=9"),
    ],
)
def test_bad_config_raises(field, value, message):
    config = dataclasses.replace(TINY, **{field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()
    with pytest.raises(ValueError, match=message):
        init(config)
