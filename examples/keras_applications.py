"""A keras.applications model (MobileNetV2 by default) pruned with DSA on a tfds dataset.

What it shows: dsa_tf on a model it did not define: keras.applications' MobileNetV2 or ResNet50
(inverted residuals, depthwise convolutions, projection shortcuts), started from ImageNet
weights when they can be loaded (they are downloaded by Keras), else from random weights, then
pruned to a FLOPs budget by ``dsa_tf.run.pipeline.run_pruning``: allocation, fine-tuning, strip,
test accuracy, verified TFLite export and LiteRT latency.

Time on 2 CPU cores with the defaults (CIFAR-10 resized to 96x96, 5,000 training images, 4
epochs): 7 minutes for MobileNetV2 from random weights (budget met after 75 ADMM iterations,
59% of the FLOPs, test accuracy 38%, float32 TFLite latency 0.74x, int8 0.85x).
ImageNet-style data (imagenette...) work the same with ``--dataset`` and ``--image_size``.

    python examples/keras_applications.py --model=MobileNetV2 \
        --data_dir=../shared/tensorflow_datasets
"""

from __future__ import annotations

from absl import app, flags

from dsa_tf import _keras
from dsa_tf.run.config import preset
from dsa_tf.run.pipeline import run_pruning

MODEL = flags.DEFINE_enum("model", "MobileNetV2", ["MobileNetV2", "ResNet50"], "The model.")
DATASET = flags.DEFINE_string("dataset", "cifar10", "A tfds image-classification dataset.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 96, "Input side in pixels.")
BUDGET = flags.DEFINE_float("budget", 0.6, "FLOPs budget.")
EPOCHS = flags.DEFINE_integer("epochs", 4, "Epochs in total (one warm-up epoch when the ImageNet "
                              "weights are not available).")
TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 5000, "Training subset (0: all).")
DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir.")
OUT = flags.DEFINE_string("out", None, "Run directory (default runs/<model>_<dataset>).")


def imagenet_weights_available(name: str, size: int) -> bool:
    """True when Keras can load (or download) the model's ImageNet weights."""
    try:
        getattr(_keras.default_keras().applications, name)(
            weights="imagenet", include_top=False, input_shape=(size, size, 3))
    except Exception as error:  # no network, no cached file
        reason = (str(error).splitlines() or [""])[0][:160]
        print(f"ImageNet weights for {name} unavailable ({type(error).__name__}: {reason}); "
              f"training from random weights.")
        return False
    return True


def main(argv: list[str]) -> None:
    del argv
    pretrained = imagenet_weights_available(MODEL.value, IMAGE_SIZE.value)
    config = preset(
        "quick", model=MODEL.value, dataset=DATASET.value, image_size=IMAGE_SIZE.value,
        budget=BUDGET.value, epochs=EPOCHS.value, train_examples=TRAIN_EXAMPLES.value,
        data_dir=DATA_DIR.value, batch_size=64, lr=0.01 if pretrained else 0.05,
        weights="imagenet" if pretrained else None, warmup_epochs=0 if pretrained else None,
        out=OUT.value or f"runs/{MODEL.value}_{DATASET.value.replace('/', '_')}")
    run_pruning(config)


if __name__ == "__main__":
    app.run(main)
