"""A one-axis device mesh for data-parallel training.

Parameters are replicated and batches are split along their first axis over every
device. A jitted step written for one device then runs data-parallel without change,
because XLA inserts the gradient all-reduce for a loss that averages a sharded batch.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices=None):
    """Mesh with one axis, "data", over `devices` (default: all devices)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh):
    """Sharding that places a full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh):
    """Sharding that splits the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(mesh, *arrays):
    """Place host arrays on the mesh split along axis 0.

    Every process must pass the same global arrays; each keeps the rows of its devices.
    Arrays of typed PRNG keys (from `jax.random.key`) are placed the same way.

    Raises:
      ValueError: the batch size is not a multiple of the number of devices.
    """
    devices = mesh.devices.size
    for array in arrays:
        if array.shape[0] % devices:
            raise ValueError(
                f"batch of {array.shape[0]} examples cannot be split evenly over {devices} "
                f"devices; choose a batch size that is a multiple of {devices}."
            )
    sharding = batch_sharded(mesh)
    placed = tuple(_place_global(array, sharding) for array in arrays)
    return placed if len(placed) > 1 else placed[0]


def _place_global(array, sharding):
    """Build the global array of `sharding` from a host copy of the whole array."""
    if jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
        # Typed PRNG keys have no NumPy form. Their raw uint32 data (one trailing axis)
        # is placed instead, because the spec splits axis 0 and replicates the rest.
        data = _place_global(jax.random.key_data(array), sharding)
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(array))
    # Every process computes the same global batch, because it is a pure function of
    # seed and step. The callback gives each process only the rows of its own devices,
    # so this also works when the mesh spans several hosts.
    host = np.asarray(array)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(mesh, tree):
    """Place a pytree on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))
