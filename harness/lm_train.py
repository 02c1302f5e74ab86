"""Next-token training and evaluation of language models on a stream of token ids.

Models enter as `apply_fn(params, tokens) -> logits`, with tokens int32 [batch, length]
and logits [batch, length, vocab], so any decoder fits without this module importing it.
Batches come from `harness.text.train_windows`, a function of (seed, step) alone, so a
run is deterministic for a seed. Training is data-parallel over a `harness.mesh` mesh:
parameters are replicated and each batch of windows is split over the devices.
"""

import logging

import jax
import numpy as np
import optax

from harness import mesh as mesh_lib
from harness import text as text_lib
from harness.train import progress

logger = logging.getLogger(__name__)


def next_token_loss(logits, targets):
    """Mean cross-entropy of logits [batch, length, vocab] against int targets [batch, length]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def make_train_step(apply_fn, tx):
    """Build a jitted step: (params, opt_state, windows [batch, length + 1]) -> (params, opt_state, loss)."""

    def loss_fn(params, windows):
        return next_token_loss(apply_fn(params, windows[:, :-1]), windows[:, 1:])

    @jax.jit
    def step(params, opt_state, windows):
        loss, grads = jax.value_and_grad(loss_fn)(params, windows)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def mean_loss(apply_fn, params, windows, *, batch_size=16):
    """Mean next-token cross-entropy (nats) over windows int32 [count, length + 1]."""

    @jax.jit
    def window_sums(batch):
        logits = apply_fn(params, batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).sum(axis=-1)

    windows = np.asarray(windows)
    if len(windows) == 0:
        raise ValueError("windows is empty; the evaluation stream is shorter than one window.")
    total = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        count = len(batch)
        # Pad the last batch with copies to keep one compiled shape; only `count` rows count.
        padded = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
        total += float(np.asarray(window_sums(padded))[:count].sum())
    return total / windows[:, 1:].size


def train(apply_fn, params, tx, ids, *, steps, batch_size, length, seed, log_every=50, mesh=None):
    """Train on random windows of the int32 id stream `ids` with Adam-style optimizer `tx`.

    `mesh` is the device mesh for data parallelism (default: all devices); `batch_size`
    must be a multiple of its size.

    Returns:
      (params, losses): the trained parameters and the training loss at every step.
    """
    if steps <= 0:
        raise ValueError(f"steps={steps} is invalid; it must be positive.")
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    step = make_train_step(apply_fn, tx)
    params = mesh_lib.replicate(mesh, params)
    opt_state = mesh_lib.replicate(mesh, tx.init(params))
    losses = []
    for index in progress(range(steps), desc="language model"):
        windows = text_lib.train_windows(ids, batch_size, length, seed=seed, step=index)
        windows = mesh_lib.shard_batch(mesh, windows)
        params, opt_state, loss = step(params, opt_state, windows)
        losses.append(loss)
        if (index + 1) % log_every == 0 or index + 1 == steps:
            value = float(loss)
            if not np.isfinite(value):
                raise FloatingPointError(f"language model loss is {value} at step {index + 1}.")
            logger.info("language model step %d/%d loss %.4f", index + 1, steps, value)
    return params, [float(loss) for loss in losses]
