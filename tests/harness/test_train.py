"""The training loop: it learns, resumes bit for bit, refuses foreign checkpoints, stops on NaN."""

import json

import jax
import numpy as np
import optax
import pytest

from harness import checkpoint, data, metrics, train
from models import MnistCNN


@pytest.fixture(scope="module")
def mnist(data_dir):
    return (
        data.load_image_dataset("mnist", "train", data_dir=data_dir).take(4096),
        data.load_image_dataset("mnist", "test", data_dir=data_dir).take(500),
    )


def small_cnn():
    return MnistCNN(widths=(8, 16), hidden=32)


def leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_fit_learns_mnist(mnist):
    train_set, test_set = mnist
    options = train.FitOptions(steps=60, batch_size=32, seed=0, log_every=20)
    state = train.fit(small_cnn(), optax.sgd(0.05, momentum=0.9), train_set, options)
    result = train.evaluate(small_cnn(), state.variables(), test_set, batch_size=100)
    assert result["count"] == 500
    assert result["top1"] > 0.8
    assert result["top5"] >= result["top1"]


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_bit_identically(mnist, tmp_path):
    train_set, _ = mnist
    tx = optax.sgd(optax.cosine_decay_schedule(0.05, 12), momentum=0.9)
    options = train.FitOptions(steps=12, batch_size=32, seed=3, log_every=2)
    identity = {"test": "resume"}

    reference = train.fit(small_cnn(), tx, train_set, options)

    def crash_at_step_6(step, _):
        if step == 6:
            raise Interrupt

    run_dir = tmp_path / "run"
    log = metrics.MetricsLog(run_dir / "metrics.jsonl")
    with pytest.raises(Interrupt):
        train.fit(small_cnn(), tx, train_set, options, metrics_log=log, on_log=crash_at_step_6,
                  checkpointer=checkpoint.Checkpointer(run_dir, config=identity, every=4))
    checkpointer = checkpoint.Checkpointer(run_dir, config=identity, every=4)
    assert checkpointer.latest_step() == 4

    resumed = train.fit(small_cnn(), tx, train_set, options, metrics_log=log, checkpointer=checkpointer)
    assert int(resumed.step) == 12
    assert leaves_equal(resumed.params, reference.params)
    assert leaves_equal(resumed.batch_stats, reference.batch_stats)
    assert [r["step"] for r in log.read()] == [2, 4, 6, 8, 10, 12]


def test_checkpoint_of_another_config_is_refused(tmp_path):
    checkpoint.Checkpointer(tmp_path, config={"learning_rate": 0.1}, every=1)
    with pytest.raises(ValueError, match=r"belongs to another run.*learning_rate"):
        checkpoint.Checkpointer(tmp_path, config={"learning_rate": 0.2}, every=1)


def test_checkpoint_of_another_version_is_refused(tmp_path, monkeypatch):
    checkpoint.Checkpointer(tmp_path, config={"learning_rate": 0.1}, every=1)
    monkeypatch.setattr(checkpoint, "jaxlab_version", lambda: "999.0")
    with pytest.raises(ValueError, match=r"differing config fields: none; stored version .* running '999.0'"):
        checkpoint.Checkpointer(tmp_path, config={"learning_rate": 0.1}, every=1)
    # The refused directory is left as it was, so the original run can still resume.
    assert json.loads((tmp_path / "run.json").read_text())["config"] == {"learning_rate": 0.1}


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(mnist, tmp_path):
    train_set, _ = mnist
    options = train.FitOptions(steps=20, batch_size=32, seed=0, log_every=10)
    checkpointer = checkpoint.Checkpointer(tmp_path, config={"test": "nan"}, every=1)
    with pytest.raises(FloatingPointError, match="at step"):
        train.fit(small_cnn(), optax.sgd(1e30), train_set, options, checkpointer=checkpointer)
    last = checkpointer.latest_step()
    assert last is not None and last < 20
    like = train.create_train_state(small_cnn(), optax.sgd(1e30), np.zeros((1, 28, 28, 1), np.float32),
                                    jax.random.key(0))
    restored = checkpointer.restore(like)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(restored.params))


def test_random_crop_flip_keeps_shape_and_content():
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    out = train.random_crop_flip(jax.random.key(1), images, padding=0)
    for original, augmented in zip(np.asarray(images), np.asarray(out)):
        assert np.array_equal(original, augmented) or np.array_equal(original[:, ::-1], augmented)
    padded = train.random_crop_flip(jax.random.key(2), images, padding=2)
    assert padded.shape == images.shape


def test_topk_correct():
    logits = np.array([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]], np.float32)
    labels = np.array([2, 1])
    assert train.topk_correct(logits, labels, 1).tolist() == [False, False]
    assert train.topk_correct(logits, labels, 2).tolist() == [True, False]
    assert train.topk_correct(logits, labels, 5).tolist() == [True, True]
