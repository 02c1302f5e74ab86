"""Training image classifiers on soft targets, with checkpoints and cached predictions.

Students in these experiments train on a teacher's class probabilities, not on integer
labels. The confidence loss also depends on the step. So this loop takes the targets as
float [N, C] rows and the loss as an object called with the step, and ground truth enters
as one-hot rows.

Speed on a CPU: the training pool sits on the device, and the jitted step gathers its
batch by indices computed on the host. A `lax.scan` over the steps of a chunk made a
small CNN's steps about 5 times slower on XLA's CPU backend (JAX 0.10.2), so the loop
stays in Python. The batch indices at step t depend only on (seed, t) and the step's key
is `fold_in(key, t)`. A checkpoint is written every `checkpoint_every` steps, so an
interrupted run resumes and ends with the same parameters. The jitted step is cached by
(model, loss, input preparation, optimiser settings, shapes), so students of the same
architecture and loss compile once.

Data parallelism: the pool and the training state are replicated on a `harness.mesh`
mesh and the batch indices are split over it. So each device gathers and trains on its
share of the batch, and XLA all-reduces the gradients.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from harness import checkpoint as checkpoint_lib
from harness import data as data_lib
from harness import mesh as mesh_lib
from harness import train as train_lib

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Input preparation


@dataclasses.dataclass(frozen=True)
class Standardize:
    """uint8 images -> float32 standardised by the data set's channel statistics.

    With `augment`, training batches also get random crops and horizontal flips; calls
    with key None (evaluation) never augment.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False

    def __call__(self, key, images):
        x = images.astype(jnp.float32) / 255.0
        x = (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)
        if self.augment and key is not None:
            x = train_lib.random_crop_flip(key, x)
        return x


def standardize_for(spec, *, augment=False):
    """Return the `Standardize` preparation of an `ImageDatasetSpec`."""
    return Standardize(tuple(spec.mean), tuple(spec.std), augment)


# --------------------------------------------------------------------------------------
# Options and the jitted step


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Optimisation of one training run: AdamW with a cosine-decayed learning rate."""

    steps: int
    batch_size: int
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")


def make_optimizer(options):
    """AdamW with a cosine decay from `learning_rate` to zero over the run."""
    schedule = optax.cosine_decay_schedule(options.learning_rate, options.steps)
    return optax.adamw(schedule, weight_decay=options.weight_decay)


@functools.lru_cache(maxsize=32)
def _train_step(model, loss, prepare, options_without_seed):
    """Build the jitted optimiser step; see `fit`. Returns (optimiser, step)."""
    tx = make_optimizer(options_without_seed)
    total_steps = options_without_seed.steps

    def loss_fn(params, batch_stats, x, targets, step):
        variables = {"params": params}
        if batch_stats:
            variables["batch_stats"] = batch_stats
            logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
            batch_stats = updates["batch_stats"]
        else:
            logits = model.apply(variables, x, train=True)
        return loss(logits, targets, step, total_steps), batch_stats

    def step(state, images, targets, indices, step_key):
        key = jax.random.fold_in(step_key, state.step)
        x = prepare(key, images[indices])
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (value, batch_stats), grads = grad_fn(
            state.params, state.batch_stats, x, targets[indices], state.step
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return train_lib.TrainState(state.step + 1, params, batch_stats, opt_state), value

    return tx, jax.jit(step, donate_argnums=(0,))


def batch_indices(num_examples, batch_size, *, seed, start, stop):
    """Compute the batch indices of steps start..stop-1 (epochs of shuffled full batches); int32 [steps, batch_size]."""
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_examples} training examples.")
    rows = []
    for step in range(start, stop):
        epoch, index = divmod(step, steps_per_epoch)
        order = data_lib.epoch_permutation(seed, epoch, num_examples)
        rows.append(np.sort(order[index * batch_size : (index + 1) * batch_size]))
    return np.stack(rows).astype(np.int32)


def fit(model, images, targets, options, *, loss, prepare, checkpoint_dir=None, desc="train", mesh=None):
    """Train `model` on (images, targets) and return its inference variables.

    Args:
      model: Flax module called as model(x, train=bool).
      images: uint8 [N, H, W, C].
      targets: float32 [N, C], each row a distribution over the classes.
      options: `TrainOptions`.
      loss: hashable callable (logits, targets, step, total_steps) -> scalar, such as
        `align.losses.SoftCrossEntropy()` or `align.losses.ConfidenceLoss()`.
      prepare: hashable callable (key or None, uint8 images) -> model input.
      checkpoint_dir: folder for checkpoints every `options.checkpoint_every` steps, or None.
      desc: name in logs.
      mesh: device mesh for data parallelism (default: all devices).

    Raises:
      ValueError: images and targets disagree in length, the targets are not [N, C], or
        the batch size is not a multiple of the number of devices.
      FloatingPointError: the loss became NaN or infinite. The error names the step, and
        the checkpoints saved before that step are kept.
    """
    images, targets = np.asarray(images), np.asarray(targets, np.float32)
    if targets.ndim != 2 or len(targets) != len(images):
        raise ValueError(
            f"targets of shape {targets.shape} do not match {len(images)} images; expected "
            f"[{len(images)}, classes]."
        )
    tx, train_step = _train_step(model, loss, prepare, dataclasses.replace(options, seed=0))
    init_key, step_key = jax.random.split(jax.random.key(options.seed))
    params_key, shape_key = jax.random.split(init_key)
    sample = jax.eval_shape(prepare, shape_key, jax.ShapeDtypeStruct((1,) + images.shape[1:], images.dtype))
    state = train_lib.create_train_state(model, tx, jnp.zeros(sample.shape, sample.dtype), params_key)

    checkpointer = None
    if checkpoint_dir is not None:
        identity = {"desc": desc, **dataclasses.asdict(options)}
        checkpointer = checkpoint_lib.Checkpointer(checkpoint_dir, config=identity, every=options.checkpoint_every)
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(state)
            logger.info("%s: resuming at step %d of %d", desc, int(state.step), options.steps)

    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    state = mesh_lib.replicate(mesh, state)
    device_images, device_targets = mesh_lib.replicate(mesh, (images, targets))
    start = int(state.step)
    started = time.perf_counter()
    while start < options.steps:
        stop = min(start + options.checkpoint_every, options.steps)
        indices = batch_indices(len(images), options.batch_size, seed=options.seed, start=start, stop=stop)
        values = []
        for row in indices:
            # Indices split over the mesh make the gathered batch split the same way.
            row = mesh_lib.shard_batch(mesh, row)
            state, value = train_step(state, device_images, device_targets, row, step_key)
            values.append(value)
        values = np.asarray(jax.device_get(values))
        # Checked before the save below, so a chunk with a non-finite loss is never saved.
        if not np.all(np.isfinite(values)):
            first = int(np.flatnonzero(~np.isfinite(values))[0])
            checkpoint_note = ""
            if checkpointer is not None and start > 0:
                # Every chunk ends with a save, so `start` is the newest saved step.
                checkpoint_note = f" The last good checkpoint, of step {start}, is kept."
            elif checkpointer is not None:
                checkpoint_note = " No checkpoint was saved."
            raise FloatingPointError(
                f"{desc}: the loss became {values[first]} at step {start + first + 1}.{checkpoint_note} "
                "Lower the learning rate or check the targets."
            )
        rate = stop / max(time.perf_counter() - started, 1e-9)
        logger.info("%s step %d/%d loss %.4f (%.1f steps/s)", desc, stop, options.steps, values.mean(), rate)
        if checkpointer is not None:
            checkpointer.save(stop, state, force=True)
        start = stop
    if checkpointer is not None:
        checkpointer.close()
    return jax.device_get(state.variables())


# --------------------------------------------------------------------------------------
# Prediction


@functools.lru_cache(maxsize=32)
def _predict_step(model, prepare):
    def step(variables, images):
        return jax.nn.softmax(model.apply(variables, prepare(None, images), train=False))

    return jax.jit(step)


def predict_probs(model, variables, images, *, prepare, batch_size=500):
    """Predict class probabilities float32 [N, C] of `model` on uint8 images [N, H, W, C]."""
    step = _predict_step(model, prepare)
    images = np.asarray(images)
    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        valid = len(chunk)
        if valid < batch_size and len(images) > batch_size:
            # Pad the last batch so that one compiled shape serves every batch.
            pad = np.zeros((batch_size - valid,) + chunk.shape[1:], chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        parts.append(np.asarray(step(variables, chunk))[:valid])
    return np.concatenate(parts)


def accuracy(probs, labels):
    """Compute the top-1 accuracy of probabilities [N, C] against int labels [N]."""
    return float(np.mean(np.argmax(probs, axis=1) == np.asarray(labels)))


def one_hot(labels, num_classes):
    """Encode int labels [N] as float32 one-hot rows [N, num_classes]."""
    return np.eye(num_classes, dtype=np.float32)[np.asarray(labels)]


# --------------------------------------------------------------------------------------
# Cached runs


def array_digest(array):
    """Short SHA-256 of an array's dtype, shape and bytes."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype}|{array.shape}|".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Run:
    """One training run: what trains, on what, how, and where its predictions are wanted.

    Attributes:
      model_name: name understood by the `build` function given to `train_and_predict`.
      images: uint8 [N, H, W, C] training images.
      targets: float32 [N, C] training targets.
      options: `TrainOptions`.
      loss: loss object (see `fit`).
      prepare: input preparation (see `fit`).
      predict_on: name -> uint8 images on which to return probabilities.
    """

    model_name: str
    images: Any
    targets: Any
    options: TrainOptions
    loss: Any
    prepare: Any
    predict_on: dict

    def identity(self):
        """JSON-ready description of everything that changes this run's results."""
        return {
            "model": self.model_name,
            "images": array_digest(self.images),
            "targets": array_digest(np.asarray(self.targets, np.float32)),
            "options": dataclasses.asdict(self.options),
            "loss": repr(self.loss),
            "prepare": repr(self.prepare),
            "predict_on": {name: array_digest(images) for name, images in sorted(self.predict_on.items())},
        }


def train_and_predict(run, build, *, cache_dir=None, desc=None):
    """Train `run.model_name` as `run` specifies and return {name: probabilities [N, C]}.

    With `cache_dir`, the probabilities are stored under a hash of `run.identity()` and a
    later call with an identical run reads them instead of training; checkpoints written
    during training let an interrupted run resume.

    Args:
      run: a `Run`.
      build: function model_name -> Flax module.
      cache_dir: folder for cached predictions and checkpoints, or None.
      desc: name in logs (default the model name).
    """
    desc = desc or run.model_name
    model = build(run.model_name)
    key = None
    if cache_dir is not None:
        text = json.dumps(run.identity(), sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()[:16]
        cached = Path(cache_dir) / f"{run.model_name}-{key}.npz"
        if cached.exists():
            with np.load(cached) as stored:
                return {name: stored[name] for name in run.predict_on}
    checkpoint_dir = None if key is None else Path(cache_dir) / f"{run.model_name}-{key}-train"
    variables = fit(model, run.images, run.targets, run.options, loss=run.loss, prepare=run.prepare,
                    checkpoint_dir=checkpoint_dir, desc=desc)
    probs = {
        name: predict_probs(model, variables, images, prepare=run.prepare)
        for name, images in run.predict_on.items()
    }
    if key is not None:
        temporary = cached.with_name(cached.stem + ".tmp.npz")
        np.savez(temporary, **probs)
        temporary.replace(cached)
    return probs
