"""PEMA: plug-in external memory adaptation of a frozen language model.

The model owner shares only the final-layer context representations of the data
owner's training text and the LM head (final norm and output embedding). The data owner
stores them with the gold next tokens as an external memory and trains a small low-rank
module on it in two stages. At inference the module's next-token distribution is mixed
with the model's (Kim et al., "PEMA: An Offsite-Tunable Plug-in External Memory
Adaptation for Language Models", NAACL 2024).

Glossary:
  h          context representation: the last block's output before the final norm,
             [n, d] in the memory, [batch, d] while decoding.
  gold       the token that followed each h in the training text, [n] int32.
  r          rank of the module.
  A          [r, d] down-projection, shared by both heads.
  B_rct      [d, r] reconstruction decoder: B_rct A h ~ h.
  B_pd       [d, r] prediction decoder: LMhead(norm(B_pd A h)) predicts gold.
  scaling    alpha / r, applied to every B A h.
  kappa      weight of the reconstruction term in stage 2 (0.2).
  lambda_t   weight of PEMA's distribution at decoding step t:
             log P = log(lambda_t P_PEMA + (1 - lambda_t) P_LM).
  L          expected output length in tokens, for Gradual Unrolling.

Stage 1 trains A and B_rct on the reconstruction loss. Stage 2 starts from a fresh A
and a zero B_pd, keeps B_rct frozen, and trains on
kappa * reconstruction + (1 - kappa) * cross-entropy. Both use Adam, input dropout on h
and early stopping on the validation loss. The reconstruction loss is the mean over
examples and features of (B_rct A h - h)^2, that is ||B_rct A h - h||^2 / d.
"""

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from harness import mesh as mesh_lib

logger = logging.getLogger(__name__)

KAPPA = 0.2
MEMORY_INDEX = "memory.json"


# --------------------------------------------------------------------------------------
# The frozen LM head


class FrozenHead(NamedTuple):
    """The frozen final RMSNorm and tied output embedding that turn h into logits."""

    norm_scale: jax.Array  # [d]
    embedding: jax.Array  # [vocab, d]
    eps: float


def head_logits(head, z):
    """Logits [..., vocab] = RMSNorm(z) * scale @ embedding^T for z [..., d], in float32."""
    z = z.astype(jnp.float32)
    normed = z * jax.lax.rsqrt(jnp.mean(z * z, axis=-1, keepdims=True) + head.eps) * head.norm_scale
    return jnp.matmul(normed, head.embedding.T, precision=jax.lax.Precision.HIGHEST)


# --------------------------------------------------------------------------------------
# The module


def init_params(key, dim, rank):
    """Fresh PEMA params: A [r, d] ~ N(0, 1/d), B_rct and B_pd zeros [d, r].

    Raises:
      ValueError: rank < 1 or dim < 1.
    """
    if not isinstance(rank, int) or rank <= 0:
        raise ValueError(f"rank={rank!r} is not valid; PEMA needs an integer rank >= 1.")
    if dim <= 0:
        raise ValueError(f"dim={dim} is not valid; the representations need at least one feature.")
    a = jax.random.normal(key, (rank, dim), jnp.float32) / jnp.sqrt(jnp.float32(dim))
    zeros = jnp.zeros((dim, rank), jnp.float32)
    return {"A": a, "B_rct": zeros, "B_pd": zeros}


def low_rank(a, b, h, scaling):
    """scaling * B A h for h [..., d], A [r, d], B [d, r]; returns [..., d]."""
    return scaling * ((h @ a.T) @ b.T)


def _dropout(key, h, rate):
    if key is None or rate == 0.0:
        return h
    keep = jax.random.bernoulli(key, 1.0 - rate, h.shape)
    return jnp.where(keep, h / (1.0 - rate), 0.0)


def reconstruction_loss(params, h, *, scaling, dropout_key=None, dropout_rate=0.0):
    """Mean over examples and features of (scaling * B_rct A dropout(h) - h)^2."""
    rebuilt = low_rank(params["A"], params["B_rct"], _dropout(dropout_key, h, dropout_rate), scaling)
    return jnp.mean((rebuilt - h) ** 2)


def prediction_log_probs(params, head, h, *, scaling):
    """log P_PEMA [..., vocab] = log_softmax(LMhead(norm(scaling * B_pd A h)))."""
    return jax.nn.log_softmax(head_logits(head, low_rank(params["A"], params["B_pd"], h, scaling)), axis=-1)


def prediction_loss(params, head, h, gold, *, scaling, dropout_key=None, dropout_rate=0.0):
    """Mean cross-entropy of PEMA's prediction of `gold` [n] from h [n, d]."""
    log_probs = prediction_log_probs(params, head, _dropout(dropout_key, h, dropout_rate), scaling=scaling)
    return -jnp.mean(jnp.take_along_axis(log_probs, gold[:, None].astype(jnp.int32), axis=-1))


def stage2_loss(params, head, h, gold, *, scaling, kappa=KAPPA, dropout_key=None, dropout_rate=0.0):
    """kappa * reconstruction + (1 - kappa) * cross-entropy, on one shared dropout mask."""
    dropped = _dropout(dropout_key, h, dropout_rate)
    rebuilt = low_rank(params["A"], params["B_rct"], dropped, scaling)
    reconstruction = jnp.mean((rebuilt - h) ** 2)
    log_probs = prediction_log_probs(params, head, dropped, scaling=scaling)
    cross_entropy = -jnp.mean(jnp.take_along_axis(log_probs, gold[:, None].astype(jnp.int32), axis=-1))
    return kappa * reconstruction + (1.0 - kappa) * cross_entropy


# --------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Settings of one training stage."""

    rank: int = 512
    """Rank r of A and the B matrices."""
    alpha: float = 512.0
    """Scale numerator: every B A h is multiplied by alpha / rank."""
    learning_rate: float = 1e-4
    """Adam learning rate."""
    batch_size: int = 64
    """Memory entries per step."""
    max_epochs: int = 20
    """Upper bound on passes over the training memory."""
    patience: int = 2
    """Stop after this many epochs without a lower validation loss."""
    dropout: float = 0.1
    """Dropout rate on the input representation h."""
    kappa: float = KAPPA
    """Weight of reconstruction in stage 2."""

    @property
    def scaling(self):
        return self.alpha / self.rank


class StageResult(NamedTuple):
    params: dict
    history: list  # per epoch: {"epoch", "train_loss", "validation_loss", "seconds"}
    best_epoch: int
    seconds_per_step: float


def _epoch_batches(count, batch_size, seed, epoch):
    order = np.random.default_rng([seed, epoch]).permutation(count)
    usable = max(count // batch_size, 1) * batch_size
    order = order[:usable] if count >= batch_size else order
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _mean_over_batches(loss, params, arrays, batch_size):
    total, count = 0.0, 0
    n = arrays[0].shape[0]
    for start in range(0, n, batch_size):
        part = [a[start : start + batch_size] for a in arrays]
        size = part[0].shape[0]
        total += float(loss(params, *part)) * size
        count += size
    return total / count


def train_stage(loss_fn, trainable, frozen, train_arrays, validation_arrays, config, *, seed, name, mesh=None):
    """Train `trainable` with Adam on minibatches, stopping early on the validation loss.

    Training is data-parallel: the parameters are replicated on `mesh` (default: all
    devices) and each minibatch is split over it.

    Args:
      loss_fn: (params, *arrays, dropout_key) -> scalar, params = trainable | frozen;
        dropout_key None means evaluation.
      trainable: dict of arrays that receive gradients.
      frozen: dict of arrays that do not.
      train_arrays, validation_arrays: tuples of numpy arrays with a leading entry axis.
      config: TrainConfig.
      seed: seeds batch order and dropout.
      name: stage name for logs.
      mesh: device mesh for data parallelism, or None for all devices.

    Returns:
      StageResult with the trainable params of the epoch of lowest validation loss.

    Raises:
      ValueError: a minibatch is not a multiple of the number of devices. Minibatches
        hold `config.batch_size` entries, or every entry when the memory is smaller.
      FloatingPointError: a training loss was NaN or infinite. The error names the first
        such step, counted from 1 over the whole stage.
    """
    optimizer = optax.adam(config.learning_rate)

    def merged_loss(train_params, arrays, key):
        return loss_fn({**frozen, **train_params}, *arrays, key)

    @jax.jit
    def step(train_params, opt_state, arrays, key):
        loss, grads = jax.value_and_grad(merged_loss)(train_params, arrays, key)
        updates, opt_state = optimizer.update(grads, opt_state, train_params)
        return optax.apply_updates(train_params, updates), opt_state, loss

    evaluate = jax.jit(lambda train_params, *arrays: merged_loss(train_params, arrays, None))
    dropout_key = jax.random.key(seed)
    mesh = mesh_lib.data_mesh() if mesh is None else mesh
    params = mesh_lib.replicate(mesh, trainable)
    opt_state = mesh_lib.replicate(mesh, optimizer.init(trainable))
    best = (_mean_over_batches(evaluate, params, validation_arrays, 1024), params, 0)
    history = [{"epoch": 0, "train_loss": None, "validation_loss": best[0], "seconds": 0.0}]
    logger.info("%s: validation loss %.4f before training", name, best[0])
    steps, step_seconds = 0, 0.0
    for epoch in range(1, config.max_epochs + 1):
        started = time.perf_counter()
        losses = []
        for batch_index in _epoch_batches(train_arrays[0].shape[0], config.batch_size, seed, epoch):
            batch = tuple(mesh_lib.shard_batch(mesh, a[batch_index]) for a in train_arrays)
            key = jax.random.fold_in(dropout_key, steps)
            params, opt_state, loss = step(params, opt_state, batch, key)
            losses.append(loss)
            steps += 1
        losses = np.asarray(jax.device_get(losses))
        train_loss = float(np.mean(losses))
        seconds = time.perf_counter() - started
        if epoch > 1:  # the first epoch includes compilation
            step_seconds += seconds
        validation = _mean_over_batches(evaluate, params, validation_arrays, 1024)
        history.append({"epoch": epoch, "train_loss": train_loss, "validation_loss": validation,
                        "seconds": seconds})
        logger.info("%s epoch %d: train loss %.4f, validation loss %.4f (%.1f s)", name, epoch, train_loss,
                    validation, seconds)
        if not np.all(np.isfinite(losses)):
            first = int(np.flatnonzero(~np.isfinite(losses))[0])
            raise FloatingPointError(
                f"{name}: the training loss became {losses[first]} at step {steps - len(losses) + first + 1} "
                f"(epoch {epoch}). Lower the learning rate."
            )
        if validation < best[0]:
            best = (validation, params, epoch)
        elif epoch - best[2] >= config.patience:
            break
    per_epoch = len(_epoch_batches(train_arrays[0].shape[0], config.batch_size, seed, 1))
    timed_steps = per_epoch * (len(history) - 2)
    seconds_per_step = step_seconds / timed_steps if timed_steps else history[1]["seconds"] / per_epoch
    return StageResult(jax.device_get(best[1]), history, best[2], seconds_per_step)


def train(memory, validation_memory, head, config, *, seed=0, mesh=None):
    """Run both stages; return (params, {"stage1": StageResult, "stage2": StageResult}).

    Args:
      memory, validation_memory: `Memory` tuples of (hidden [n, d], tokens [n]).
      head: FrozenHead of the language model.
      config: TrainConfig.
      mesh: device mesh for data parallelism, or None for all devices (see `train_stage`).
    """
    dim = memory.hidden.shape[1]
    stage1_key, stage2_key = jax.random.split(jax.random.key(seed))
    fresh = init_params(stage1_key, dim, config.rank)

    def stage1_loss(params, h, key):
        return reconstruction_loss(params, h, scaling=config.scaling, dropout_key=key, dropout_rate=config.dropout)

    first = train_stage(stage1_loss, {"A": fresh["A"], "B_rct": fresh["B_rct"]}, {},
                        (memory.hidden,), (validation_memory.hidden,), config, seed=seed, name="PEMA stage 1",
                        mesh=mesh)

    second_start = init_params(stage2_key, dim, config.rank)

    def loss2(params, h, gold, key):
        return stage2_loss(params, head, h, gold, scaling=config.scaling, kappa=config.kappa,
                           dropout_key=key, dropout_rate=config.dropout)

    second = train_stage(loss2, {"A": second_start["A"], "B_pd": second_start["B_pd"]},
                         {"B_rct": first.params["B_rct"]}, (memory.hidden, memory.tokens),
                         (validation_memory.hidden, validation_memory.tokens), config, seed=seed + 1,
                         name="PEMA stage 2", mesh=mesh)
    params = {"A": second.params["A"], "B_rct": first.params["B_rct"], "B_pd": second.params["B_pd"]}
    return params, {"stage1": first, "stage2": second}


@jax.jit
def _evaluation_sums(params, head, h, gold, scaling):
    gold = gold[:, None].astype(jnp.int32)
    module = prediction_log_probs(params, head, h, scaling=scaling)
    frozen = jax.nn.log_softmax(head_logits(head, h), axis=-1)
    rebuilt = low_rank(params["A"], params["B_rct"], h, scaling)
    return {
        "pema_cross_entropy": -jnp.sum(jnp.take_along_axis(module, gold, axis=-1)),
        "lm_cross_entropy": -jnp.sum(jnp.take_along_axis(frozen, gold, axis=-1)),
        "pema_accuracy": jnp.sum(jnp.argmax(module, axis=-1) == gold[:, 0]),
        "lm_accuracy": jnp.sum(jnp.argmax(frozen, axis=-1) == gold[:, 0]),
        "reconstruction": jnp.sum(jnp.mean((rebuilt - h) ** 2, axis=-1)),
    }


def evaluate(params, head, memory, *, scaling, batch_size=256):
    """Compare PEMA's next-token prediction with the frozen head's on a memory.

    Returns:
      dict of means over the entries: pema_cross_entropy and lm_cross_entropy (nats),
      pema_accuracy and lm_accuracy (top-1), and reconstruction (the stage-1 loss).
    """
    totals = {}
    for start in range(0, memory.tokens.shape[0], batch_size):
        sums = _evaluation_sums(params, head, jnp.asarray(memory.hidden[start : start + batch_size]),
                                jnp.asarray(memory.tokens[start : start + batch_size]), jnp.float32(scaling))
        for name, value in jax.device_get(sums).items():
            totals[name] = totals.get(name, 0.0) + float(value)
    return {name: value / memory.tokens.shape[0] for name, value in totals.items()}


# --------------------------------------------------------------------------------------
# Inference


def gradual_unrolling(step, length, *, lambda_max):
    """lambda_t = (lambda_max - t * lambda_max / L)^2 for t < L, and 0 from t = L on.

    Args:
      step: decoding step t (0 for the first generated token); int, scalar or array.
      length: expected output length L in tokens; broadcasts against `step`.
      lambda_max: weight scale in [0, 1]; lambda_0 = lambda_max^2.

    Returns:
      float32 array of the broadcast shape.
    """
    if isinstance(lambda_max, (int, float)) and not 0.0 <= lambda_max <= 1.0:
        raise ValueError(f"lambda_max={lambda_max} is not valid; use a value in [0, 1].")
    step = jnp.asarray(step, jnp.float32)
    length = jnp.asarray(length, jnp.float32)
    # max(length, 1) keeps the unused branch finite when L = 0.
    value = (lambda_max - step * lambda_max / jnp.maximum(length, 1.0)) ** 2
    return jnp.where(step < length, value, 0.0).astype(jnp.float32)


def mixture(lm_log_probs, pema_log_probs, lam):
    """log(lam * P_PEMA + (1 - lam) * P_LM) by logaddexp; lam broadcasts as [batch, 1]."""
    lam = jnp.asarray(lam, jnp.float32)
    if lam.ndim == 1:
        lam = lam[:, None]
    return jnp.logaddexp(jnp.log(lam) + pema_log_probs, jnp.log1p(-lam) + lm_log_probs)


@jax.jit
def _mixed_log_probs(params, head, hidden, lm_log_probs, lam, scaling):
    pema_log_probs = prediction_log_probs(params, head, hidden, scaling=scaling)
    return mixture(lm_log_probs, pema_log_probs, lam)


def make_mix(params, head, *, scaling, lambda_max, lengths=None):
    """Build the `mix` hook of `models.generate.greedy_generate` for PEMA.

    Args:
      params: trained PEMA params (A and B_pd are used).
      head: FrozenHead.
      scaling: alpha / rank used in training.
      lambda_max: the weight scale.
      lengths: None for a constant lambda = lambda_max (PEMA without Gradual Unrolling),
        or expected output lengths [batch] for Gradual Unrolling.

    Returns:
      mix(step, hidden [batch, d], lm_log_probs [batch, vocab], state) -> (log_probs, state).
      The arrays go into one jitted function as arguments, so the hook compiles once
      per batch shape and not once per step.
    """
    module = {"A": jnp.asarray(params["A"]), "B_pd": jnp.asarray(params["B_pd"])}
    lengths = None if lengths is None else jnp.asarray(lengths, jnp.float32)

    def mix(step, hidden, lm_log_probs, state):
        if lengths is None:
            lam = jnp.full((hidden.shape[0],), lambda_max, jnp.float32)
        else:
            lam = gradual_unrolling(step, lengths, lambda_max=lambda_max)
        return _mixed_log_probs(module, head, hidden, lm_log_probs, lam, jnp.float32(scaling)), state

    return mix


def fit_length_ratio(source_lengths, target_lengths):
    """Least-squares ratio c of target ≈ c * source lengths, fitted on training pairs."""
    source = np.asarray(source_lengths, np.float64)
    target = np.asarray(target_lengths, np.float64)
    if source.size == 0 or not np.any(source):
        raise ValueError("fitting the length ratio needs at least one non-empty source.")
    return float(np.dot(source, target) / np.dot(source, source))


# --------------------------------------------------------------------------------------
# The external memory


class Memory(NamedTuple):
    """External memory: context representations [n, d] and gold next tokens [n]."""

    hidden: np.ndarray
    tokens: np.ndarray


def memory_entries(context, target):
    """Positions and gold tokens to keep for one sequence context + target.

    The representation at position p predicts token p + 1, so the target tokens
    target[j] are predicted from positions len(context) - 1 + j.

    Returns:
      (tokens int32 [len(context) + len(target) - 1] fed to the model,
       positions int32 [len(target)], gold int32 [len(target)]).
    """
    if not context:
        raise ValueError("a memory sequence needs a non-empty context (prompt and source).")
    sequence = np.asarray(list(context) + list(target), np.int32)
    positions = np.arange(len(context) - 1, len(context) - 1 + len(target), dtype=np.int32)
    return sequence[:-1], positions, np.asarray(target, np.int32)


def _fingerprint(examples):
    digest = hashlib.sha256()
    for context, target in examples:
        digest.update(np.asarray(context, np.int64).tobytes() + b"|" + np.asarray(target, np.int64).tobytes() + b";")
    return digest.hexdigest()[:16]


def _write_npz_atomic(path, **arrays):
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def _write_json_atomic(path, value):
    # A process killed mid-write leaves the old file or none, never a truncated one.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


def _hidden_of_batch(hidden_fn, batch, pad_multiple):
    """Right-pad a batch of token lists to a multiple of `pad_multiple`; return hidden [b, L, d]."""
    longest = max(len(tokens) for tokens, _, _ in batch)
    padded_length = -(-longest // pad_multiple) * pad_multiple
    tokens = np.zeros((len(batch), padded_length), np.int32)
    for row, (sequence, _, _) in enumerate(batch):
        tokens[row, : len(sequence)] = sequence
    # Right padding cannot change earlier positions of a causal model.
    return np.asarray(hidden_fn(tokens), np.float32)


def build_memory(hidden_fn, examples, directory, *, chunk_examples=256, batch_size=8, pad_multiple=16):
    """Run the frozen model over every context + target and store the memory in chunks.

    Each chunk of `chunk_examples` examples goes to `chunk_<i>.npz` (hidden [m, d]
    float32, tokens [m] int32) by an atomic rename, so an interrupted build resumes at
    the first missing chunk. `memory.json` records the examples' fingerprint and, at
    the end, the entry count.

    Args:
      hidden_fn: tokens int32 [batch, length] -> hidden [batch, length, d], the last
        block's output before the final norm.
      examples: list of (context token ids, target token ids); context = prompt + source.
      directory: output folder.

    Returns:
      The loaded Memory.

    Raises:
      ValueError: no examples or no target token, or the folder contains a memory of
        other examples.
    """
    examples = [(list(c), list(t)) for c, t in examples]
    if not examples or not any(target for _, target in examples):
        raise ValueError("the memory would be empty: pass at least one example with a non-empty target.")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / MEMORY_INDEX
    fingerprint = _fingerprint(examples)
    index = json.loads(index_path.read_text()) if index_path.exists() else {"fingerprint": fingerprint}
    if index["fingerprint"] != fingerprint:
        raise ValueError(f"{directory} contains a memory of other examples (fingerprint {index['fingerprint']}, "
                         f"expected {fingerprint}); use an empty folder.")
    _write_json_atomic(index_path, index)
    chunks = [examples[i : i + chunk_examples] for i in range(0, len(examples), chunk_examples)]
    started = time.perf_counter()
    for number, chunk in enumerate(chunks):
        path = directory / f"chunk_{number:05d}.npz"
        if path.exists():
            continue
        prepared = [memory_entries(context, target) for context, target in chunk]
        hidden_parts, gold_parts = [], []
        for start in range(0, len(prepared), batch_size):
            batch = prepared[start : start + batch_size]
            hidden = _hidden_of_batch(hidden_fn, batch, pad_multiple)
            for row, (_, positions, gold) in enumerate(batch):
                hidden_parts.append(hidden[row, positions])
                gold_parts.append(gold)
        _write_npz_atomic(path, hidden=np.concatenate(hidden_parts), tokens=np.concatenate(gold_parts))
        logger.info("memory %s: chunk %d/%d written (%.0f s)", directory.name, number + 1, len(chunks),
                    time.perf_counter() - started)
    memory = load_memory(directory, require_complete=False)
    index["entries"] = int(memory.tokens.shape[0])
    index["chunks"] = len(chunks)
    _write_json_atomic(index_path, index)
    return memory


def load_memory(directory, *, require_complete=True):
    """Read every chunk of a memory folder into one Memory.

    Raises:
      ValueError: the folder has no memory, an unfinished one, or zero entries.
    """
    directory = Path(directory)
    index_path = directory / MEMORY_INDEX
    if not index_path.exists():
        raise ValueError(f"no memory found in {directory} ({MEMORY_INDEX} is missing); build it with build_memory.")
    index = json.loads(index_path.read_text())
    paths = sorted(directory.glob("chunk_*.npz"))
    if require_complete and ("chunks" not in index or len(paths) != index["chunks"]):
        raise ValueError(f"the memory in {directory} is unfinished; rerun build_memory with the same examples "
                         "to resume it.")
    hidden, tokens = [], []
    for path in paths:
        with np.load(path) as chunk:
            hidden.append(chunk["hidden"])
            tokens.append(chunk["tokens"])
    count = sum(t.shape[0] for t in tokens)
    if count == 0:
        raise ValueError(f"the memory in {directory} is empty; it needs at least one target token.")
    return Memory(np.concatenate(hidden), np.concatenate(tokens))
