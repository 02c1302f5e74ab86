"""Supervised training of Flax image classifiers: state, steps, evaluation and the loop.

The loop is deterministic for a seed and resumable: the batch at step t depends only on
(seed, t), the step's random key is `fold_in(key, t)`, and checkpoints hold everything
else. A run interrupted at any point and restarted with the same command ends with
bit-identical parameters.
"""

import dataclasses
import logging
import sys
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from harness import data as data_lib
from harness import mesh as mesh_lib

logger = logging.getLogger(__name__)


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step.

    Attributes:
      step: int32 scalar, completed optimiser steps.
      params: model parameters.
      batch_stats: BatchNorm running statistics ({} for models without them).
      opt_state: optax state.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    def variables(self):
        """Variables for `model.apply` in inference mode."""
        if self.batch_stats:
            return {"params": self.params, "batch_stats": self.batch_stats}
        return {"params": self.params}


# --------------------------------------------------------------------------------------
# Pure pieces


def normalize(images, spec):
    """uint8 [N, H, W, C] -> float32 standardised with the data set's channel statistics."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(spec.mean, jnp.float32)) / jnp.asarray(spec.std, jnp.float32)


def random_crop_flip(key, images, *, padding=4):
    """Random crop after zero padding and random horizontal flip, per image.

    Args:
      key: PRNG key.
      images: float32 [N, H, W, C].

    Returns:
      float32 [N, H, W, C].
    """
    n, height, width, _ = images.shape
    crop_key, flip_key = jax.random.split(key)
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * padding + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[2]))

    cropped = jax.vmap(crop)(padded, offsets)
    flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
    return jnp.where(flip, cropped[:, :, ::-1, :], cropped)


def cross_entropy(logits, labels):
    """Mean softmax cross-entropy; logits [N, classes], int labels [N]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def topk_correct(logits, labels, k):
    """bool [N]: whether the label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    _, top = jax.lax.top_k(logits, k)
    return jnp.any(top == labels[:, None], axis=-1)


def create_train_state(model, tx, sample_images, key):
    """Initialise parameters, BatchNorm statistics and optimiser state."""
    variables = model.init(key, sample_images, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))


def make_train_step(model, tx, spec, *, augment=False):
    """Build a jitted step: (state, images uint8 [N,H,W,C], labels [N], key) -> (state, metrics)."""

    def loss_fn(params, batch_stats, images, labels):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            logits = model.apply(variables, images, train=True)
        loss = cross_entropy(logits, labels)
        return loss, (logits, batch_stats)

    def step(state, images, labels, key):
        x = normalize(images, spec)
        if augment:
            x = random_crop_flip(key, x)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, (logits, batch_stats)), grads = grad_fn(state.params, state.batch_stats, x, labels)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "accuracy": topk_correct(logits, labels, 1).mean(),
            "grad_norm": optax.tree.norm(grads),
        }
        new_state = TrainState(state.step + 1, params, batch_stats, opt_state)
        return new_state, metrics

    return jax.jit(step, donate_argnums=(0,))


def make_eval_step(model, spec):
    """Build a jitted step: (variables, images, labels, mask) -> summed loss and top-1/top-5 counts."""

    def step(variables, images, labels, mask):
        logits = model.apply(variables, normalize(images, spec), train=False)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
        weight = mask.astype(jnp.float32)
        return {
            "loss": jnp.sum(losses * weight),
            "top1": jnp.sum(topk_correct(logits, labels, 1) * weight),
            "top5": jnp.sum(topk_correct(logits, labels, 5) * weight),
            "count": jnp.sum(weight),
        }

    return jax.jit(step)


def evaluate(model, variables, dataset, *, batch_size, desc="eval"):
    """Top-1, top-5 and mean loss of `model` over every example of `dataset`.

    Returns:
      dict with "top1", "top5", "loss" (floats) and "count" (int).
    """
    step = make_eval_step(model, dataset.spec)
    totals = {"loss": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}
    batches = data_lib.eval_batches(dataset, batch_size)
    total_batches = -(-len(dataset) // batch_size)
    for images, labels, mask in progress(batches, total=total_batches, desc=desc, unit="batch"):
        sums = jax.device_get(step(variables, images, labels, mask))
        for name in totals:
            totals[name] += float(sums[name])
    count = totals.pop("count")
    result = {name: value / count for name, value in totals.items()}
    result["count"] = int(count)
    return result


# --------------------------------------------------------------------------------------
# Progress


def progress(iterable=None, **kwargs):
    """tqdm on stderr, shown only on a terminal (logs carry progress elsewhere)."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 0.5)
    return tqdm(iterable, file=sys.stderr, **kwargs)


# --------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass(frozen=True, kw_only=True)
class FitOptions:
    """Options of `fit`: steps, batching, logging and augmentation."""

    steps: int
    batch_size: int
    seed: int
    log_every: int = 50
    augment: bool = False
    desc: str = "train"


def fit(model, tx, dataset, options, *, checkpointer=None, metrics_log=None, mesh=None,
        on_log: Callable[[int, dict], None] | None = None):
    """Train `model` on `dataset` for `options.steps` steps, resuming from a checkpoint.

    Args:
      model: Flax module called as model(x, train=bool).
      tx: optax optimiser.
      dataset: `ImageDataset` (training split).
      options: `FitOptions`.
      checkpointer: `harness.checkpoint.Checkpointer`, or None for no checkpoints.
      metrics_log: `harness.metrics.MetricsLog` for training metrics, or None.
      mesh: device mesh for data parallelism (default: all devices).
      on_log: called with (step, metrics) at every log step.

    Returns:
      the final `TrainState`.

    Raises:
      FloatingPointError: the training loss became NaN or infinite; the last good
        checkpoint is kept.
    """
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    init_key, step_key = jax.random.split(jax.random.key(options.seed))
    sample = jnp.zeros((1,) + dataset.spec.image_shape, jnp.float32)
    state = create_train_state(model, tx, sample, init_key)

    start = 0
    if checkpointer is not None and checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        start = int(state.step)
        logger.info("%s: resuming at step %d of %d", options.desc, start, options.steps)
    if metrics_log is not None:
        metrics_log.truncate_after(start)

    state = mesh_lib.replicate(mesh, state)
    train_step = make_train_step(model, tx, dataset.spec, augment=options.augment)
    window_start, window_steps = time.perf_counter(), 0

    bar = progress(total=options.steps, initial=start, desc=options.desc, unit="step")
    for step in range(start, options.steps):
        images, labels = data_lib.train_batch(
            dataset, options.batch_size, seed=options.seed, step=step
        )
        images, labels = mesh_lib.shard_batch(mesh, images, labels)
        state, metrics = train_step(state, images, labels, jax.random.fold_in(step_key, step))
        window_steps += 1
        bar.update(1)

        done = step + 1
        should_log = done % options.log_every == 0 or done == options.steps
        should_save = checkpointer is not None and (
            done % checkpointer.every == 0 or done == options.steps
        )
        if not (should_log or should_save):
            continue

        # Checked before every save, so that no checkpoint contains a diverged state.
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not (np.isfinite(values["loss"]) and np.isfinite(values["grad_norm"])):
            raise FloatingPointError(
                f"{options.desc}: loss {values['loss']} and gradient norm "
                f"{values['grad_norm']} at step {done}; the last good checkpoint is kept. "
                "Lower the learning rate or check the data."
            )
        if should_log:
            rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
            window_start, window_steps = time.perf_counter(), 0
            bar.set_postfix(loss=f"{values['loss']:.4f}", acc=f"{values['accuracy']:.3f}")
            logger.info(
                "%s step %d/%d loss %.4f accuracy %.3f (%.1f steps/s)",
                options.desc, done, options.steps, values["loss"], values["accuracy"], rate,
            )
            if metrics_log is not None:
                metrics_log.write(done, **values)
            if on_log is not None:
                on_log(done, values)
        if should_save:
            checkpointer.save(done, state, force=True)
    bar.close()
    return state
