"""adapters.pema: Gradual Unrolling, the losses, the mixture, training and the memory."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adapters import pema


def unit_head(vocab=2):
    return pema.FrozenHead(norm_scale=jnp.ones(2), embedding=jnp.eye(vocab, 2), eps=0.0)


@pytest.mark.parametrize("step, expected", [(0, 0.64), (1, 0.36), (2, 0.16), (3, 0.04), (4, 0.0), (9, 0.0)])
def test_gradual_unrolling_values(step, expected):
    assert float(pema.gradual_unrolling(step, 4, lambda_max=0.8)) == pytest.approx(expected, abs=1e-7)


def test_gradual_unrolling_per_example_lengths():
    lam = pema.gradual_unrolling(2, jnp.array([2.0, 4.0, 0.0]), lambda_max=1.0)
    np.testing.assert_allclose(lam, [0.0, 0.25, 0.0])


def test_gradual_unrolling_rejects_bad_lambda():
    with pytest.raises(ValueError, match="lambda_max=1.2"):
        pema.gradual_unrolling(0, 3, lambda_max=1.2)


def hand_params():
    # r = 1, d = 2: A h = h_0; B_rct maps it to (2 h_0, 0); B_pd to (6 h_0, 0).
    return {"A": jnp.array([[1.0, 0.0]]), "B_rct": jnp.array([[2.0], [0.0]]), "B_pd": jnp.array([[6.0], [0.0]])}


def test_reconstruction_loss_by_hand():
    h = jnp.array([[1.0, 3.0]])
    # 0.5 * B_rct A h = (1, 0); error (0, -3); mean square 9 / 2.
    assert float(pema.reconstruction_loss(hand_params(), h, scaling=0.5)) == pytest.approx(4.5)


def test_prediction_loss_by_hand():
    h = jnp.array([[1.0, 3.0]])
    # z = 0.5 * B_pd A h = (3, 0); RMSNorm(z) = (sqrt 2, 0); logits (sqrt 2, 0).
    expected = math.log(1 + math.exp(-math.sqrt(2)))
    loss = pema.prediction_loss(hand_params(), unit_head(), h, jnp.array([0]), scaling=0.5)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    stage2 = pema.stage2_loss(hand_params(), unit_head(), h, jnp.array([0]), scaling=0.5, kappa=0.2)
    assert float(stage2) == pytest.approx(0.2 * 4.5 + 0.8 * expected, rel=1e-6)


def test_head_logits_zero_input_is_uniform():
    logits = pema.head_logits(pema.FrozenHead(jnp.ones(2), jnp.eye(3, 2), 1e-6), jnp.zeros((1, 2)))
    np.testing.assert_array_equal(logits, jnp.zeros((1, 3)))


def test_mixture_by_hand():
    lm = jnp.log(jnp.array([[1.0, 0.0]]))
    module = jnp.log(jnp.array([[0.5, 0.5]]))
    out = np.exp(np.asarray(pema.mixture(lm, module, jnp.array([0.25]))))
    # 0.25 * 0.5 + 0.75 * 1 and 0.25 * 0.5 + 0.75 * 0.
    np.testing.assert_allclose(out, [[0.875, 0.125]], rtol=1e-6)


def test_mix_hook_without_unrolling_uses_lambda_max():
    head = unit_head()
    lm = jax.nn.log_softmax(jnp.array([[0.0, 1.0]]))
    mix = pema.make_mix(hand_params(), head, scaling=0.5, lambda_max=0.3)
    out, state = mix(5, jnp.array([[1.0, 3.0]]), lm, "state")
    module = pema.prediction_log_probs(hand_params(), head, jnp.array([[1.0, 3.0]]), scaling=0.5)
    np.testing.assert_allclose(np.exp(out), 0.3 * np.exp(module) + 0.7 * np.exp(lm), rtol=1e-6)
    assert state == "state"
    unrolled = pema.make_mix(hand_params(), head, scaling=0.5, lambda_max=0.3, lengths=[4])
    out, _ = unrolled(4, jnp.array([[1.0, 3.0]]), lm, None)
    np.testing.assert_allclose(out, lm, rtol=1e-6)


def test_init_rejects_rank_zero():
    with pytest.raises(ValueError, match="rank=0"):
        pema.init_params(jax.random.key(0), 4, 0)


def test_fit_length_ratio():
    assert pema.fit_length_ratio([2, 4], [3, 6]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="non-empty source"):
        pema.fit_length_ratio([], [])


def synthetic_memory(seed, n, dim=8, vocab=5):
    # The gold token is the vocabulary row that scores highest against a fixed rotation
    # of h. The module must learn that rotation, which the frozen head alone lacks.
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(n, dim)).astype(np.float32)
    rotation = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, dim)))[0].astype(np.float32)
    embedding = np.random.default_rng(7).normal(size=(vocab, dim)).astype(np.float32)
    tokens = np.argmax(hidden @ rotation @ embedding.T, axis=1).astype(np.int32)
    return pema.Memory(hidden, tokens), embedding


def test_training_lowers_validation_loss():
    memory, embedding = synthetic_memory(0, 512)
    validation, _ = synthetic_memory(1, 128)
    head = pema.FrozenHead(jnp.ones(8), jnp.asarray(embedding), 1e-6)
    config = pema.TrainConfig(rank=8, alpha=8.0, learning_rate=0.02, batch_size=64, max_epochs=15,
                              patience=3, dropout=0.0)
    params, stages = pema.train(memory, validation, head, config, seed=0)
    first = stages["stage1"].history
    assert first[stages["stage1"].best_epoch]["validation_loss"] < 0.2 * first[0]["validation_loss"]
    second = stages["stage2"].history
    assert second[stages["stage2"].best_epoch]["validation_loss"] < 0.7 * second[0]["validation_loss"]
    log_probs = pema.prediction_log_probs(params, head, jnp.asarray(validation.hidden), scaling=1.0)
    accuracy = float(np.mean(np.argmax(log_probs, 1) == validation.tokens))
    assert accuracy > 0.6  # chance with 5 tokens is about 0.2


def position_features(tokens):
    """A causal stand-in for a model: hidden[b, p] = (token at p, p, sum of tokens up to p)."""
    tokens = np.asarray(tokens, np.float32)
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.float32), tokens.shape)
    return np.stack([tokens, positions, np.cumsum(tokens, axis=1)], axis=-1)


def test_memory_entries_positions():
    fed, positions, gold = pema.memory_entries([5, 6, 7], [8, 9])
    np.testing.assert_array_equal(fed, [5, 6, 7, 8])
    np.testing.assert_array_equal(positions, [2, 3])
    np.testing.assert_array_equal(gold, [8, 9])


def test_build_memory_keeps_target_positions(tmp_path):
    examples = [([1, 2], [3, 4, 5]), ([7], [8]), ([2, 2, 2], [6, 1])]
    memory = pema.build_memory(position_features, examples, tmp_path / "m", chunk_examples=2, batch_size=2,
                               pad_multiple=4)
    np.testing.assert_array_equal(memory.tokens, [3, 4, 5, 8, 6, 1])
    # The stored representation sits one position before each gold token.
    np.testing.assert_array_equal(memory.hidden[:, 0], [2, 3, 4, 7, 2, 6])
    np.testing.assert_array_equal(memory.hidden[:, 1], [1, 2, 3, 0, 2, 3])
    np.testing.assert_array_equal(memory.hidden[:, 2], [3, 6, 10, 7, 6, 12])
    assert sorted(p.name for p in (tmp_path / "m").glob("chunk_*.npz")) == ["chunk_00000.npz", "chunk_00001.npz"]


def test_build_memory_resumes_missing_chunk(tmp_path):
    examples = [([1, 2], [3, 4]), ([7], [8]), ([2, 2], [6])]
    first = pema.build_memory(position_features, examples, tmp_path, chunk_examples=1)
    (tmp_path / "chunk_00001.npz").unlink()
    calls = []

    def counting(tokens):
        calls.append(tokens.shape)
        return position_features(tokens)

    with pytest.raises(ValueError, match="unfinished"):
        pema.load_memory(tmp_path)
    second = pema.build_memory(counting, examples, tmp_path, chunk_examples=1)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.hidden, second.hidden)
    np.testing.assert_array_equal(first.tokens, second.tokens)


def test_build_memory_rejects_other_examples(tmp_path):
    pema.build_memory(position_features, [([1], [2])], tmp_path)
    with pytest.raises(ValueError, match="other examples"):
        pema.build_memory(position_features, [([1], [3])], tmp_path)


@pytest.mark.parametrize("examples", [[], [([1, 2], [])]])
def test_empty_memory_raises(examples, tmp_path):
    with pytest.raises(ValueError, match="memory would be empty"):
        pema.build_memory(position_features, examples, tmp_path)


def test_load_memory_of_missing_folder_raises(tmp_path):
    with pytest.raises(ValueError, match="no memory found"):
        pema.load_memory(tmp_path)


def test_evaluate_by_hand():
    memory = pema.Memory(np.array([[1.0, 3.0]], np.float32), np.array([0], np.int32))
    result = pema.evaluate(hand_params(), unit_head(), memory, scaling=0.5)
    assert result["pema_cross_entropy"] == pytest.approx(math.log(1 + math.exp(-math.sqrt(2))), rel=1e-6)
    # The frozen head sees h = (1, 3): RMSNorm gives (1, 3) / sqrt(5), logits the same.
    assert result["lm_cross_entropy"] == pytest.approx(math.log(1 + math.exp(2 / math.sqrt(5))), rel=1e-5)
    assert result["pema_accuracy"] == 1.0
    assert result["lm_accuracy"] == 0.0
    assert result["reconstruction"] == pytest.approx(4.5)


def test_non_finite_loss_names_the_step():
    # Adam with a constant gradient of -1 raises w by the learning rate, 1, per step. So w
    # is 3 at step 4, which falls in epoch 2 at two steps per epoch.
    def loss_fn(params, h, key):
        w = params["w"]
        return -w + jnp.where(w > 2.5, jnp.nan, 0.0) + 0.0 * jnp.mean(h)

    hidden = np.zeros((128, 2), np.float32)
    config = pema.TrainConfig(rank=1, learning_rate=1.0, batch_size=64, max_epochs=5, patience=5, dropout=0.0)
    with pytest.raises(FloatingPointError, match=r"stage: the training loss became nan at step 4 \(epoch 2\)"):
        pema.train_stage(loss_fn, {"w": jnp.float32(0.0)}, {}, (hidden,), (hidden,), config, seed=0, name="stage")
