"""One DSA allocation in a fresh process, for tests/test_distribute.py; prints a JSON report.

    python tests/distributed_fit.py mirrored   # a single-device run, then MirroredStrategy
                                               # over two logical CPUs, in one process
    python tests/distributed_fit.py worker     # one worker of MultiWorkerMirroredStrategy
                                               # (TF_CONFIG names the cluster and the task)
    python tests/distributed_fit.py schedule   # DSACallback's defaults on a 3-epoch fit
                                               # under MirroredStrategy

Devices are configured before TensorFlow initialises them, which is why this runs in its own
process. The report holds, per run: the phase of every epoch, the hard and stripped FLOPs
ratios, the ADMM iteration at which the masks froze, every gate variable's value on every
local replica, and, for every weight step of the allocation, every local replica's masks.
The mirrored report adds the keep-ratio gradients of one batch computed on one device and
split over the two replicas, and the error for a batch smaller than the replica count.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BUDGET = 0.8
SEED = 0


def _data(tf: Any, keras: Any) -> tuple[Any, Any]:
    """256 training and 64 held-out 16x16 images with a learnable 4-class label."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(320, 16, 16, 3)).astype("float32")
    y = (x[:, :8, :8, 0].mean(axis=(1, 2)) > 0).astype("int64") + 2 * (
        x[:, 8:, 8:, 1].mean(axis=(1, 2)) > 0)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    train = tf.data.Dataset.from_tensor_slices((x[:256], y[:256])).batch(32).with_options(options)
    alpha = tf.data.Dataset.from_tensor_slices((x[256:], y[256:])).batch(32)
    return train, alpha


def _local_values(strategy: Any, variable: Any) -> list:
    from dsa_tf import _keras

    return [v.numpy().tolist()
            for v in strategy.experimental_local_results(_keras.tf_variable(variable))]


def run(strategy: Any) -> dict:
    """Prunes a CIFAR ResNet-8 to BUDGET of its FLOPs under ``strategy`` and reports."""
    import tensorflow as tf

    import dsa_tf
    from dsa_tf.allocation.gated_model import gates_of
    from dsa_tf.allocation.gates import FROZEN, STOCHASTIC

    keras = tf.keras
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    train, alpha = _data(tf, keras)
    with strategy.scope():
        model = dsa_tf.models.cifar_resnet(8, num_classes=4, input_shape=(16, 16, 3))
        gated = dsa_tf.prune_to_budget(model, BUDGET, seed=SEED)
        gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    gates = gates_of(gated)
    masks_per_step = []

    class Record(keras.callbacks.Callback):
        """Every local replica's masks at each allocation step; stops the epoch after the
        masks froze."""

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if int(gates[0].step.numpy()) and int(gates[0].mode.numpy()) == STOCHASTIC:
                replicas = zip(*[_local_values(strategy, g.mask) for g in gates])
                masks_per_step.append(["".join(str(int(v)) for m in masks for v in m)
                                       for masks in replicas])

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if int(gates[0].mode.numpy()) == FROZEN:
                self.model.stop_training = True

    callback = dsa_tf.DSACallback(alpha, warmup_epochs=1, update_every=1, verbose=0)
    history = gated.fit(train, epochs=30, callbacks=[callback, Record()], verbose=0).history
    small = dsa_tf.strip(gated)
    x = next(iter(train))[0]
    return {
        "budget": BUDGET,
        "phases": history["dsa_phase"],
        "flops_hard": history["dsa_flops_hard"][-1],
        "flops_stripped": dsa_tf.count_flops(small) / dsa_tf.count_flops(model),
        "strip_error": float(tf.reduce_max(tf.abs(small(x) - gated(x, training=False)))),
        "admm_steps": int(gates[0].admm_step.numpy()),
        "replicas": strategy.num_replicas_in_sync,
        "gates": {f"{g.name}/{w.name.split('/')[-1].split(':')[0]}": _local_values(strategy, w)
                  for g in gates for w in g.weights},
        "masks_per_step": masks_per_step,
    }


def theta_gradients(strategy: Any, weights: list | None = None,
                    examples: int = 7) -> tuple[list, list]:
    """dL/dTheta of a BatchNorm-free gated net on one batch, by default of 7 examples, so that
    the split over two replicas (3 + 4 examples) must give the single-device gradient.
    Returns the gradients and the net's weights (pass them back to use the same weights)."""
    import numpy as np
    import tensorflow as tf

    import dsa_tf
    from dsa_tf.allocation.keep_gradients import keep_ratio_gradients

    keras = tf.keras
    layers = keras.layers
    with strategy.scope():
        inputs = keras.Input((8, 8, 3))
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = layers.Conv2D(8, 3, padding="same", activation="relu")(x)
        outputs = layers.Dense(4)(layers.GlobalAveragePooling2D()(x))
        gated = dsa_tf.prune_to_budget(keras.Model(inputs, outputs), 0.5, seed=SEED)
    if weights is not None:
        gated.set_weights(weights)
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(examples, 8, 8, 3)).astype("float32")
    y = np.arange(examples) % 4
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = keep_ratio_gradients(gated, loss, x, y)
    return [float(g) for g in grads], gated.get_weights()


def default_schedules(strategy: Any) -> list[dict]:
    """A fit of 3 epochs of 8 global steps at budget 0.3 under ``strategy`` with
    DSACallback's defaults: the phases, whether the allocation was completed by the callback,
    and the stripped FLOPs ratio. (Fits of 3, 8 and 30 epochs at budgets 0.3 and 0.6 run on
    one device in tests/test_schedule.py; on two replicas each ADMM iteration costs a
    cross-replica call, so the shortest fit, the one that runs 25 ADMM iterations per update,
    each on its own mask sample, at the most demanding budget, stands for them.)"""
    import tensorflow as tf

    import dsa_tf

    keras = tf.keras
    train, alpha = _data(tf, keras)
    runs = []
    for epochs, budget in ((3, 0.3),):
        keras.backend.clear_session()
        keras.utils.set_random_seed(SEED)
        with strategy.scope():
            model = dsa_tf.models.cifar_resnet(8, num_classes=4, input_shape=(16, 16, 3))
            gated = dsa_tf.prune_to_budget(model, budget, seed=SEED)
            gated.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = gated.fit(train, epochs=epochs, verbose=0,
                            callbacks=[dsa_tf.DSACallback(alpha, verbose=0)]).history
        runs.append({"epochs": epochs, "budget": budget, "phases": history["dsa_phase"],
                     "completed": history["dsa_completed"][-1],
                     "flops_stripped": dsa_tf.count_flops(dsa_tf.strip(gated))
                     / dsa_tf.count_flops(model)})
    return runs


def main(mode: str) -> None:
    """Runs ``mode`` ("mirrored" or "worker") and prints the JSON report as the last line."""
    import tensorflow as tf

    if mode in ("mirrored", "schedule"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if mode == "schedule":
        report = {"runs": default_schedules(mirrored)}
    elif mode == "mirrored":
        report = {"single": run(tf.distribute.get_strategy()), "mirrored": run(mirrored)}
        single_grads, weights = theta_gradients(tf.distribute.get_strategy())
        report["theta_gradients"] = {"single": single_grads,
                                     "mirrored": theta_gradients(mirrored, weights)[0]}
        try:
            theta_gradients(mirrored, weights, examples=1)
            report["one_example_batch"] = "accepted"
        except ValueError as error:
            report["one_example_batch"] = str(error)
    elif mode == "worker":
        report = {"worker": run(tf.distribute.MultiWorkerMirroredStrategy())}
    else:
        raise SystemExit(f"unknown mode {mode!r}; use 'mirrored', 'schedule' or 'worker'")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
