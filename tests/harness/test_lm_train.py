"""SentencePiece tokenizer and next-token training of the tiny Llama on Shakespeare."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from harness import lm_train
from harness import text as text_lib
from models.llama import Llama, tiny_config

LENGTH = 64


@pytest.fixture(scope="module")
def corpus(data_dir):
    train_lines = text_lib.load_text_lines("shakespeare_style", "train", "original", data_dir=data_dir)
    held_out = text_lib.load_text_lines("shakespeare_style", "validation", "original", data_dir=data_dir)
    tokenizer = text_lib.SentencePieceTokenizer.train(train_lines, vocab_size=256)
    return tokenizer, tokenizer.encode_lines(train_lines), tokenizer.encode_lines(held_out)


def test_sentencepiece_round_trip(corpus):
    tokenizer = corpus[0]
    for line in ["Then plainly know my heart's dear love is set", "O Romeo , Romeo !"]:
        ids = tokenizer.encode(line)
        assert tokenizer.decode(ids) == line
        assert max(ids) < tokenizer.vocab_size
    assert tokenizer.vocab_size == 256


def test_sentencepiece_stream_ends_lines_with_eos(corpus):
    tokenizer = corpus[0]
    ids = tokenizer.encode_lines(["thou art", "good morrow"])
    assert ids.dtype == np.int32
    assert list(ids) == tokenizer.encode("thou art") + [2] + tokenizer.encode("good morrow") + [2]


def test_sentencepiece_training_is_deterministic(corpus):
    lines = ["to be or not to be", "that is the question", "whether tis nobler"] * 20
    first = text_lib.SentencePieceTokenizer.train(lines, vocab_size=20)
    second = text_lib.SentencePieceTokenizer.train(lines, vocab_size=20)
    assert first.model_proto == second.model_proto


def test_sentencepiece_bad_vocab_size_raises():
    with pytest.raises(ValueError, match="vocab_size=2 is invalid"):
        text_lib.SentencePieceTokenizer.train(["a b c"], vocab_size=2)


def test_mean_loss_handles_partial_batch():
    # A model with zero logits predicts uniformly, so every window costs log(vocab).
    windows = np.zeros((5, 9), np.int32)
    loss = lm_train.mean_loss(lambda params, tokens: jnp.zeros(tokens.shape + (7,)), None, windows, batch_size=4)
    assert loss == pytest.approx(np.log(7), rel=1e-6)


def test_tiny_llama_learns_shakespeare(corpus):
    tokenizer, train_ids, held_out_ids = corpus
    model = Llama(tiny_config(tokenizer.vocab_size))
    params = model.init(jax.random.key(0), jnp.zeros((1, LENGTH), jnp.int32))["params"]

    def apply_fn(params, tokens):
        return model.apply({"params": params}, tokens)[0]

    windows = text_lib.eval_windows(held_out_ids, LENGTH, max_windows=32)
    before = lm_train.mean_loss(apply_fn, params, windows)
    params, losses = lm_train.train(apply_fn, params, optax.adam(3e-3), train_ids,
                                    steps=200, batch_size=16, length=LENGTH, seed=0)
    after = lm_train.mean_loss(apply_fn, params, windows)

    unigram = np.bincount(train_ids, minlength=tokenizer.vocab_size) + 1.0
    unigram_loss = -np.log(unigram / unigram.sum())[windows[:, 1:]].mean()
    assert before == pytest.approx(np.log(tokenizer.vocab_size), rel=0.05)
    assert after < before - 1.0, (before, after)
    # Beating the unigram distribution shows the model uses the context.
    assert after < unigram_loss, (after, unigram_loss)
    assert losses[-1] < losses[0]
