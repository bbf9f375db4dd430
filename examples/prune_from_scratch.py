"""Prune a CIFAR ResNet from scratch with DSA, or with a uniform-allocation baseline.

What it shows: one ordinary ``model.fit`` that trains a CIFAR ResNet from random weights and,
with ``--allocation=dsa``, learns how many channels every group keeps under a FLOPs budget
(``dsa_tf.prune_to_budget`` + ``dsa_tf.DSACallback``: warm-up, ADMM allocation, then training
with frozen masks), followed by ``dsa_tf.strip`` to a genuinely smaller plain Keras model. It
prints the epoch at which the budget was reached, the stripped model's FLOPs and params ratios,
the test accuracy of the gated model and of the stripped model (equal up to float noise) and
the per-group allocation.

``--allocation=uniform`` is the baseline at the same budget: ``dsa_tf.uniform_allocation``
(every prunable group keeps the same ratio r, the largest r whose hard configuration,
k = max(1, round(r * C)) channels per group, meets the budget) applied to the gated model with
``dsa_tf.apply_allocation``, which freezes its masks before training starts. The channels kept
are chosen by the initial importance (BatchNorm |gamma|, all 1 at initialisation: the first k
channels of each group, which is as good as any choice for a network trained from scratch). It
then trains with the same schedule and seed, without the DSACallback.

Data: ``tfds.load`` from ``--data_dir``; a seeded random subset of ``--train_examples`` training
images is split 90/10 (disjoint) into weight-training data and the held-out ``alpha_data`` of
the keep-ratio steps, as in the paper (weights keep training on the 90% after the budget is
met: a simplification of the paper, which then uses the whole set). Images are scaled to [0, 1]
and normalised per channel with the weight-training subset's mean and std. Fashion-MNIST is used
at its native 28x28x1 (``input_shape=(28, 28, 1)``, no augmentation); CIFAR-10 at 32x32x3 with
a random 32x32 crop of the 4-pixel zero-padded image and a random horizontal flip. Evaluation is
on the full test split. SGD with momentum 0.9, cosine learning-rate decay to 0 over the run,
L2 weight decay on the kernels (``cifar_resnet(weight_decay=...)``).

Time on 2 CPU cores, no GPU (ResNet-8 on 20,000 Fashion-MNIST images, 10 epochs): 6.5-7.5
minutes per run with two runs side by side on a busy machine (see BENCHMARKS.md); the DSA
allocation epochs are about twice as slow as plain ones. The benchmark commands:

    .venv/bin/python examples/prune_from_scratch.py --dataset=fashion_mnist --depth=8 \
        --budget=0.33 --train_examples=20000 --epochs=10 --warmup_epochs=1 --update_every=2 \
        --allocation=dsa
    .venv/bin/python examples/prune_from_scratch.py --dataset=fashion_mnist --depth=8 \
        --budget=0.33 --train_examples=20000 --epochs=10 --warmup_epochs=1 --update_every=2 \
        --allocation=uniform

The paper's CIFAR-10 schedule (300 epochs, 20 warm-up, update_every=20, batch 128, weight decay
4e-5; step decay where this script uses cosine) is roughly ``--dataset=cifar10 --depth=20
--train_examples=0 --epochs=300 --warmup_epochs=20 --update_every=20 --weight_decay=4e-5``
(days on a CPU).
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags

import dsa_tf

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED = os.path.join(os.path.dirname(_REPO), "shared", "tensorflow_datasets")


def _default_data_dir() -> str | None:
    if os.environ.get("TFDS_DATA_DIR"):
        return os.environ["TFDS_DATA_DIR"]
    return _SHARED if os.path.isdir(_SHARED) else None


DATASET = flags.DEFINE_enum("dataset", "fashion_mnist", ["fashion_mnist", "cifar10"],
                            "tfds dataset.")
DATA_DIR = flags.DEFINE_string("data_dir", _default_data_dir(),
                               "tfds data_dir (default: $TFDS_DATA_DIR, else "
                               "../shared/tensorflow_datasets next to the repo).")
DEPTH = flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth, 6n + 2 (8 for a quick run).")
BUDGET = flags.DEFINE_float("budget", 0.5, "FLOPs budget as a fraction of the full model.")
EPOCHS = flags.DEFINE_integer("epochs", 10, "Training epochs in total.")
WARMUP = flags.DEFINE_integer("warmup_epochs", 1, "Plain-training epochs before allocation.")
UPDATE_EVERY = flags.DEFINE_integer("update_every", 2, "Weight steps per ADMM iteration.")
BATCH = flags.DEFINE_integer("batch_size", 128, "Batch size.")
TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 15000,
                                      "Training-subset size (0: the whole training split).")
LR = flags.DEFINE_float("lr", 0.05, "Initial learning rate (cosine decay to 0).")
WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "L2 factor on the kernels.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the split, the weights, the masks, the shuffles.")
ALLOCATION = flags.DEFINE_enum("allocation", "dsa", ["dsa", "uniform"],
                               "dsa: DSACallback; uniform: the same ratio in every group.")


# ------------------------------------------------------------------------------------ data
def load_data(seed: int) -> tuple:
    """(weight-training, alpha, test) numpy arrays, normalised, and the input shape."""
    kwargs = {"data_dir": DATA_DIR.value, "batch_size": -1, "as_supervised": True}
    x_all, y_all = tfds.as_numpy(tfds.load(DATASET.value, split="train", **kwargs))
    x_test, y_test = tfds.as_numpy(tfds.load(DATASET.value, split="test", **kwargs))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x_all))
    if TRAIN_EXAMPLES.value:
        order = order[:TRAIN_EXAMPLES.value]
    n_alpha = len(order) // 10
    alpha_idx, train_idx = order[:n_alpha], order[n_alpha:]
    x_train = x_all[train_idx].astype("float32") / 255.0
    x_alpha = x_all[alpha_idx].astype("float32") / 255.0
    x_test = x_test.astype("float32") / 255.0
    mean = x_train.mean(axis=(0, 1, 2))
    std = x_train.std(axis=(0, 1, 2))
    x_train, x_alpha, x_test = ((x - mean) / std for x in (x_train, x_alpha, x_test))
    return ((x_train, y_all[train_idx].astype("int64")),
            (x_alpha, y_all[alpha_idx].astype("int64")),
            (x_test, y_test.astype("int64")), x_train.shape[1:])


def datasets(seed: int) -> tuple:
    (x_train, y_train), alpha, test, shape = load_data(seed)
    batch = BATCH.value
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train)).shuffle(
        len(x_train), seed=seed, reshuffle_each_iteration=True)
    if DATASET.value == "cifar10":
        def augment(x: tf.Tensor, y: tf.Tensor) -> tuple:
            x = tf.image.pad_to_bounding_box(x, 4, 4, 40, 40)
            x = tf.image.random_crop(x, [32, 32, 3])
            return tf.image.random_flip_left_right(x), y
        train = train.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    train = train.batch(batch).prefetch(tf.data.AUTOTUNE)
    alpha_data = tf.data.Dataset.from_tensor_slices(alpha).shuffle(
        len(alpha[0]), seed=seed + 1).batch(batch)
    test_data = tf.data.Dataset.from_tensor_slices(test).batch(256)
    return train, alpha_data, test_data, shape, len(x_train), len(alpha[0])


# ---------------------------------------------------------------------------------- main
def compile_model(model, steps: int) -> None:
    schedule = tf.keras.optimizers.schedules.CosineDecay(LR.value, decay_steps=steps)
    model.compile(optimizer=tf.keras.optimizers.SGD(schedule, momentum=0.9),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])


def main(argv: list[str]) -> None:
    del argv
    started = time.perf_counter()
    seed, budget = SEED.value, BUDGET.value
    train, alpha_data, test_data, shape, n_train, n_alpha = datasets(seed)
    print(f"{DATASET.value}: {n_train} weight-training, {n_alpha} alpha (held-out) images, "
          f"input {tuple(shape)}; data ready in {time.perf_counter() - started:.1f} s", flush=True)

    tf.keras.utils.set_random_seed(seed)
    model = dsa_tf.models.cifar_resnet(DEPTH.value, input_shape=tuple(shape), num_classes=10,
                                       weight_decay=WEIGHT_DECAY.value)
    gated = dsa_tf.prune_to_budget(model, {"flops": budget}, seed=seed)
    callbacks = []
    if ALLOCATION.value == "dsa":
        callbacks.append(dsa_tf.DSACallback(alpha_data, warmup_epochs=WARMUP.value,
                                            update_every=UPDATE_EVERY.value))
    else:
        keep = dsa_tf.uniform_allocation(model, budget)
        dsa_tf.apply_allocation(gated, keep)
        print(f"uniform allocation; kept channels per group: "
              f"{ {name: len(kept) for name, kept in keep.items()} }", flush=True)

    steps = EPOCHS.value * int(np.ceil(n_train / BATCH.value))
    compile_model(gated, steps)
    fit_started = time.perf_counter()
    history = gated.fit(train, epochs=EPOCHS.value, callbacks=callbacks, verbose=2)
    fit_seconds = time.perf_counter() - fit_started

    phases = history.history.get("dsa_phase")
    if phases is None:  # uniform: frozen from the start
        reached = 0
    else:
        reached = next((e + 1 for e, p in enumerate(phases) if p == 2), None)

    small = dsa_tf.strip(gated)
    compile_model(small, steps)
    _, acc_gated = gated.evaluate(test_data, verbose=0)
    _, acc_small = small.evaluate(test_data, verbose=0)
    x_probe = next(iter(test_data))[0]
    max_diff = float(np.max(np.abs(gated(x_probe, training=False).numpy()
                                   - small(x_probe, training=False).numpy())))
    flops_ratio = dsa_tf.count_flops(small) / dsa_tf.count_flops(model)
    params_ratio = dsa_tf.count_params(small) / dsa_tf.count_params(model)

    print(f"\nallocation: {ALLOCATION.value}, budget {budget} of FLOPs")
    if reached is None:
        print("budget NOT reached during training (masks never frozen)")
    elif reached == 0:
        print("budget met from the start (uniform masks frozen before training)")
    else:
        print(f"budget reached in epoch {reached} (first epoch logged with dsa_phase 2)")
    print(f"stripped FLOPs {dsa_tf.count_flops(small):,} / {dsa_tf.count_flops(model):,} "
          f"= {flops_ratio:.4f}")
    print(f"stripped params {dsa_tf.count_params(small):,} / {dsa_tf.count_params(model):,} "
          f"= {params_ratio:.4f}")
    print(f"test accuracy: gated {acc_gated:.4f}, stripped {acc_small:.4f}; "
          f"max |logit difference| on a test batch {max_diff:.2e}")
    print(f"\n{'group':<24} {'channels':>8} {'kept':>5} {'keep ratio':>10} {'FLOPs share':>11}")
    report = dsa_tf.allocation_report(gated)
    for row in report:
        print(f"{row['group']:<24} {row['channels']:>8} {row['kept']:>5} "
              f"{row['keep_ratio']:>10.3f} {row['flops_share']:>11.3f}")
    total = time.perf_counter() - started
    print(f"\nfit {fit_seconds:.0f} s, total {total:.0f} s")
    print(json.dumps({
        "allocation": ALLOCATION.value, "dataset": DATASET.value, "depth": DEPTH.value,
        "budget": budget, "epochs": EPOCHS.value, "train_examples": n_train + n_alpha,
        "seed": seed, "budget_reached_epoch": reached, "flops_ratio": round(flops_ratio, 4),
        "params_ratio": round(params_ratio, 4), "test_acc_gated": round(float(acc_gated), 4),
        "test_acc_stripped": round(float(acc_small), 4), "max_logit_diff": max_diff,
        "kept": {row["group"]: row["kept"] for row in report},
        "fit_seconds": round(fit_seconds, 1), "total_seconds": round(total, 1)}))


if __name__ == "__main__":
    app.run(main)
