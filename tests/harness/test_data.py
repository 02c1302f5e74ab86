"""Data resolution, decoding, missing-data errors and deterministic batching."""

import numpy as np
import pytest

from harness import data


def test_mnist_from_mirror(data_dir):
    train = data.load_image_dataset("mnist", "train", data_dir=data_dir)
    test = data.load_image_dataset("mnist", "test", data_dir=data_dir)
    assert train.images.shape == (60_000, 28, 28, 1)
    assert test.images.shape == (10_000, 28, 28, 1)
    assert train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.images.max() >= 254  # the mirror rescales bytes k to round(k * 255 / 256)
    assert test.source.endswith("mnist/test.parquet")


def test_cifar10_from_mirror(data_dir):
    test = data.load_image_dataset("cifar10", "test", data_dir=data_dir)
    assert test.images.shape == (10_000, 32, 32, 3)
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_environment_variable_is_used(data_dir, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, data_dir)
    assert len(data.load_image_dataset("mnist", "test")) == 10_000


def test_second_load_reads_the_array_cache(data_dir):
    first = data.load_image_dataset("mnist", "test", data_dir=data_dir)
    images_path, labels_path = data._array_cache_paths(
        data._local_split(data_dir, data.SPECS["mnist"], "test", "data_dir")
    )
    assert images_path.exists() and labels_path.exists()
    second = data.load_image_dataset("mnist", "test", data_dir=data_dir)
    np.testing.assert_array_equal(first.images, second.images)


def test_directory_without_split_is_an_error(tmp_path):
    (tmp_path / "mnist").mkdir()
    with pytest.raises(ValueError, match="does not contain mnist/train.parquet"):
        data.load_image_dataset("mnist", "train", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="does not exist"):
        data.load_image_dataset("mnist", "train", data_dir=str(tmp_path / "nowhere"))


def test_missing_everywhere_lists_each_place(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(data.DataNotFoundError) as caught:
        data.load_image_dataset("mnist", "test")
    message = str(caught.value)
    assert "local directory" in message
    assert "ylecun/mnist" in message
    assert str(tmp_path / "data" / "mnist" / "test.parquet") in message
    assert "python -m scripts.fetch_data" in message


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown data set 'imagenet'"):
        data.load_image_dataset("imagenet", "train")
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        data.load_image_dataset("mnist", "validation")


def small_dataset(n=10):
    spec = data.SPECS["mnist"]
    images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 28, 28, 1), np.uint8)
    return data.ImageDataset(images, np.arange(n, dtype=np.int32), spec, "test")


def test_epoch_permutation_depends_on_seed_and_epoch():
    a = data.epoch_permutation(0, 0, 100)
    np.testing.assert_array_equal(a, data.epoch_permutation(0, 0, 100))
    assert not np.array_equal(a, data.epoch_permutation(0, 1, 100))
    assert not np.array_equal(a, data.epoch_permutation(1, 0, 100))
    assert sorted(a.tolist()) == list(range(100))


def test_train_batches_cover_each_epoch_once():
    dataset = small_dataset(10)
    seen = np.concatenate([data.train_batch(dataset, 3, seed=0, step=s)[1] for s in range(3)])
    assert len(set(seen.tolist())) == 9  # three full batches; one example left for next epoch
    again = data.train_batch(dataset, 3, seed=0, step=2)[1]
    np.testing.assert_array_equal(again, data.train_batch(dataset, 3, seed=0, step=2)[1])
    with pytest.raises(ValueError, match="batch_size=11"):
        data.train_batch(dataset, 11, seed=0, step=0)


def test_eval_batches_pad_and_mask():
    dataset = small_dataset(10)
    batches = list(data.eval_batches(dataset, 4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 4]
    assert batches[-1][2].tolist() == [True, True, False, False]
    labels = np.concatenate([labels[mask] for _, labels, mask in batches])
    np.testing.assert_array_equal(labels, np.arange(10))


def test_take_is_class_balanced_on_a_sorted_split(data_dir):
    test = data.load_image_dataset("cifar10", "test", data_dir=data_dir)
    assert test.labels[0] == test.labels[999]  # the mirror stores the split sorted by label
    subset = test.take(1000)
    assert np.bincount(subset.labels, minlength=10).tolist() == [100] * 10
    again = test.take(1000)
    np.testing.assert_array_equal(subset.images, again.images)
    assert len(test.take(None)) == len(test)


def test_balanced_order_round_robin():
    labels = np.array([0, 0, 0, 1, 1, 2])
    order = data.balanced_order(labels)
    assert labels[order].tolist() == [0, 1, 2, 0, 1, 0]
    assert sorted(order.tolist()) == list(range(6))
