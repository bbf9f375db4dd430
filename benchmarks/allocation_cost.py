"""What DSA's allocation costs a user in time: its first update (tracing) and every later one.

With the default loss differences, each ADMM iteration evaluates the batch loss twice per
group (:mod:`dsa_tf.allocation.keep_differences`), so its cost grows with the number of groups;
the first iteration also traces the update. For each model this script fits, side by side on
the same synthetic batches (batch 64, 10 classes): the plain model, and the model gated at
``--budget`` of its FLOPs with ``DSACallback(alpha_data, warmup_epochs=0, update_every=1,
finish_by=None)``, so that every step of the fit runs one ADMM iteration. A callback listed
last stamps the end of every batch. Reported per model: the number of groups; the first step
of each fit (tracing the train step, and for DSA the mask resampling and the ADMM update); the
median of the later steps; and DSA's cost over the plain model, first step and later steps, in
plain training steps.

Models: the CIFAR ResNet-20 and ResNet-56 (``dsa_tf.models.cifar_resnet``, 32x32) and
``keras.applications.MobileNetV2(alpha=0.5)`` at 32x32 (random weights).

    .venv/bin/python benchmarks/allocation_cost.py
    .venv/bin/python benchmarks/allocation_cost.py --models mobilenetv2 --steps 20
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dsa_tf  # noqa: E402

BATCH = 64


class Stamps(tf.keras.callbacks.Callback):
    """The wall time at the end of every batch (fit's start first)."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.times = [time.perf_counter()]

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.times.append(time.perf_counter())


MODELS = ("resnet20", "resnet56", "mobilenetv2")


def build(name: str) -> tf.keras.Model:
    if name.startswith("resnet"):
        return dsa_tf.models.cifar_resnet(int(name[len("resnet"):]))
    return tf.keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.5, weights=None,
                                             classes=10, classifier_activation=None)


def step_times(model: tf.keras.Model, data: tf.data.Dataset,
               callbacks: list) -> tuple[float, float]:
    """The first step's time and the median of the later ones, in seconds."""
    model.compile(tf.keras.optimizers.SGD(0.01, momentum=0.9),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    stamps = Stamps()
    model.fit(data, epochs=1, verbose=0, callbacks=[*callbacks, stamps])
    steps = np.diff(stamps.times)
    return float(steps[0]), float(np.median(steps[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=12, help="Steps per fit.")
    parser.add_argument("--budget", type=float, default=0.5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((BATCH * args.steps, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, BATCH * args.steps)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()
    alpha = data.take(4)
    print("| model | groups | plain: first step (s) | later steps (s) | DSA: first step (s) "
          "| later steps (s) | DSA's extra, first step (plain steps) | later steps (plain "
          "steps) |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.models:
        tf.keras.utils.set_random_seed(0)
        plain_first, plain_later = step_times(build(name), data, [])
        tf.keras.utils.set_random_seed(0)
        gated = dsa_tf.prune_to_budget(build(name), args.budget)
        callback = dsa_tf.DSACallback(alpha, warmup_epochs=0, update_every=1, finish_by=None,
                                      verbose=0)
        dsa_first, dsa_later = step_times(gated, data, [callback])
        iterations = dsa_tf.budget_status(gated)["admm_iterations"]
        assert iterations == args.steps, f"{iterations} ADMM iterations in {args.steps} steps"
        print(f"| {name} | {len(dsa_tf.keep_ratios(gated))} | {plain_first:.1f} | "
              f"{plain_later:.3f} | {dsa_first:.1f} | {dsa_later:.3f} | "
              f"{(dsa_first - plain_first) / plain_later:.0f} | "
              f"{(dsa_later - plain_later) / plain_later:.1f} |", flush=True)


if __name__ == "__main__":
    main()
