"""Input pipelines on tensorflow-datasets for image classification, with DSA's allocation split.

:func:`load` turns any tfds image-classification dataset (``cifar10``, ``cifar100``,
``fashion_mnist``, ``mnist``, ``imagenette/320px``, ``imagenet2012`` from a manual dir, ...)
into a :class:`Splits`: the weight-training data, the held-out ``alpha`` data of DSA's
keep-ratio steps (a seeded 90/10 split of the training split, as in the paper), the test data
and what a model needs to know (input shape, classes, normalisation).

Decisions:

- Where the data is: ``data_dir``, else ``$TFDS_DATA_DIR`` read at call time (tfds itself
  reads it only once, when it is imported), else tfds' default ``~/tensorflow_datasets``.
  Nothing is downloaded unless ``download=True``; a missing dataset raises
  ``FileNotFoundError`` naming the folder searched.
- The split: the training split is read in its stored order (tfds shuffled the examples when
  it prepared the dataset) and every example index gets exactly one role, weight-training,
  alpha or unused (outside ``train_examples``), from one seeded permutation. The subsets are
  disjoint by construction and the same for the same seed; they contain exactly
  ``round(alpha_fraction * n)`` and ``n - round(alpha_fraction * n)`` examples.
- The alpha data is augmented like the training data (DSA's Theta steps run the model in
  training mode on it, and BatchNorm statistics see those batches too), shuffled, batched
  with ``drop_remainder`` when it holds at least one full batch, and finite: DSACallback
  repeats it.
- Augmentation: ``"cifar"`` pads 4 pixels with zeros, takes a random crop of the original size
  and flips horizontally (no flip for digit datasets: mnist, emnist, kmnist, svhn_cropped).
  ``"imagenet"`` takes a random resized crop (area 8-100%, aspect 3/4-4/3) and a flip for
  training; evaluation resizes the shorter side to ``image_size / 0.875`` and crops the centre.
  ``"auto"`` picks ``"cifar"`` for fixed-size images of at most 64x64, else ``"imagenet"``;
  ``None`` trains on the evaluation transform. The randomness is stateless: every example
  draws its crop and flip from a key of a seeded stream that is re-drawn every epoch, so the
  same seed gives the same batches, epoch after epoch, and another seed other ones. Like every
  seeded tf.data operation, the shuffles and the key stream also depend on TensorFlow's
  global seed at the time ``load`` is called (set or not, and its value): for batches that do
  not depend on what ran before in the process, call ``keras.utils.set_random_seed`` first.
- Normalisation: ``(pixel / 255 - mean) / std`` per channel, with the published statistics of
  cifar10, cifar100, mnist, fashion_mnist, svhn_cropped and ImageNet (also used for imagenette
  and imagenet variants); other datasets are only scaled to [0, 1] (mean 0, std 1). The
  constants are in :class:`Splits` for exported models and calibration data.
- Caching: decoded uint8 images (after the split and any resize, before augmentation) are
  cached in memory when their size is known and below 2 GiB (cifar10's training subset: 138
  MB); shuffling then uses a buffer over the whole subset. Larger or variable-size datasets are
  decoded every epoch, only for the selected examples, and shuffled in a 10,000-example window.

Example (random stand-in examples from ``tfds.testing.mock_data``; with real data, call
``load("cifar10", data_dir=...)`` directly):

    >>> import tensorflow_datasets as tfds
    >>> from dsa_tf import data
    >>> with tfds.testing.mock_data(num_examples=100):
    ...     splits = data.load("cifar10", batch_size=16, seed=0)
    >>> splits.input_shape, splits.num_classes, splits.train_examples, splits.alpha_examples
    ((32, 32, 3), 10, 90, 10)
    >>> images, labels = next(iter(splits.train))
    >>> images.shape, images.dtype.name, labels.dtype.name
    (TensorShape([16, 32, 32, 3]), 'float32', 'int64')
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import constants as tfds_constants

AUGMENTATIONS = ("auto", "cifar", "imagenet", None)
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Per-channel (mean, std) of pixels scaled to [0, 1], by dataset name (without config/version).
NORMALIZATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "imagenet2012": IMAGENET_STATS,
    "imagenet2012_subset": IMAGENET_STATS,
    "imagenet_resized": IMAGENET_STATS,
    "imagenet_v2": IMAGENET_STATS,
    "imagenette": IMAGENET_STATS,
}
NO_FLIP = frozenset({"mnist", "emnist", "kmnist", "svhn_cropped"})
CACHE_LIMIT_BYTES = 2 << 30
SHUFFLE_WINDOW = 10_000
CIFAR_PADDING = 4
CENTER_CROP_FRACTION = 0.875
DEFAULT_IMAGE_SIZE = 224
_UNUSED, _TRAIN, _ALPHA = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Splits:
    """The datasets of one run and what a model needs to know about them.

    ``train``, ``alpha`` and ``test`` yield ``(images, labels)`` batches: float32 images of
    ``input_shape`` normalised with ``mean`` and ``std``, int64 labels. ``train`` and ``alpha``
    end after one pass (Keras' ``fit`` iterates ``train`` once per epoch; DSACallback repeats
    ``alpha``) and are reshuffled and re-augmented at every pass.

    Attributes:
        train: augmented, shuffled weight-training batches (the training split minus alpha).
        alpha: the held-out allocation subset, augmented like ``train``: DSACallback's
            ``alpha_data``.
        test: the evaluation split, unaugmented, in stored order.
        name: the tfds dataset name as given.
        data_dir: the folder tfds read the dataset from.
        test_split: which tfds split ``test`` holds (``"test"``, else ``"validation"``).
        input_shape: ``(height, width, channels)`` of the images.
        num_classes: number of labels.
        class_names: the label names, by label.
        train_examples: examples in ``train``.
        alpha_examples: examples in ``alpha``.
        test_examples: examples in ``test``.
        batch_size: the batch size of the three datasets.
        mean: per-channel mean subtracted from pixels scaled to [0, 1].
        std: per-channel standard deviation the centred pixels are divided by.
        augment: the training augmentation used: ``"cifar"``, ``"imagenet"`` or None.
    """

    train: tf.data.Dataset
    alpha: tf.data.Dataset
    test: tf.data.Dataset
    name: str
    data_dir: str
    test_split: str
    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    train_examples: int
    alpha_examples: int
    test_examples: int
    batch_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str | None
    calibration: tf.data.Dataset = dataclasses.field(repr=False)

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one pass over ``train``."""
        return math.ceil(self.train_examples / self.batch_size)

    def normalize(self, images: tf.Tensor) -> tf.Tensor:
        """Maps images with pixels in [0, 255] (any dtype) to the model's float32 input."""
        return _normalize(images, self.mean, self.std)

    def representative_batches(self, num_batches: int = 8) -> Iterator[np.ndarray]:
        """Input batches for TFLite int8 calibration, preprocessed as at inference.

        They come from ``calibration``: the alpha examples (training images held out from
        weight training) through the evaluation transform, in a fixed order.

        Args:
            num_batches: how many batches (fewer if the alpha subset is smaller).

        Yields:
            float32 arrays of shape ``(batch, *input_shape)``.
        """
        for images, _ in self.calibration.take(num_batches):
            yield images.numpy()


def load(name: str, *, data_dir: str | None = None, batch_size: int = 128,
         alpha_fraction: float = 0.1, seed: int = 0, augment: str | None = "auto",
         image_size: int | None = None, train_examples: int | None = None,
         cache: bool | None = None, download: bool = False,
         manual_dir: str | None = None) -> Splits:
    """Builds the training, allocation (alpha) and test pipelines of a tfds image dataset.

    Args:
        name: tfds name, optionally with config and version (``"imagenette/320px"``).
        data_dir: tfds data folder; None: ``$TFDS_DATA_DIR``, else tfds' default.
        batch_size: batch size of all three datasets.
        alpha_fraction: share of the (used) training examples held out as ``alpha``, in
            [0, 1) (paper: 0.1; 0 leaves ``alpha`` empty).
        seed: seed of the split, the shuffles and the augmentation.
        augment: ``"auto"``, ``"cifar"``, ``"imagenet"`` or None (see the module docstring).
        image_size: side of the square model input. None: the images' own size when they
            all have one and the augmentation is not ``"imagenet"``, else 224. With
            ``"cifar"``/None on fixed-size images, images are resized to it once.
        train_examples: use a seeded subset of this many training examples (before the
            alpha split); None uses all.
        cache: keep decoded images in memory; None: when they take at most 2 GiB.
        download: let tfds download and prepare a missing dataset into the data folder.
        manual_dir: where tfds finds manually downloaded files (imagenet2012).

    Returns:
        The :class:`Splits`.

    Raises:
        FileNotFoundError: the dataset is not prepared in the data folder (and ``download``
            is False, or downloading failed).
        ValueError: bad arguments, or a dataset without (image, label) supervised keys.

    Example:
        >>> import tensorflow_datasets as tfds
        >>> with tfds.testing.mock_data(num_examples=50):
        ...     splits = load("fashion_mnist", batch_size=10, alpha_fraction=0.2)
        >>> splits.input_shape, splits.augment, splits.train_examples, splits.alpha_examples
        ((28, 28, 1), 'cifar', 40, 10)
        >>> splits.mean, splits.std
        ((0.286,), (0.353,))
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}.")
    if not 0 <= alpha_fraction < 1:
        raise ValueError(f"alpha_fraction must be in [0, 1), got {alpha_fraction}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    builder = _builder(name, data_dir, download, manual_dir)
    info = builder.info
    if info.supervised_keys is None or len(info.supervised_keys) != 2:
        raise ValueError(f"{name} has no (image, label) supervised keys: not an image "
                         f"classification dataset.")
    image_key, label_key = info.supervised_keys
    image_feature, label_feature = info.features[image_key], info.features[label_key]
    base = builder.name
    height, width, channels = image_feature.shape
    fixed = height is not None and width is not None
    if augment == "auto":
        augment = "cifar" if fixed and max(height, width) <= 64 else "imagenet"
    geometry = "crop" if augment == "imagenet" or (not fixed and image_size is None) else "fixed"
    if geometry == "crop":
        size = (image_size or DEFAULT_IMAGE_SIZE,) * 2
    else:
        size = (image_size, image_size) if image_size else (height, width)
    mean, std = NORMALIZATION.get(base, ((0.0,) * channels, (1.0,) * channels))
    test_split = ("validation" if "test" not in info.splits and "validation" in info.splits
                  else "test")

    def read(split: str) -> tf.data.Dataset:
        return _read(builder, split, image_key, label_key)

    def decode(encoded: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = image_feature.decode_example(encoded)
        if geometry == "fixed" and (height, width) != size:
            image = tf.cast(tf.round(tf.clip_by_value(
                tf.image.resize(image, size, antialias=True), 0, 255)), tf.uint8)
        return image, label

    def eval_transform(image: tf.Tensor) -> tf.Tensor:
        if geometry == "crop":
            return _resize_center_crop(image, size[0])
        return tf.cast(image, tf.float32)

    if augment == "cifar":
        flip = base not in NO_FLIP

        def train_transform(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
            return _cifar_augment(image, key, flip)
    elif augment == "imagenet":
        def train_transform(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
            return _random_resized_crop(image, key, size[0])
    else:
        def train_transform(image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
            return eval_transform(image)

    decoded = size if geometry == "fixed" else (height, width) if fixed else None
    example_bytes = decoded and decoded[0] * decoded[1] * channels

    def in_memory(count: int) -> bool:
        if cache is not None:
            return cache
        return example_bytes is not None and count * example_bytes <= CACHE_LIMIT_BYTES

    def training(ds: tf.data.Dataset, count: int, stream_seed: int,
                 drop_remainder: bool) -> tf.data.Dataset:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))  # Keras sees the steps
        if in_memory(count):
            ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache()
            ds = ds.shuffle(max(1, count), seed=stream_seed, reshuffle_each_iteration=True)
        else:  # shuffle the encoded images, decode only what is used
            ds = ds.shuffle(max(1, min(count, SHUFFLE_WINDOW)), seed=stream_seed,
                            reshuffle_each_iteration=True)
            ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        keys = tf.data.Dataset.random(seed=stream_seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip((ds, keys)).map(
            lambda example, key: (_normalize(train_transform(example[0], key), mean, std),
                                  example[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)

    def evaluation(ds: tf.data.Dataset, count: int, keep: bool) -> tf.data.Dataset:
        ds = ds.apply(tf.data.experimental.assert_cardinality(count))
        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        if keep and in_memory(count):
            ds = ds.cache()
        ds = ds.map(lambda image, label: (_normalize(eval_transform(image), mean, std), label),
                    num_parallel_calls=tf.data.AUTOTUNE)
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    full = read("train")
    roles = _roles(int(full.cardinality()), alpha_fraction, train_examples, seed)
    n_train, n_alpha = int(np.sum(roles == _TRAIN)), int(np.sum(roles == _ALPHA))
    train_part, alpha_part = _select(full, roles, _TRAIN), _select(full, roles, _ALPHA)
    test_part = read(test_split)
    n_test = int(test_part.cardinality())
    return Splits(
        train=training(train_part, n_train, seed, drop_remainder=False),
        alpha=training(alpha_part, n_alpha, seed + 1, drop_remainder=n_alpha >= batch_size),
        test=evaluation(test_part, n_test, keep=True),
        name=name, data_dir=os.fspath(builder.data_dir), test_split=test_split,
        input_shape=(*size, channels), num_classes=label_feature.num_classes,
        class_names=tuple(label_feature.names), train_examples=n_train,
        alpha_examples=n_alpha, test_examples=n_test, batch_size=batch_size,
        mean=tuple(mean), std=tuple(std), augment=augment,
        calibration=evaluation(alpha_part, n_alpha, keep=False))


def _builder(name: str, data_dir: str | None, download: bool,
             manual_dir: str | None) -> tfds.core.DatasetBuilder:
    """The tfds builder of ``name``, its data prepared (downloaded only if allowed)."""
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR") or None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError as error:  # neither registered nor in the folder
        folder = data_dir or tfds_constants.DATA_DIR
        raise FileNotFoundError(_missing(name, folder, "found no prepared dataset of that "
                                         "name, nor does tfds know it")) from error
    if download and not builder.is_prepared():
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        try:
            builder.download_and_prepare(download_config=config)
        except Exception as error:
            raise FileNotFoundError(
                _missing(name, builder.data_dir, "downloading it failed")) from error
    return builder


def _read(builder: tfds.core.DatasetBuilder, split: str, image_key: str,
          label_key: str) -> tf.data.Dataset:
    """(encoded image, label) pairs of ``split`` in stored order, decoding left to the caller."""
    try:
        return builder.as_dataset(split=split, shuffle_files=False, as_supervised=True,
                                  decoders={image_key: tfds.decode.SkipDecoding()})
    except AssertionError as error:  # tfds' "could not find data" check
        if builder.is_prepared():
            raise
        raise FileNotFoundError(
            _missing(builder.name, builder.data_dir, "it is not there")) from error


def _missing(name: str, folder: os.PathLike | str, why: str) -> str:
    return (f"tfds dataset {name!r} is not available: tfds looked in {folder} and {why}. "
            f"Point data_dir= (or the TFDS_DATA_DIR environment variable) to the folder that "
            f"holds it, or pass download=True to let tfds download and prepare it there.")


def _roles(n: int, alpha_fraction: float, train_examples: int | None,
           seed: int) -> np.ndarray:
    """Per example index of the training split: _TRAIN, _ALPHA or _UNUSED."""
    used = n if train_examples is None else train_examples
    if not 0 < used <= n:
        raise ValueError(f"train_examples must be in [1, {n}], got {train_examples}.")
    n_alpha = round(alpha_fraction * used)
    if n_alpha >= used:
        raise ValueError(f"alpha_fraction={alpha_fraction} leaves no weight-training example.")
    order = np.random.default_rng(seed).permutation(n)[:used]
    roles = np.full(n, _UNUSED, np.int8)
    roles[order[:n_alpha]] = _ALPHA
    roles[order[n_alpha:]] = _TRAIN
    return roles


def _select(ds: tf.data.Dataset, roles: np.ndarray, role: int) -> tf.data.Dataset:
    """The examples of ``ds`` whose index has ``role``, in stored order."""
    table = tf.constant(roles)
    return ds.enumerate().filter(lambda i, example: tf.gather(table, i) == role).map(
        lambda i, example: example)


def _normalize(images: tf.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> tf.Tensor:
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _cifar_augment(image: tf.Tensor, key: tf.Tensor, flip: bool) -> tf.Tensor:
    """Zero padding by 4 pixels, a random crop of the original size, a random flip."""
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    shape = tf.shape(image)
    padded = tf.pad(image, [[CIFAR_PADDING, CIFAR_PADDING], [CIFAR_PADDING, CIFAR_PADDING],
                            [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=crop_key)
    if flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
    return tf.cast(image, tf.float32)


def _random_resized_crop(image: tf.Tensor, key: tf.Tensor, size: int) -> tf.Tensor:
    """A random crop of 8-100% of the area and aspect 3/4-4/3, resized to size², flipped."""
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=crop_key,
        min_object_covered=0.0, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
        max_attempts=10, use_image_if_no_bounding_boxes=True)
    image = tf.image.resize(tf.slice(image, begin, extent), (size, size), antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_key)


def _resize_center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """Shorter side resized to size / 0.875, then the central size x size square."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = round(size / CENTER_CROP_FRACTION) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized, antialias=True)
    top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
    return tf.image.crop_to_bounding_box(image, top, left, size, size)
