"""Full-integer (int8) TFLite export, with verification, of the keras.applications zoo.

For every keras.applications model of the project's zoo test (ResNet50, ResNet50V2,
MobileNetV2, MobileNetV3Small, EfficientNetB0, DenseNet121, VGG16, Xception; ``weights=None``)
at ``--size`` x ``--size`` inputs, ``dsa_tf.export_tflite(model, quantize="int8")`` converts
the model, runs the .tflite in LiteRT on the first ``--verify`` calibration examples and
compares it with the Keras model; the script prints the float32 weight size (4 bytes per
parameter), the int8 file size, op count, relative error, top-1 agreement and the time of the
whole export (conversion, calibration, verification), and exits non-zero if any export fails.

Random weights make a meaningless check unless two things are done: the models are built with
``classifier_activation=None``, because a softmax over 1000 classes of random features is
nearly uniform (every probability about 0.001, below one int8 step of a [0, 1] output) and its
arg-max is noise; and every BatchNorm gets random statistics and affine parameters (the fresh
ones make each BatchNorm an identity), so that quantisation sees realistic, unequal channel
ranges. The criterion is then the export's relative error, ``max |tflite - keras| / max
|keras|`` over the logits (tolerance :data:`dsa_tf.deploy.verify.TOLERANCES`), which is of order 1
for a wrong model. Calibration and verification inputs are standard normal images.

Run from the repository root (8-16 minutes on 2 busy CPU cores):

    .venv/bin/python benchmarks/int8_zoo.py
    TF_USE_LEGACY_KERAS=1 .venv/bin/python benchmarks/int8_zoo.py --models MobileNetV2 VGG16
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import dsa_tf  # noqa: E402
from dsa_tf import _keras  # noqa: E402

ZOO = ("ResNet50", "ResNet50V2", "MobileNetV2", "MobileNetV3Small", "EfficientNetB0",
       "DenseNet121", "VGG16", "Xception")


def randomize_batchnorms(model: Any, rng: np.random.Generator) -> None:
    """Random BatchNorm statistics and affine parameters (fresh ones make an identity)."""
    for layer in model.layers:
        if type(layer).__name__ != "BatchNormalization":
            continue
        values = []
        for weight in layer.weights:
            name = weight.name.split("/")[-1].split(":")[0]
            shape = tuple(weight.shape)
            if name in ("beta", "moving_mean"):
                values.append(rng.normal(0.0, 0.5, shape))
            else:  # gamma, moving_variance
                values.append(rng.uniform(0.5, 1.5, shape))
        layer.set_weights([v.astype("float32") for v in values])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(ZOO), choices=ZOO)
    parser.add_argument("--size", type=int, default=128, help="input height and width")
    parser.add_argument("--calibration", type=int, default=32,
                        help="calibration examples (batches of 1)")
    parser.add_argument("--verify", type=int, default=16, help="verification examples")
    args = parser.parse_args()

    keras = _keras.default_keras()
    flavour = "Keras 3" if _keras.is_keras3(keras.layers.Layer()) else "tf_keras"
    print(f"{flavour}, {args.size}x{args.size} inputs, {args.calibration} calibration / "
          f"{args.verify} verification examples", flush=True)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(args.calibration, 1, args.size, args.size, 3)).astype("float32")
    print("| model | float32 weights MB | int8 file MB | ops | rel. error | top-1 agree | "
          "export s |")
    print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
    failed = []
    with tempfile.TemporaryDirectory() as directory:
        for name in args.models:
            model = getattr(keras.applications, name)(
                weights=None, input_shape=(args.size, args.size, 3), classifier_activation=None)
            randomize_batchnorms(model, rng)
            start = time.perf_counter()
            try:
                report = dsa_tf.export_tflite(
                    model, os.path.join(directory, f"{name}.tflite"), quantize="int8",
                    representative_data=list(images), verify_samples=args.verify)
            except dsa_tf.ExportVerificationError as error:
                print(f"| {name} | FAILED: {error} |", flush=True)
                failed.append(name)
                continue
            seconds = time.perf_counter() - start
            check = report.verification
            print(f"| {name} | {4 * model.count_params() / 1e6:.1f} | "
                  f"{report.size_bytes / 1e6:.2f} | {report.num_ops} | {check.max_error:.4f} | "
                  f"{min(check.top1.values()):.0%} | {seconds:.0f} |", flush=True)
            keras.backend.clear_session()
    print(f"int8 export with verification: {'FAILED ' + ', '.join(failed) if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
