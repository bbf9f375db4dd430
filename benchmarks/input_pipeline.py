"""Throughput of dsa_tf.data's training pipeline next to the training speed it has to feed.

Loads ``--dataset`` (default cifar10) with :func:`dsa_tf.data.load` (batch 128, default
augmentation, 90/10 alpha split, in-memory cache) from ``--data_dir`` (default: the prepared
``../shared/tensorflow_datasets`` next to the repository, else ``$TFDS_DATA_DIR``), then:

1. iterates ``train`` for one epoch, the caching epoch (reading, decoding, cache fill), and
   reports its images/s;
2. iterates ``train`` for ``--epochs`` more epochs (shuffle, augmentation, normalisation,
   batching from the cache) and reports images/s and process CPU time per image;
3. trains ``dsa_tf.models.cifar_resnet(--depth)`` (SGD momentum 0.9,
   SparseCategoricalCrossentropy from logits) with ``train_on_batch`` on ``--steps`` batches
   taken from the same pipeline and held in memory (after one untimed warm-up step), and
   reports images/s and CPU time per image.

The ratio pipeline / training says how many times faster the input is produced than it is
consumed: above 1, input is not the bottleneck; the CPU-time share says how much of the
(shared) cores the input pipeline takes away from training. Both parts run in this process,
one after the other, so on a busy machine both are slowed alike; the 1-minute load average is
printed.

Run from the repository root:

    .venv/bin/python benchmarks/input_pipeline.py
    .venv/bin/python benchmarks/input_pipeline.py --dataset fashion_mnist --depth 8
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dsa_tf  # noqa: E402

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "shared", "tensorflow_datasets")


def timed_epoch(dataset: tf.data.Dataset) -> tuple[int, float, float]:
    """(images, wall seconds, process CPU seconds) of one pass over ``dataset``."""
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for _, labels in dataset:
        images += int(labels.shape[0])
    return images, time.perf_counter() - wall, time.process_time() - cpu


def training_speed(splits: dsa_tf.data.Splits, depth: int, steps: int) -> tuple[float, float]:
    """(images/s, CPU seconds per image) of train_on_batch on batches of ``splits.train``."""
    batches = [(x, y) for x, y in splits.train.take(steps + 1)]
    model = dsa_tf.models.cifar_resnet(depth, num_classes=splits.num_classes,
                                       input_shape=splits.input_shape)
    model.compile(tf.keras.optimizers.SGD(0.05, momentum=0.9),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(*batches[0])  # tracing
    wall, cpu = time.perf_counter(), time.process_time()
    for x, y in batches[1:]:
        model.train_on_batch(x, y)
    images = sum(int(y.shape[0]) for _, y in batches[1:])
    return images / (time.perf_counter() - wall), (time.process_time() - cpu) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data_dir", default=SHARED if os.path.isdir(SHARED) else None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after caching")
    parser.add_argument("--depth", type=int, default=20, help="CIFAR ResNet depth")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    args = parser.parse_args()

    splits = dsa_tf.data.load(args.dataset, data_dir=args.data_dir, batch_size=args.batch_size)
    print(f"{args.dataset} from {splits.data_dir}: {splits.train_examples} training images "
          f"{splits.input_shape}, augment={splits.augment}, batch {args.batch_size}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    images, wall, _ = timed_epoch(splits.train)
    print(f"caching epoch: {images / wall:,.0f} images/s ({wall:.1f} s)", flush=True)
    rates, cpus = [], []
    for epoch in range(args.epochs):
        images, wall, cpu = timed_epoch(splits.train)
        rates.append(images / wall)
        cpus.append(cpu / images)
        print(f"epoch {epoch + 2}: {rates[-1]:,.0f} images/s, {1e6 * cpus[-1]:.0f} us CPU "
              f"per image", flush=True)
    pipeline, pipeline_cpu = float(np.median(rates)), float(np.median(cpus))
    training, training_cpu = training_speed(splits, args.depth, args.steps)
    print(f"ResNet-{args.depth} train_on_batch: {training:,.1f} images/s, "
          f"{1e3 * training_cpu:.2f} ms CPU per image; load average {os.getloadavg()[0]:.2f}")
    print(f"pipeline (median after caching) {pipeline:,.0f} images/s = "
          f"{pipeline / training:,.0f}x the training speed; the pipeline's CPU time is "
          f"{100 * pipeline_cpu / training_cpu:.2f}% of the training step's")


if __name__ == "__main__":
    main()
