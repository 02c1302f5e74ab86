"""The soft-label trainer: it learns, resumes exactly, compiles once and caches runs."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from align import ladder, losses, training
from harness import data as data_lib


@pytest.fixture(scope="module")
def mnist(data_dir):
    train = data_lib.load_image_dataset("mnist", "train", data_dir=data_dir).take(1024)
    test = data_lib.load_image_dataset("mnist", "test", data_dir=data_dir).take(500)
    return train, test


def fit_linear(train, options, loss=losses.SoftCrossEntropy(), **kwargs):
    model = ladder.build("linear")
    variables = training.fit(model, train.images, training.one_hot(train.labels, 10), options,
                             loss=loss, prepare=training.standardize_for(train.spec), **kwargs)
    return model, variables


def test_fit_learns_mnist(mnist):
    train, test = mnist
    options = training.TrainOptions(steps=150, batch_size=64, checkpoint_every=50)
    model, variables = fit_linear(train, options)
    probs = training.predict_probs(model, variables, test.images, prepare=training.standardize_for(test.spec))
    assert probs.shape == (500, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert training.accuracy(probs, test.labels) > 0.8


def test_fit_resumes_to_identical_parameters(mnist, tmp_path, monkeypatch):
    train, _ = mnist
    options = training.TrainOptions(steps=40, batch_size=32, checkpoint_every=20, seed=3)
    _, uninterrupted = fit_linear(train, options)

    calls = []
    original = training.batch_indices

    def interrupt_second_chunk(*args, **kwargs):
        calls.append(kwargs["start"])
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "batch_indices", interrupt_second_chunk)
    with pytest.raises(KeyboardInterrupt):
        fit_linear(train, options, checkpoint_dir=tmp_path / "run")
    monkeypatch.setattr(training, "batch_indices", original)

    _, resumed = fit_linear(train, options, checkpoint_dir=tmp_path / "run")
    assert calls == [0, 20]
    for left, right in zip(jax.tree_util.tree_leaves(uninterrupted), jax.tree_util.tree_leaves(resumed)):
        np.testing.assert_array_equal(left, right)


def test_step_compiles_once_for_new_seeds_and_targets(mnist):
    train, _ = mnist
    options = training.TrainOptions(steps=10, batch_size=32, checkpoint_every=10)
    model = ladder.build("mlp")
    prepare = training.standardize_for(train.spec)
    loss = losses.ConfidenceLoss()
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        targets = rng.dirichlet(np.ones(10), size=len(train)).astype(np.float32)
        training.fit(model, train.images, targets, training.TrainOptions(**{**options.__dict__, "seed": seed}),
                     loss=loss, prepare=prepare)
    _, step = training._train_step(model, loss, prepare, options)
    assert step._cache_size() == 1


def test_fit_rejects_mismatched_targets(mnist):
    train, _ = mnist
    options = training.TrainOptions(steps=1, batch_size=32)
    with pytest.raises(ValueError, match=r"targets of shape \(3, 10\) do not match 1024 images"):
        training.fit(ladder.build("linear"), train.images, np.zeros((3, 10)), options,
                     loss=losses.SoftCrossEntropy(), prepare=training.standardize_for(train.spec))


def test_options_reject_zero_steps():
    with pytest.raises(ValueError, match="steps=0 must be a positive integer"):
        training.TrainOptions(steps=0, batch_size=32)


def test_train_and_predict_reads_cache(mnist, tmp_path, monkeypatch):
    train, test = mnist
    run = training.Run(
        model_name="linear", images=train.images, targets=training.one_hot(train.labels, 10),
        options=training.TrainOptions(steps=20, batch_size=32, checkpoint_every=20),
        loss=losses.SoftCrossEntropy(), prepare=training.standardize_for(train.spec),
        predict_on={"test": test.images},
    )
    first = training.train_and_predict(run, ladder.build, cache_dir=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(training, "fit", fail)
    second = training.train_and_predict(run, ladder.build, cache_dir=tmp_path)
    np.testing.assert_array_equal(first["test"], second["test"])


@dataclasses.dataclass(frozen=True)
class DivergesAtStep:
    """Cross-entropy that becomes NaN, with NaN gradients, from step index `step` on."""

    step: int

    def __call__(self, logits, targets, step, total_steps):
        value = losses.SoftCrossEntropy()(logits, targets, step, total_steps)
        return value * jnp.where(step >= self.step, jnp.nan, 1.0)


def test_non_finite_loss_names_step_and_keeps_checkpoint(mnist, tmp_path, caplog):
    train, _ = mnist
    options = training.TrainOptions(steps=20, batch_size=32, checkpoint_every=5)
    message = r"linear: the loss became nan at step 13\. The last good checkpoint, of step 10, is kept\."
    with pytest.raises(FloatingPointError, match=message):
        fit_linear(train, options, loss=DivergesAtStep(12), checkpoint_dir=tmp_path / "run", desc="linear")
    saved = sorted(int(path.name) for path in (tmp_path / "run" / "checkpoints").iterdir() if path.name.isdigit())
    assert saved == [5, 10]

    # Rerun with a finite loss: it resumes from step 10 and ends with finite parameters.
    with caplog.at_level(logging.INFO, logger=training.__name__):
        _, variables = fit_linear(train, options, loss=losses.SoftCrossEntropy(), checkpoint_dir=tmp_path / "run",
                                  desc="linear")
    assert "linear: resuming at step 10 of 20" in caplog.text
    assert all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(variables))
