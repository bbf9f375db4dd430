"""dsa_tf.run.data on tfds' mock data and on tagged_images, a tiny dataset prepared in a temporary
folder (tests/tagged_images.py)."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from dsa_tf import data

import tagged_images
from tagged_images import N_TRAIN, N_VALIDATION

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "shared", "tensorflow_datasets")


@pytest.fixture(scope="module")
def tagged_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tagged_images.prepare(str(tmp_path_factory.mktemp("tfds")))


def tags(dataset: tf.data.Dataset) -> list[int]:
    """The example numbers of an unaugmented tagged_images dataset (mean 0, std 1)."""
    return [int(t) for x, _ in dataset for t in np.round(x.numpy()[:, 0, 0, 0] * 255)]


def epochs(dataset: tf.data.Dataset, count: int = 2) -> list[np.ndarray]:
    return [np.concatenate([x.numpy() for x, _ in dataset]) for _ in range(count)]


def test_alpha_split_is_disjoint_seeded_and_exact(tagged_dir):
    def load(**kwargs):
        return data.load("tagged_images", data_dir=tagged_dir, batch_size=10, augment=None,
                         **kwargs)

    splits = load()
    train, alpha = tags(splits.train), tags(splits.alpha)
    assert (len(train), len(alpha)) == (splits.train_examples, splits.alpha_examples) == (180, 20)
    assert len(set(train)) == 180 and len(set(alpha)) == 20
    assert set(train).isdisjoint(alpha) and set(train) | set(alpha) == set(range(N_TRAIN))
    assert set(tags(load().alpha)) == set(alpha)
    assert set(tags(load(seed=1).alpha)) != set(alpha)
    assert sorted(tags(splits.test)) == list(range(N_TRAIN, N_TRAIN + N_VALIDATION))


def test_alpha_batches_are_full_when_possible(tagged_dir):
    splits = data.load("tagged_images", data_dir=tagged_dir, batch_size=16, augment=None)
    assert [len(y) for _, y in splits.alpha] == [16]  # 20 alpha examples, remainder dropped
    assert sum(len(y) for _, y in splits.train) == 180
    splits = data.load("tagged_images", data_dir=tagged_dir, batch_size=32, augment=None)
    assert [len(y) for _, y in splits.alpha] == [20]  # fewer than a batch: all of them


def test_train_examples_subset(tagged_dir):
    splits = data.load("tagged_images", data_dir=tagged_dir, batch_size=32, augment=None,
                       train_examples=50, alpha_fraction=0.2, seed=3)
    train, alpha = tags(splits.train), tags(splits.alpha)
    assert (len(train), len(alpha)) == (40, 10) and set(train).isdisjoint(alpha)
    assert len(set(train) | set(alpha)) == 50
    with pytest.raises(ValueError, match="train_examples"):
        data.load("tagged_images", data_dir=tagged_dir, train_examples=N_TRAIN + 1)


def test_metadata_and_validation_split(tagged_dir):
    splits = data.load("tagged_images", data_dir=tagged_dir, batch_size=8)
    assert splits.test_split == "validation" and splits.test_examples == N_VALIDATION
    assert splits.input_shape == (8, 8, 1) and splits.augment == "cifar"
    assert splits.num_classes == 3 and splits.class_names == ("a", "b", "c")
    assert splits.mean == (0.0,) and splits.std == (1.0,)
    assert splits.steps_per_epoch == 23
    assert splits.data_dir.startswith(tagged_dir)
    batches = list(splits.representative_batches(2))
    assert len(batches) == 2 and batches[0].shape == (8, 8, 8, 1)
    assert set(np.round(np.concatenate(batches)[:, 0, 0, 0] * 255).astype(int)) <= set(
        tags(data.load("tagged_images", data_dir=tagged_dir, augment=None).alpha))


def test_augmentation_is_seeded_and_redrawn_every_epoch(tagged_dir):
    """Augmented images per example, so that shuffling alone cannot pass or fail it."""

    def per_example(seed: int) -> list[dict[int, bytes]]:
        splits = data.load("tagged_images", data_dir=tagged_dir, batch_size=64, seed=seed)
        result = []
        for images in epochs(splits.train):
            numbers = np.round(images.max(axis=(1, 2, 3)) * 255).astype(int)
            result.append({int(n): image.tobytes() for n, image in zip(numbers, images)})
        return result

    first, again, other = per_example(0), per_example(0), per_example(1)
    assert first == again
    assert first[0].keys() == first[1].keys() and len(first[0]) == 180
    changed = sum(first[0][n] != first[1][n] for n in first[0])
    assert changed > 0.8 * len(first[0])  # 81 crops (x flip, partly the same): ~2% repeat
    common = first[0].keys() & other[0].keys()  # seed 1 also holds out other examples
    assert len(common) > 140 and sum(first[0][n] != other[0][n] for n in common) > 0.8 * len(
        common)
    plain = data.load("tagged_images", data_dir=tagged_dir, batch_size=64, augment=None)
    assert all(np.ptp(image) == 0 for image in epochs(plain.train, 1)[0])


def test_same_seed_same_batches_on_mock_cifar10():
    with tfds.testing.mock_data(num_examples=64):
        first = data.load("cifar10", batch_size=16, seed=0)
        second = data.load("cifar10", batch_size=16, seed=0)
        other = data.load("cifar10", batch_size=16, seed=1)
    a, b, c = epochs(first.train), epochs(second.train), epochs(other.train)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], c[0])
    assert all(np.array_equal(x, y) for x, y in zip(epochs(first.alpha), epochs(second.alpha)))


@pytest.mark.parametrize("name, kwargs, shape, augment, classes", [
    ("cifar10", {}, (32, 32, 3), "cifar", 10),
    ("fashion_mnist", {}, (28, 28, 1), "cifar", 10),
    ("imagenette", {"image_size": 24}, (24, 24, 3), "imagenet", 10),
    ("cifar100", {"augment": None, "image_size": 16}, (16, 16, 3), None, 100),
])
def test_shapes_and_dtypes_on_mock_data(name, kwargs, shape, augment, classes):
    with tfds.testing.mock_data(num_examples=40):
        splits = data.load(name, batch_size=8, **kwargs)
    assert splits.input_shape == shape and splits.augment == augment
    assert splits.num_classes == len(splits.class_names) == classes
    assert (splits.train_examples, splits.alpha_examples, splits.test_examples) == (36, 4, 40)
    assert len(splits.mean) == len(splits.std) == shape[-1]
    for dataset, size in ((splits.train, 8), (splits.alpha, 4), (splits.test, 8)):
        images, labels = next(iter(dataset))
        assert images.shape == (size, *shape) and images.dtype == tf.float32
        assert labels.dtype == tf.int64 and 0 <= int(tf.reduce_min(labels))
        assert int(tf.reduce_max(labels)) < classes
    x = np.asarray(next(iter(splits.test))[0])
    assert np.isfinite(x).all() and x.min() >= -3 and x.max() <= 3


def test_normalize_uses_the_dataset_statistics():
    with tfds.testing.mock_data(num_examples=10):
        splits = data.load("cifar10", batch_size=5)
    pixels = tf.constant([[[[124.0, 255.0, 0.0]]]])
    expected = [(124 / 255 - 0.4914) / 0.2470, (1 - 0.4822) / 0.2435, -0.4465 / 0.2616]
    np.testing.assert_allclose(splits.normalize(pixels).numpy().ravel(), expected, rtol=1e-5)


def test_missing_dataset_names_the_folder_and_downloads_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="TFDS_DATA_DIR") as error:
        data.load("mnist", data_dir=str(tmp_path))
    assert str(tmp_path) in str(error.value) and "download=True" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_data_dir_and_environment_variable(tagged_dir, tmp_path, monkeypatch):
    empty = str(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", empty)  # read at call time, after tfds' import
    with pytest.raises(FileNotFoundError, match=re.escape(empty)):
        data.load("tagged_images")
    assert data.load("tagged_images", data_dir=tagged_dir).data_dir.startswith(tagged_dir)
    monkeypatch.setenv("TFDS_DATA_DIR", tagged_dir)
    assert data.load("tagged_images").alpha_examples == 20
    with pytest.raises(FileNotFoundError, match=re.escape(empty)):
        data.load("tagged_images", data_dir=empty)


def test_bad_arguments(tagged_dir):
    with pytest.raises(ValueError, match="augment"):
        data.load("tagged_images", data_dir=tagged_dir, augment="random")
    with pytest.raises(ValueError, match="alpha_fraction"):
        data.load("tagged_images", data_dir=tagged_dir, alpha_fraction=1.0)


@pytest.mark.skipif(not all(os.path.isdir(os.path.join(SHARED, name))
                            for name in ("cifar10", "fashion_mnist")),
                    reason="no prepared cifar10 / fashion_mnist next to the repository")
@pytest.mark.parametrize("name, shape, first_class", [
    ("cifar10", (32, 32, 3), "airplane"), ("fashion_mnist", (28, 28, 1), "T-shirt/top")])
def test_real_datasets(name, shape, first_class):
    splits = data.load(name, data_dir=SHARED, batch_size=256, train_examples=2000)
    assert splits.input_shape == shape and splits.class_names[0] == first_class
    assert (splits.train_examples, splits.alpha_examples, splits.test_examples) == (
        1800, 200, 10000)
    images, labels = next(iter(splits.train))
    assert images.shape == (256, *shape) and len(np.unique(labels)) == 10
    test_images = np.concatenate([x.numpy() for x, _ in splits.test.take(4)])
    assert abs(test_images.mean()) < 0.15 and abs(test_images.std() - 1) < 0.15
