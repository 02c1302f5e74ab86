"""Batched greedy decoding with a key-value cache and an optional mixing hook.

Prompts of different lengths are left-padded to a common length rounded up to
PROMPT_BUCKET, so that the jitted prefill and decoding steps compile once per
(batch, bucket, max_new_tokens) and not once per prompt length. Pad tokens get
position -1, which `models.llama` masks out, so every row decodes exactly as it would
alone.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models.llama import PADDING_POSITION, init_cache

PROMPT_BUCKET = 16
PAD_TOKEN = 0


# The cache is donated: each step overwrites one slot, so XLA may update it in place.
@functools.partial(jax.jit, static_argnames="model", donate_argnames="cache")
def decode_step(model, params, tokens, positions, cache):
    """Run tokens [batch, length] through the model and cache.

    Returns:
      (log-probabilities float32 [batch, vocab], hidden [batch, hidden_size], cache),
      the first two at the last position, hidden before the final norm.
    """
    logits, hidden, cache = model.apply({"params": params}, tokens, positions=positions, cache=cache)
    return jax.nn.log_softmax(logits[:, -1]), hidden[:, -1], cache


def left_pad(prompts, length):
    """Left-pad token lists to `length`.

    Returns:
      (tokens int32 [batch, length], positions int32 [batch, length]), with
      PADDING_POSITION at the padding and 0, 1, ... at each prompt's tokens.
    """
    tokens = np.full((len(prompts), length), PAD_TOKEN, np.int32)
    positions = np.full((len(prompts), length), PADDING_POSITION, np.int32)
    for row, prompt in enumerate(prompts):
        if prompt:
            tokens[row, length - len(prompt):] = prompt
            positions[row, length - len(prompt):] = np.arange(len(prompt))
    return tokens, positions


def _check_prompts(prompts, max_new_tokens, context):
    if not prompts:
        raise ValueError("prompts is empty; pass at least one list of token ids.")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} is invalid; it must be 0 or more.")
    for row, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {row} is empty; every prompt needs at least one token (for example BOS).")
        if len(prompt) + max_new_tokens > context:
            raise ValueError(
                f"prompt {row} has {len(prompt)} tokens and max_new_tokens={max_new_tokens}, "
                f"together longer than the model's context of {context} tokens; shorten the "
                "prompt or lower max_new_tokens."
            )


def greedy_generate(model, params, prompts, *, max_new_tokens, eos_id, mix=None):
    """Greedily extend each prompt by up to `max_new_tokens` tokens.

    Args:
      model: a `models.llama.Llama`.
      params: its parameters.
      prompts: list of token-id lists, of any lengths.
      max_new_tokens: the maximum number of tokens generated per prompt.
      eos_id: a row stops after generating this id (not included in its output); None
        never stops early.
      mix: optional `mix(step, hidden, lm_log_probs, state) -> (log_probs, state)`,
        called at every step t = 0, 1, ... with hidden [batch, hidden_size] (the last
        block's output before the final norm) and lm_log_probs float32 [batch, vocab];
        the next token is the argmax of the returned log_probs. `state` starts as None
        and is whatever the previous call returned. Rows that already stopped are
        still passed, and their tokens ignored.

    Returns:
      list of generated token-id lists, one per prompt, without the prompt.

    Raises:
      ValueError: an empty prompt list or prompt, or a prompt that together with
        max_new_tokens exceeds `model.config.max_position_embeddings`.
    """
    prompts = [[int(t) for t in prompt] for prompt in prompts]
    _check_prompts(prompts, max_new_tokens, model.config.max_position_embeddings)
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    batch = len(prompts)
    longest = max(len(p) for p in prompts)
    padded_length = -(-longest // PROMPT_BUCKET) * PROMPT_BUCKET
    tokens, positions = left_pad(prompts, padded_length)
    cache = init_cache(model.config, batch, padded_length + max_new_tokens)
    log_probs, hidden, cache = decode_step(model, params, jnp.asarray(tokens), jnp.asarray(positions), cache)

    next_positions = np.array([len(p) for p in prompts], np.int32)
    finished = np.zeros(batch, bool)
    outputs = [[] for _ in prompts]
    state = None
    for step in range(max_new_tokens):
        if mix is not None:
            log_probs, state = mix(step, hidden, log_probs, state)
        chosen = np.asarray(jnp.argmax(log_probs, axis=-1))
        for row in np.flatnonzero(~finished):
            if eos_id is not None and chosen[row] == eos_id:
                finished[row] = True
            else:
                outputs[row].append(int(chosen[row]))
        if finished.all() or step == max_new_tokens - 1:
            break
        log_probs, hidden, cache = decode_step(
            model, params, jnp.asarray(chosen[:, None], jnp.int32), jnp.asarray(next_positions[:, None]), cache
        )
        next_positions += 1
    return outputs
