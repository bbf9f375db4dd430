"""DSA with default settings on a user's short schedule, against the unpruned network.

The network is not one of the project's reference models: a 3x3 stem convolution (32), one
residual block of 32, max-pooling, the concatenation of a 3x3 convolution (48) and a 1x1
convolution (16), a strided 3x3 convolution (64), global pooling and a Dense head (10), with a
BatchNorm after every convolution. Data: 12,000 Fashion-MNIST training images (a seeded
subset; 10% of them held out as DSA's alpha data), the 10,000 test images. Schedule: batch
128, SGD lr 0.05 momentum 0.9, ``--epochs`` epochs (default 8).

Arms, each for every ``--seeds`` seed, measured side by side in one run:

* ``unpruned``: the network trained on the weight-training split on the same schedule;
* ``unpruned_bn``: the same, then ``reestimate_batchnorm`` on 32 batches of the alpha data
  (what ``DSACallback`` does when fit ends): the reference without the BatchNorm lag;
* ``dsa``: ``prune_to_budget(model, --budget)`` and ``DSACallback(alpha)`` with every other
  argument at its default, then ``strip``;
* ``dsa_no_bn``: the same with ``bn_batches=0`` (no BatchNorm re-estimation when the masks
  freeze or when fit ends), to measure what the re-estimation does.

Per arm and seed it prints the test accuracy (inference mode; for DSA of the stripped model),
the FLOPs ratio of the stripped model (``count_flops``), the epoch the budget was met in and
whether the allocation met it by itself, and per epoch the test accuracy in inference mode
and in training mode (BatchNorm with batch statistics, on the same 2,560 test images, the
moving statistics restored afterwards): the gap between the two is the BatchNorm lag.

Acceptance (issue "DSA on any training schedule"): the budget is met during fit, the stripped
model meets it by count_flops, and its accuracy is within 4 points of the unpruned network.

    .venv/bin/python benchmarks/short_schedule.py --data_dir=../shared/tensorflow_datasets
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf import _keras  # noqa: E402

GAP_BATCHES = 20
BN_BATCHES = 32  # DSACallback's default bn_batches


def build(keras: Any) -> Any:
    """The network described in the module docstring."""
    layers = keras.layers

    def conv_bn(x: Any, filters: int, kernel: int, strides: int = 1) -> Any:
        x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
        return layers.BatchNormalization()(x)

    inputs = keras.Input((28, 28, 1))
    x = layers.ReLU()(conv_bn(inputs, 32, 3))
    y = layers.ReLU()(conv_bn(x, 32, 3))
    x = layers.ReLU()(layers.Add()([x, conv_bn(y, 32, 3)]))
    x = layers.MaxPooling2D()(x)
    x = layers.Concatenate()([layers.ReLU()(conv_bn(x, 48, 3)), layers.ReLU()(conv_bn(x, 16, 1))])
    x = layers.ReLU()(conv_bn(x, 64, 3, strides=2))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x), name="user_cnn")


class ModeGap(_keras.default_keras().callbacks.Callback):
    """Test accuracy per epoch in inference and in training mode on the same batches."""

    def __init__(self, batches: list) -> None:
        super().__init__()
        self.batches = batches
        self.rows: list[tuple[float, float]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        saved = [v.numpy() for v in self.model.non_trainable_variables]
        correct = np.zeros(2)
        total = 0
        for x, y in self.batches:
            for k, training in enumerate((False, True)):
                prediction = np.argmax(np.asarray(self.model(x, training=training)), axis=-1)
                correct[k] += np.sum(prediction == np.asarray(y))
            total += len(y)
        for variable, value in zip(self.model.non_trainable_variables, saved):
            variable.assign(value)
        self.rows.append((correct[0] / total, correct[1] / total))


def run_arm(arm: str, seed: int, splits: Any, args: argparse.Namespace) -> dict:
    keras = _keras.default_keras()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    model = build(keras)
    gap = ModeGap(list(splits.test.take(GAP_BATCHES)))
    callbacks: list = []
    net = model
    if arm.startswith("dsa"):
        net = dsa_tf.prune_to_budget(model, args.budget, seed=seed)
        options = {"bn_batches": 0} if arm == "dsa_no_bn" else {}
        callbacks.append(dsa_tf.DSACallback(splits.alpha, verbose=0, **options))
    net.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    start = time.perf_counter()
    history = net.fit(splits.train, epochs=args.epochs, verbose=0,
                      callbacks=[*callbacks, gap]).history
    seconds = time.perf_counter() - start
    result = {"arm": arm, "seed": seed, "seconds": seconds, "gap": gap.rows}
    final = net
    if arm == "unpruned_bn":
        dsa_tf.reestimate_batchnorm(net, splits.alpha, BN_BATCHES)
    if arm.startswith("dsa"):
        status = dsa_tf.budget_status(net)
        final = dsa_tf.strip(net)
        final.compile(metrics=["accuracy"],
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        result["flops_ratio"] = dsa_tf.count_flops(final) / dsa_tf.count_flops(model)
        result["met_by"] = status["frozen_by"]
        result["met_epoch"] = history["dsa_phase"].index(2.0) + 1 \
            if 2.0 in history["dsa_phase"] else None
        result["admm_iterations"] = status["admm_iterations"]
    result["accuracy"] = float(final.evaluate(splits.test, verbose=0, return_dict=True)
                               ["accuracy"])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--budget", type=float, default=0.4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["unpruned", "dsa", "dsa_no_bn"])
    args = parser.parse_args()
    splits = dsa_tf.data.load("fashion_mnist", data_dir=args.data_dir, batch_size=128,
                              train_examples=12_000, seed=0)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            result = run_arm(arm, seed, splits, args)
            results.append(result)
            extra = "" if not arm.startswith("dsa") else (
                f"  FLOPs {result['flops_ratio']:.3f}  budget met by {result['met_by']} in "
                f"epoch {result['met_epoch']} after {result['admm_iterations']} iterations")
            print(f"{arm:10} seed {seed}: test accuracy {result['accuracy']:.4f}{extra}  "
                  f"({result['seconds']:.0f} s)", flush=True)
            print("    inference / training-mode accuracy per epoch: " + ", ".join(
                f"{a:.2f}/{b:.2f}" for a, b in result["gap"]), flush=True)
    print("\nsummary (mean +- std over seeds)")
    by_arm: dict[str, list[dict]] = {}
    for result in results:
        by_arm.setdefault(result["arm"], []).append(result)
    reference = np.array([r["accuracy"] for r in by_arm.get("unpruned", [])])
    for arm, rows in by_arm.items():
        accuracy = np.array([r["accuracy"] for r in rows])
        spread = accuracy.std(ddof=1) if len(rows) > 1 else 0.0
        line = f"{arm:10} accuracy {accuracy.mean():.4f} +- {spread:.4f}"
        if arm.startswith("dsa") and len(reference) == len(accuracy):
            difference = accuracy - reference
            line += (f", minus unpruned per seed {np.round(difference, 4).tolist()}, FLOPs "
                     f"{[round(r['flops_ratio'], 3) for r in rows]}, met by "
                     f"{[r['met_by'] for r in rows]}")
            verdict = all(r["met_by"] == "allocation" and r["flops_ratio"] <= args.budget
                          for r in rows) and difference.mean() >= -0.04
            line += f"  {'PASS' if verdict else 'FAIL'}"
        print(line)


if __name__ == "__main__":
    main()
