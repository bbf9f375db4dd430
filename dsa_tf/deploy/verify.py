"""Checking a ``.tflite`` model against the Keras model it was converted from.

The ``.tflite`` model runs in LiteRT on sample inputs, the Keras model on the same inputs with
``training=False``, and every output is compared through the model's signature (by name, never
by LiteRT's tensor order). The error of an output is ``max |tflite - keras| / max |keras|``:
the largest deviation relative to the output's scale. For classifier-shaped outputs (rank 2,
at least two columns) the share of examples whose arg-max agrees is reported too.

Default tolerances on that relative error, per quantisation mode (:data:`TOLERANCES`), with the
largest errors measured on correct exports (16 random-normal examples; random weights with
randomised BatchNorm statistics; CIFAR ResNet-8/20/56, the small test models, MobileNetV2 at
96x96 and the keras.applications zoo at 128x128 with logits outputs; Keras 3 and tf_keras):

- float32: 1e-4 (measured at most 2.1e-6: conversion only reorders float arithmetic);
- float16 (float16 weights, float32 arithmetic): 0.02 (measured at most 1.0e-3);
- dynamic (int8 weights, activations quantised on the fly): 0.15 (at most 0.063,
  EfficientNetB0);
- int8 (full integer, activations quantised with calibrated ranges): 0.3 (at most 0.20,
  EfficientNetB0 under tf_keras; 0.03 or less for the CIFAR ResNets and the small models).

A broken export, here the file of a model with other weights checked against the Keras model,
measured relative errors from 1.09 to 10.6 and fails every tolerance. Top-1 agreement is
reported but not checked by default: with random weights many logits nearly tie (a correct
int8 ResNet50V2 export agreed on 44% of the examples), so agreement says little there; pass
``min_top1`` to require it for trained classifiers.

Example:
    >>> from dsa_tf.deploy.verify import TOLERANCES
    >>> TOLERANCES["int8"]
    0.3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.deploy import litert

TOLERANCES: dict[str | None, float] = {None: 1e-4, "float16": 0.02, "dynamic": 0.15,
                                       "int8": 0.3}


class ExportVerificationError(AssertionError):
    """A ``.tflite`` model's outputs deviate from its Keras model's beyond the tolerance."""


@dataclasses.dataclass(frozen=True)
class Verification:
    """How closely a ``.tflite`` model reproduces its Keras model.

    Attributes:
        samples: number of examples compared.
        errors: for every output (by Keras output name), ``max |tflite - keras| / max |keras|``.
        top1: for every classifier-shaped output, the share of examples whose arg-max agrees.
        tolerance: the largest relative error allowed.
        min_top1: the smallest top-1 agreement allowed (None: not checked).
    """

    samples: int
    errors: dict[str, float]
    top1: dict[str, float]
    tolerance: float
    min_top1: float | None = None

    @property
    def max_error(self) -> float:
        """The largest relative error over all outputs."""
        return max(self.errors.values())

    @property
    def passed(self) -> bool:
        """Whether every output is within the tolerances."""
        top1_ok = self.min_top1 is None or all(v >= self.min_top1 for v in self.top1.values())
        return self.max_error <= self.tolerance and top1_ok

    def summary(self) -> str:
        """One line: samples, errors, agreement and the verdict."""
        errors = ", ".join(f"{k} {v:.2e}" for k, v in self.errors.items())
        top1 = "".join(f", top-1 {k} {v:.0%}" for k, v in self.top1.items())
        return (f"{'passed' if self.passed else 'FAILED'} on {self.samples} examples: relative "
                f"error {errors} (tolerance {self.tolerance:g}){top1}")


def verify_tflite(model: Any, content: bytes, batches: Sequence[dict[str, np.ndarray]],
                  tolerance: float, min_top1: float | None = None) -> Verification:
    """Runs a ``.tflite`` model and its Keras model on the same inputs and compares them.

    Args:
        model: the functional or Sequential Keras model the file was converted from.
        content: the ``.tflite`` model.
        batches: input batches, each a dict from the name of a model input tensor (the key
            of the file's signature) to an array.
        tolerance: largest relative error allowed (see the module doc).
        min_top1: smallest top-1 agreement allowed for classifier-shaped outputs, or None.

    Returns:
        The :class:`Verification`, which passed.

    Raises:
        ExportVerificationError: an output deviates beyond the tolerances.
        ValueError: the file's signature does not match the model's inputs and outputs.
    """
    runner = litert.interpreter(content).get_signature_runner()
    names = output_names(model)
    keys = _output_keys(runner, names)
    structure = _keras.input_structure(model)
    tflite: dict[str, list] = {n: [] for n in names}
    keras: dict[str, list] = {n: [] for n in names}
    for batch in batches:
        results = litert.run(runner, batch)
        inputs = tf.nest.map_structure(lambda t, b=batch: b[t.name], structure)
        expected = tf.nest.flatten(model(inputs, training=False))
        for name, key, value in zip(names, keys, expected):
            tflite[name].append(results[key])
            keras[name].append(np.asarray(value, dtype=np.float32))
    errors, top1 = {}, {}
    for name in names:
        actual, reference = np.concatenate(tflite[name]), np.concatenate(keras[name])
        if actual.shape != reference.shape:
            raise ValueError(f"Output {name!r} has shape {actual.shape} in the .tflite model "
                             f"but {reference.shape} in the Keras model.")
        scale = max(float(np.abs(reference).max()), 1e-12)
        errors[name] = float(np.abs(actual - reference).max()) / scale
        if reference.ndim == 2 and reference.shape[1] > 1:
            top1[name] = float(np.mean(actual.argmax(1) == reference.argmax(1)))
    result = Verification(int(sum(len(next(iter(b.values()))) for b in batches)), errors, top1,
                          tolerance, min_top1)
    if not result.passed:
        raise ExportVerificationError(
            f"The .tflite model does not reproduce the Keras model {model.name!r}: "
            f"{result.summary()}. If the deviation is expected for this model, pass a larger "
            f"tolerance (or min_top1) to export_tflite.")
    return result


def output_names(model: Any) -> list[str]:
    """The names of a model's outputs in flat order (their layers' names)."""
    names = []
    for tensor in _keras.model_outputs(model):
        history = tensor._keras_history
        names.append((history.operation if hasattr(history, "operation") else history.layer).name)
    return names


def _output_keys(runner: Any, names: list[str]) -> list[str]:
    """The signature output key of every Keras output, in the model's flat output order."""
    keys = set(runner.get_output_details())
    numbered = [f"output_{i}" for i in range(len(names))]
    if keys == set(numbered):
        return numbered
    if keys == set(names) and len(set(names)) == len(names):
        return names
    raise ValueError(f"Cannot match the .tflite outputs {sorted(keys)} to the Keras outputs "
                     f"{names}.")
