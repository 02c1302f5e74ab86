"""Run one training step on a mesh of all devices and on one device; print the difference.

Executed in a subprocess by test_mesh.py, with XLA_FLAGS set to simulate 8 CPU devices.
"""

import json
import sys

import jax
import numpy as np
import optax

from harness import data, mesh, train
from models import MnistCNN


def run_steps(device_mesh, dataset, steps):
    model = MnistCNN(widths=(8, 16), hidden=32)
    options = train.FitOptions(steps=steps, batch_size=32, seed=0, log_every=steps)
    return train.fit(model, optax.sgd(0.1, momentum=0.9), dataset, options, mesh=device_mesh)


def main():
    dataset = data.load_image_dataset("mnist", "train", data_dir=sys.argv[1]).take(512)
    devices = jax.devices()
    many = run_steps(mesh.data_mesh(devices), dataset, 3)
    one = run_steps(mesh.data_mesh(devices[:1]), dataset, 3)
    difference = max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree_util.tree_leaves(many.params), jax.tree_util.tree_leaves(one.params))
    )
    sharding = jax.tree_util.tree_leaves(many.params)[0].sharding
    try:
        mesh.shard_batch(mesh.data_mesh(devices), np.zeros((12, 3), np.float32))
        uneven_batch_error = ""
    except ValueError as error:
        uneven_batch_error = str(error)
    print(json.dumps({"devices": len(devices), "max_difference": difference,
                      "replicated": sharding.is_fully_replicated,
                      "uneven_batch_error": uneven_batch_error}))


if __name__ == "__main__":
    main()
