"""Quickstart: the five-line dsa_tf API on a small ResNet and Fashion-MNIST.

What it shows: wrap a Keras model with ``dsa_tf.prune_to_budget``, train it with an ordinary
``model.fit`` and ``dsa_tf.DSACallback`` (one warm-up epoch, the allocation that learns how many
channels every group keeps under a 50% FLOPs budget, then fine-tuning with frozen masks),
``dsa_tf.strip`` it into a genuinely smaller plain Keras model, and export that to an int8
TFLite file verified against Keras. It prints the FLOPs ratio, the test accuracy and the file.

Data: Fashion-MNIST from tensorflow-datasets (``--data_dir``, else ``$TFDS_DATA_DIR``, else
tfds' default), 10,000 training images (10% of them held out for the keep-ratio steps).
Time: about 2 minutes on 2 CPU cores.

    python examples/quickstart.py --data_dir=../shared/tensorflow_datasets
"""

from __future__ import annotations

import tensorflow as tf
from absl import app, flags

import dsa_tf

DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")
OUT = flags.DEFINE_string("out", "/tmp/dsa_tf_quickstart.tflite", "The int8 TFLite file.")


def main(argv: list[str]) -> None:
    del argv
    tf.keras.utils.set_random_seed(0)
    splits = dsa_tf.data.load("fashion_mnist", data_dir=DATA_DIR.value, train_examples=10_000)
    model = dsa_tf.models.cifar_resnet(8, splits.num_classes, splits.input_shape)

    # The five lines: gate, train with DSA, strip, export.
    gated = dsa_tf.prune_to_budget(model, budget=0.5)
    learning_rate = tf.keras.optimizers.schedules.CosineDecay(0.05, 5 * splits.steps_per_epoch)
    gated.compile(tf.keras.optimizers.SGD(learning_rate, momentum=0.9),
                  tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    gated.fit(splits.train, epochs=5, callbacks=[
        dsa_tf.DSACallback(splits.alpha)])
    small = dsa_tf.strip(gated)
    report = dsa_tf.export_tflite(small, OUT.value, quantize="int8",
                                  representative_data=splits.train.take(4))

    small.compile(metrics=["accuracy"], loss=gated.loss)
    accuracy = small.evaluate(splits.test, verbose=0, return_dict=True)["accuracy"]
    ratio = dsa_tf.count_flops(small) / dsa_tf.count_flops(model)
    print(f"stripped model: {ratio:.1%} of the FLOPs, test accuracy {accuracy:.4f}")
    print(report.summary())


if __name__ == "__main__":
    app.run(main)
