"""One-shot pruning of a trained model with the baseline allocators, side by side.

Trains a CIFAR ResNet (``dsa_tf.models.cifar_resnet``) on a seeded subset of Fashion-MNIST,
then, for each of ``dsa_tf.uniform_allocation``, ``dsa_tf.magnitude_allocation`` and
``dsa_tf.taylor_allocation`` (on ``--taylor_batches`` training batches) at the same FLOPs
budget:

1. strips the trained model to the allocation (``dsa_tf.strip(model, keep)``) and evaluates
   it as it is (one-shot, no fine-tuning);
2. gates a copy (``dsa_tf.prune_to_budget``), freezes it to the allocation
   (``dsa_tf.apply_allocation``), fine-tunes it for ``--finetune_epochs`` and evaluates the
   stripped result.

Every run starts from the same trained weights; fine-tuning uses SGD with momentum 0.9 at a
constant ``--finetune_lr``. It prints the FLOPs and params ratios of every stripped model,
the kept channels per group and the test accuracies (full test split).

Run from the repository root (with the defaults, 9 min 44 s on 2 CPU cores shared with other
jobs, load average about 5):

    .venv/bin/python benchmarks/one_shot.py --budget=0.33

Measured so (one seed, 2026-12-01): ResNet-8, 12,000 images, 4 epochs, test accuracy 0.8300;
at 33% of the FLOPs:

    allocator   FLOPs params one-shot  tuned  kept per group
    uniform     0.324  0.334   0.3220 0.8194  [9, 9, 18, 18, 37, 37]
    magnitude   0.318  0.290   0.2036 0.8215  [9, 10, 17, 19, 34, 30]
    taylor      0.328  0.303   0.1021 0.7904  [9, 10, 19, 18, 32, 36]

Removing two thirds of the FLOPs at once breaks every allocation (one-shot accuracies near
chance); one epoch of fine-tuning recovers most of the accuracy, with differences between
allocators within what one seed can tell apart.
"""

from __future__ import annotations

import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

import dsa_tf

_SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "tensorflow_datasets")

DATA_DIR = flags.DEFINE_string(
    "data_dir", os.environ.get("TFDS_DATA_DIR") or (_SHARED if os.path.isdir(_SHARED) else None),
    "tfds data_dir (default: $TFDS_DATA_DIR, else ../shared/tensorflow_datasets).")
DEPTH = flags.DEFINE_integer("depth", 8, "CIFAR ResNet depth, 6n + 2.")
BUDGET = flags.DEFINE_float("budget", 0.33, "FLOPs budget as a fraction of the full model.")
TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 12000, "Training-subset size.")
EPOCHS = flags.DEFINE_integer("epochs", 4, "Training epochs of the full model.")
FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", 1, "Fine-tuning epochs per pruning.")
FINETUNE_LR = flags.DEFINE_float("finetune_lr", 0.01, "Fine-tuning learning rate.")
TAYLOR_BATCHES = flags.DEFINE_integer("taylor_batches", 4, "Batches for the Taylor scores.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the subset, the weights and the shuffles.")
BATCH = 128


def load(seed: int) -> tuple:
    """Seeded training subset and the full test split, scaled to [0, 1] and standardised."""
    kwargs = {"data_dir": DATA_DIR.value, "batch_size": -1, "as_supervised": True}
    x, y = tfds.as_numpy(tfds.load("fashion_mnist", split="train", **kwargs))
    x_test, y_test = tfds.as_numpy(tfds.load("fashion_mnist", split="test", **kwargs))
    order = np.random.default_rng(seed).permutation(len(x))[:TRAIN_EXAMPLES.value]
    x, x_test = x[order].astype("float32") / 255.0, x_test.astype("float32") / 255.0
    mean, std = x.mean(), x.std()
    train = tf.data.Dataset.from_tensor_slices(((x - mean) / std, y[order].astype("int64")))
    train = train.shuffle(len(order), seed=seed).batch(BATCH).prefetch(tf.data.AUTOTUNE)
    test = tf.data.Dataset.from_tensor_slices(((x_test - mean) / std, y_test.astype("int64")))
    return train, test.batch(512), x.shape[1:]


def compiled(model: tf.keras.Model, lr: float) -> tf.keras.Model:
    model.compile(tf.keras.optimizers.SGD(lr, momentum=0.9),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def accuracy(model: tf.keras.Model, test: tf.data.Dataset) -> float:
    return float(compiled(model, 0.0).evaluate(test, verbose=0)[1])


def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    train, test, shape = load(SEED.value)
    tf.keras.utils.set_random_seed(SEED.value)
    model = dsa_tf.models.cifar_resnet(DEPTH.value, input_shape=tuple(shape), num_classes=10)
    compiled(model, 0.05).fit(train, epochs=EPOCHS.value, verbose=2)
    print(f"full model: test accuracy {accuracy(model, test):.4f}, "
          f"{dsa_tf.count_flops(model):,} FLOPs, {dsa_tf.count_params(model):,} params")
    budget = BUDGET.value
    allocators = {
        "uniform": lambda: dsa_tf.uniform_allocation(model, budget),
        "magnitude": lambda: dsa_tf.magnitude_allocation(model, budget),
        "taylor": lambda: dsa_tf.taylor_allocation(model, budget, train,
                                                   batches=TAYLOR_BATCHES.value),
    }
    rows = []
    for name, allocate in allocators.items():
        seconds = time.perf_counter()
        keep = allocate()
        seconds = time.perf_counter() - seconds
        small = dsa_tf.strip(model, keep)
        one_shot = accuracy(small, test)
        tf.keras.utils.set_random_seed(SEED.value)
        gated = dsa_tf.prune_to_budget(model, budget)
        dsa_tf.apply_allocation(gated, keep)
        compiled(gated, FINETUNE_LR.value).fit(train, epochs=FINETUNE_EPOCHS.value, verbose=0)
        tuned = accuracy(dsa_tf.strip(gated), test)
        rows.append((name, dsa_tf.count_flops(small) / dsa_tf.count_flops(model),
                     dsa_tf.count_params(small) / dsa_tf.count_params(model), one_shot, tuned,
                     seconds, [len(k) for k in keep.values()]))
    print(f"\nbudget {budget} of FLOPs; fine-tuning {FINETUNE_EPOCHS.value} epoch(s) at lr "
          f"{FINETUNE_LR.value}")
    print(f"{'allocator':<10} {'FLOPs':>6} {'params':>6} {'one-shot':>8} {'tuned':>6} "
          f"{'alloc s':>7}  kept per group")
    for name, flops, params, one_shot, tuned, seconds, kept in rows:
        print(f"{name:<10} {flops:>6.3f} {params:>6.3f} {one_shot:>8.4f} {tuned:>6.4f} "
              f"{seconds:>7.2f}  {kept}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    app.run(main)
