"""Train a few steps of every training script on all visible devices and save the results.

Run by test_multidevice.py in a subprocess, once with 8 simulated CPU devices and once
with 1, so that each run takes the scripts' default mesh of all devices:

    python -m tests.scripts.multidevice_check DATA_DIR OUT_DIR

Writes OUT_DIR/<script>.npz with the trained parameters or metrics of each script, and
prints a JSON line with the device count and, per script, the device counts of every
batch placed by `harness.mesh.shard_batch`.
"""

import dataclasses
import json
import sys
import tempfile
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from harness import data as data_lib
from harness import mesh as mesh_lib

# Every batch below is a multiple of 8, so that 8 devices split it evenly.
BATCH = 16
STEPS = 3


def flatten(tree):
    """Return {path: numpy array} of every leaf of a pytree."""
    leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def approx_cnn_piece(train_set, work):
    from scripts import approx_cnn

    config = approx_cnn.PRESETS["smoke"]
    task_config = dataclasses.replace(config.mnist, steps=STEPS, batch_size=BATCH)
    return approx_cnn.train_task(config, "mnist", task_config, train_set, work)


def posit_cnn_piece(train_set, work):
    from scripts import posit_cnn

    config = posit_cnn.PRESETS["smoke"]
    task_config = dataclasses.replace(config.mnist, steps=STEPS, batch_size=BATCH)
    return posit_cnn.train_task(config, "mnist", task_config, train_set, work)


def cyclic_quant_piece(train_set, work):
    """Fine-tune for one 1-bit schedule step, batch-norm re-estimation included."""
    from quant import cyclic
    from scripts import cyclic_quant

    config = dataclasses.replace(cyclic_quant.PRESETS["smoke"], batch_size=BATCH, epoch_steps=STEPS, bn_batches=1)
    model = cyclic_quant.build_model(config, None)
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + train_set.spec.image_shape), train=False)
    compiled = cyclic_quant.CompiledSteps(config, train_set.spec)
    train = cyclic_quant.make_train_function(config, 0, train_set, compiled, offset=0)
    step = cyclic.Step(index=0, bits=1, epochs=1.0, first_epoch=0.0, cycle=0)
    quantizer = cyclic.StepQuantizer(step, cyclic_quant.make_quantizer(config)(1))
    return train(jax.device_get(variables), quantizer, 1)


def approx_analysis_piece(train_set, work):
    """Train the character-level transformer of the language-model analysis."""
    from models import DecoderLM
    from scripts import approx_analysis

    config = approx_analysis.PRESETS["smoke"]
    lm = dataclasses.replace(config.language_model, steps=STEPS, batch_size=BATCH)
    model = DecoderLM(vocab_size=32, max_length=lm.length, features=lm.features, num_layers=lm.num_layers,
                      num_heads=lm.num_heads)
    ids = np.random.default_rng(0).integers(0, 32, 4096).astype(np.int32)
    params = approx_analysis.train_language_model(model, lm, ids, config, {"check": "multidevice"}, work)
    logits = model.apply({"params": params}, ids[: BATCH * lm.length].reshape(BATCH, lm.length))
    # A key bias adds the same amount to every attention score of a query, so the
    # softmax cancels it and its exact gradient is zero. Adam scales the round-off left
    # in that gradient up to full steps of the learning rate. So the key biases differ
    # between device counts without changing the model, and the check leaves them out.
    for name, block in params.items():
        if name.startswith("block"):
            del block["attention"]["key"]["bias"]
    return {"params": params, "logits": logits}


def align_piece(train_set, work):
    """Train an MLP student on soft targets with the confidence loss.

    Not the CNN: biases ahead of its batch norms (and kernel rows of inputs that are
    constant over the batch, such as the blank borders of MNIST) have a zero exact
    gradient. AdamW scales their round-off up to full steps, so the CNN's parameters
    differ between device counts without the model changing.
    """
    from align import ladder, losses, training

    targets = np.full((len(train_set), 10), 0.02, np.float32)
    targets[np.arange(len(train_set)), train_set.labels] = 0.82
    options = training.TrainOptions(steps=STEPS, batch_size=BATCH, checkpoint_every=STEPS)
    return training.fit(ladder.build("mlp"), train_set.images, targets, options, loss=losses.ConfidenceLoss(),
                        prepare=training.standardize_for(train_set.spec))


def pema_piece(train_set, work):
    """Train LoRA on a tiny Llama and both PEMA stages on a random memory."""
    from adapters import pema
    from models import llama
    from scripts import pema as pema_script

    config = dataclasses.replace(pema_script.PRESETS["smoke"], lora_steps=STEPS, lora_batch_size=BATCH)
    model_config = pema_script.tiny_config(24)
    model = llama.Llama(model_config)
    params = jax.device_get(model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"])
    rng = np.random.default_rng(0)
    lengths = rng.integers(4, 12, (2, 32))
    encoded = types.SimpleNamespace(contexts=[list(rng.integers(1, 24, n)) for n in lengths[0]],
                                    targets=[list(rng.integers(1, 24, n)) for n in lengths[1]])
    factors, _ = pema_script.train_lora(model, params, encoded, config)

    dim = model_config.hidden_size
    memory = pema.Memory(rng.normal(size=(64, dim)).astype(np.float32), rng.integers(0, 24, 64).astype(np.int32))
    validation = pema.Memory(rng.normal(size=(16, dim)).astype(np.float32), rng.integers(0, 24, 16).astype(np.int32))
    train_config = pema.TrainConfig(rank=8, alpha=8.0, learning_rate=1e-2, batch_size=BATCH, max_epochs=2)
    trained, _ = pema.train(memory, validation, pema_script.frozen_head(model_config, params), train_config)
    return {"lora": factors, "pema": trained}


def tecle_piece(train_set, work):
    """Train two updates of plain PPO with 8 seeds vmapped in one program.

    The second update's metrics depend on the parameters trained by the first. PPO
    compiles in about half the time of TeCLE, and both share the seed sharding.
    """
    from scripts import tecle

    smoke = tecle.PRESETS["smoke"]
    config = dataclasses.replace(smoke, seeds=8, methods=("ppo",), minigrid_timesteps=2 * 8 * 32)
    metrics, _ = tecle.train_runs(config, "ppo", "MiniGrid-Empty-8x8", "noisy_tv")
    return metrics


PIECES = {
    "approx_cnn": approx_cnn_piece,
    "posit_cnn": posit_cnn_piece,
    "cyclic_quant": cyclic_quant_piece,
    "approx_analysis": approx_analysis_piece,
    "align": align_piece,
    "pema": pema_piece,
    "tecle": tecle_piece,
}


def record_batch_devices(record):
    """Wrap `harness.mesh.shard_batch` so that it appends each placed array's device count to `record`."""
    original = mesh_lib.shard_batch

    def recording(mesh, *arrays):
        placed = original(mesh, *arrays)
        for array in placed if isinstance(placed, tuple) else (placed,):
            record.append(len(array.sharding.device_set))
        return placed

    mesh_lib.shard_batch = recording


def main():
    data_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    train_set = data_lib.load_image_dataset("mnist", "train", data_dir=data_dir).take(256)
    record = []
    record_batch_devices(record)
    batch_devices = {}
    for name, piece in PIECES.items():
        record.clear()
        with tempfile.TemporaryDirectory() as work:
            result = piece(train_set, Path(work))
        np.savez(out_dir / f"{name}.npz", **flatten(result))
        batch_devices[name] = sorted(set(record))
    print(json.dumps({"devices": jax.device_count(), "batch_devices": batch_devices}))


if __name__ == "__main__":
    main()
