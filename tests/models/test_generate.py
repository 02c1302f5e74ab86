"""Greedy generation: agreement with the full forward pass, EOS, the mix hook, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import generate
from models.generate import greedy_generate
from models.llama import Llama, LlamaConfig

TINY = LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                   num_kv_heads=1, max_position_embeddings=40)
PROMPTS = [[3, 7, 1], [5], [2, 9, 9, 4, 4, 1, 8]]


@pytest.fixture(scope="module")
def tiny():
    model = Llama(TINY)
    # A larger init scale than the default makes the argmax depend on the context.
    params = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    params = jax.tree_util.tree_map(lambda x: x * 8 if x.ndim == 2 else x, params)
    return model, params


REFERENCE_LENGTH = 16


def reference_greedy(model, params, prompt, steps):
    """Argmax of a full forward pass over the whole sequence at every step, without cache.

    The sequence is right-padded to REFERENCE_LENGTH, which the causal mask hides from
    earlier positions, so one compiled forward pass serves every step.
    """
    forward = jax.jit(lambda tokens: model.apply({"params": params}, tokens)[0])
    ids = list(prompt)
    for _ in range(steps):
        padded = jnp.array([ids + [0] * (REFERENCE_LENGTH - len(ids))])
        ids.append(int(jnp.argmax(forward(padded)[0, len(ids) - 1])))
    return ids[len(prompt):]


def test_matches_full_forward_argmax(tiny):
    model, params = tiny
    outputs = greedy_generate(model, params, PROMPTS, max_new_tokens=6, eos_id=None)
    expected = [reference_greedy(model, params, prompt, 6) for prompt in PROMPTS]
    assert outputs == expected
    # The outputs differ between prompts, so the check covers more than one sequence.
    assert len({tuple(o) for o in outputs}) > 1


def test_eos_stops_only_its_row(tiny):
    model, params = tiny
    expected = [reference_greedy(model, params, prompt, 6) for prompt in PROMPTS]
    eos = expected[0][3]
    outputs = greedy_generate(model, params, PROMPTS, max_new_tokens=6, eos_id=eos)
    for output, full in zip(outputs, expected):
        stop = full.index(eos) if eos in full else len(full)
        assert output == full[:stop]
    lengths = [len(output) for output in outputs]
    assert min(lengths) < 6, lengths
    assert max(lengths) == 6, lengths


def test_mix_hook_forces_a_token(tiny):
    model, params = tiny
    calls = []

    def force_seven(step, hidden, lm_log_probs, state):
        calls.append((step, hidden.shape, lm_log_probs.shape, state))
        forced = jnp.full_like(lm_log_probs, -jnp.inf).at[:, 7].set(0.0)
        return forced, step + 100

    outputs = greedy_generate(model, params, PROMPTS, max_new_tokens=4, eos_id=None, mix=force_seven)
    assert outputs == [[7, 7, 7, 7]] * 3
    assert [c[0] for c in calls] == [0, 1, 2, 3]
    assert calls[0][1] == (3, TINY.hidden_size)
    assert calls[0][2] == (3, TINY.vocab_size)
    assert [c[3] for c in calls] == [None, 100, 101, 102]


def test_mix_hook_receives_lm_log_probs_and_hidden(tiny):
    model, params = tiny
    seen = {}

    def record(step, hidden, lm_log_probs, state):
        if step == 0:
            seen["hidden"], seen["log_probs"] = hidden, lm_log_probs
        return lm_log_probs, state

    greedy_generate(model, params, [PROMPTS[0]], max_new_tokens=2, eos_id=None, mix=record)
    logits, hidden, _ = model.apply({"params": params}, jnp.array([PROMPTS[0]]))
    np.testing.assert_allclose(seen["hidden"], hidden[:, -1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(seen["log_probs"], jax.nn.log_softmax(logits[:, -1]), rtol=1e-4, atol=1e-4)


def test_prompt_longer_than_context_raises(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="35 tokens and max_new_tokens=6.*context of 40 tokens"):
        greedy_generate(model, params, [[1] * 35], max_new_tokens=6, eos_id=None)


def test_empty_prompt_raises(tiny):
    model, params = tiny
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        greedy_generate(model, params, [[1], []], max_new_tokens=2, eos_id=None)


def test_same_bucket_does_not_recompile(tiny):
    model, params = tiny
    greedy_generate(model, params, [[1, 2, 3], [4]], max_new_tokens=3, eos_id=None)
    compiled = generate.decode_step._cache_size()
    greedy_generate(model, params, [[5, 6, 7, 8, 9], [1, 2]], max_new_tokens=3, eos_id=None)
    assert generate.decode_step._cache_size() == compiled


def test_smollm2_generates_paris(smollm2):
    config, params, tokenizer = smollm2
    prompts = [tokenizer.encode("The capital of France is"), tokenizer.encode("Hello")]
    outputs = greedy_generate(Llama(config), params, prompts, max_new_tokens=3, eos_id=tokenizer.eos_id)
    assert "Paris" in tokenizer.decode(outputs[0])
