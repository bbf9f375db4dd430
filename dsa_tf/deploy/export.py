"""TFLite export of a (stripped) Keras model, verified in LiteRT before it is returned.

Conversion goes through ``tf.lite.TFLiteConverter.from_keras_model`` (Keras 3 and tf_keras).
Select-TF ("Flex") operators, which most edge runtimes cannot run, are refused unless
``allow_flex=True``; every other export is run in LiteRT on sample inputs and compared with the
Keras model (:mod:`dsa_tf.deploy.verify`), and a deviation beyond the mode's tolerance raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.deploy import litert
from dsa_tf.deploy.verify import TOLERANCES, Verification, verify_tflite

QUANTIZE_MODES = (None, "dynamic", "float16", "int8")


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What :func:`export_tflite` wrote.

    Attributes:
        path: the ``.tflite`` file.
        size_bytes: its size.
        ops: how often each operator occurs in it (``{"CONV_2D": 9, ...}``).
        quantize: the quantisation mode (None for float32).
        verification: the comparison with the Keras model; None only for a model with Flex
            operators (``allow_flex=True``), which the LiteRT runtime cannot run.
    """

    path: str
    size_bytes: int
    ops: dict[str, int]
    quantize: str | None
    verification: Verification | None

    @property
    def num_ops(self) -> int:
        """The number of operators in the model."""
        return sum(self.ops.values())

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable values."""
        result = dataclasses.asdict(self)
        result["num_ops"] = self.num_ops
        if self.verification is not None:
            result["verification"].update(max_error=self.verification.max_error,
                                          passed=self.verification.passed)
        return result

    def summary(self) -> str:
        """A few lines for humans."""
        check = self.verification.summary() if self.verification else "not run (Flex ops)"
        return (f"{self.path}: {self.size_bytes / 1024:.1f} KiB, "
                f"{self.quantize or 'float32'}, {self.num_ops} ops\n  verification {check}")


def export_tflite(model: Any, path: str | os.PathLike, *, quantize: str | None = None,
                  representative_data: Any = None, int8_io: bool = False,
                  allow_flex: bool = False, calibration_batches: int = 100,
                  verify_samples: int = 16, tolerance: float | None = None,
                  min_top1: float | None = None, seed: int = 0) -> ExportReport:
    """Converts a Keras model to a ``.tflite`` file and checks it in LiteRT.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras); it is not changed.
        path: where to write the ``.tflite`` file (its directory must exist).
        quantize: None (float32), ``"dynamic"`` (int8 weights, float activations),
            ``"float16"`` (float16 weights) or ``"int8"`` (full integer: weights and
            activations; needs ``representative_data``).
        representative_data: input batches: a ``tf.data.Dataset`` or any iterable of batches,
            each an array (one input), a list in the model's input order or a dict by input
            name; ``(inputs, labels)`` pairs are accepted. The first ``calibration_batches``
            calibrate ``"int8"``, and the first ``verify_samples`` examples verify the export.
        int8_io: with ``"int8"``, make the model's inputs and outputs int8 as well (they stay
            float32 otherwise, with quantise/dequantise ops inside the model).
        allow_flex: accept select-TF ("Flex") operators instead of raising.
        calibration_batches: how many batches of ``representative_data`` to read.
        verify_samples: how many examples to verify on; without ``representative_data``
            they are drawn from a standard normal distribution with ``seed``.
        tolerance: largest allowed ``max |tflite - keras| / max |keras|`` per output;
            defaults to :data:`dsa_tf.deploy.verify.TOLERANCES` for the mode.
        min_top1: smallest allowed top-1 agreement of classifier outputs (None: not checked).
        seed: seed of the random verification inputs.

    Returns:
        An :class:`ExportReport`.

    Raises:
        ValueError: an unknown ``quantize`` mode, ``"int8"`` without ``representative_data``,
            ``int8_io`` without ``"int8"``, Flex operators without ``allow_flex``, input
            batches that do not fit the model, or inputs of unknown size without
            ``representative_data``.
        TypeError: ``model`` is not a functional or Sequential Keras model.
        FileNotFoundError, IsADirectoryError, PermissionError: ``path`` cannot be written.
        dsa_tf.ExportVerificationError: the converted model does not reproduce the Keras model
            (nothing is written then).

    Example:
        >>> import dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(16, 16, 3))
        >>> report = dsa_tf.export_tflite(model, "/tmp/dsa_tf_export_doctest.tflite")
        >>> report.verification.passed, report.ops["CONV_2D"]
        (True, 9)
    """
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}.")
    if quantize == "int8" and representative_data is None:
        raise ValueError('quantize="int8" needs representative_data: input batches (a '
                         "tf.data.Dataset or an iterable of arrays) that calibrate the ranges "
                         "of the activations, typically 100 or more training examples.")
    if int8_io and quantize != "int8":
        raise ValueError(f'int8_io=True needs quantize="int8", got quantize={quantize!r}.')
    _check_model(model)
    path = os.fspath(path)
    _check_writable(path)
    inputs = _keras.model_inputs(model)
    if representative_data is None:
        unknown = [_keras.input_name(t) for t in inputs if None in _keras.shape_of(t)[1:]]
        if unknown:
            raise ValueError(f"Inputs {unknown} have dimensions of unknown size; pass "
                             f"representative_data to verify the export on real shapes.")
        rng = np.random.default_rng(seed)
        batches = [{t.name: rng.normal(size=(verify_samples,) + _keras.shape_of(t)[1:])
                    .astype("float32") for t in inputs}]
    else:
        batches = [_as_inputs(element, inputs)
                   for element in itertools.islice(_elements(representative_data),
                                                   calibration_batches)]
        if not batches:
            raise ValueError("representative_data yielded no batches.")

    content = convert(model, quantize, batches, int8_io)
    ops = litert.op_histogram(content)
    flex = litert.flex_ops(ops)
    if flex and not allow_flex:
        raise ValueError(f"Model {model.name!r} needs select-TF (Flex) operators, which need "
                         f"the Flex delegate at run time: {', '.join(flex)}. Replace the layers "
                         f"computing them, or pass allow_flex=True.")
    verification = None
    if not flex:
        verification = verify_tflite(
            model, content, _first_examples(batches, verify_samples),
            TOLERANCES[quantize] if tolerance is None else tolerance, min_top1)
    with open(path, "wb") as file:
        file.write(content)
    return ExportReport(path, len(content), ops, quantize, verification)


def _check_model(model: Any) -> None:
    try:
        _keras.is_keras3(model)
    except TypeError:
        raise TypeError(f"export_tflite needs a Keras model, got {type(model).__name__}.") \
            from None
    if not isinstance(model, _keras.keras_of(model).Model) or not _keras.is_functional(model):
        raise TypeError(f"export_tflite needs a functional or built Sequential Keras model; "
                        f"{getattr(model, 'name', model)!r} is a {type(model).__name__}.")


def _check_writable(path: str) -> None:
    if os.path.isdir(path):
        raise IsADirectoryError(f"Cannot write the .tflite model to {path!r}: a directory.")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"Cannot write the .tflite model to {path!r}: directory "
                                f"{directory!r} does not exist.")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"Cannot write the .tflite model to {path!r}: directory "
                              f"{directory!r} is not writable.")


def _elements(data: Any) -> Iterable:
    if isinstance(data, tf.data.Dataset):
        return data.as_numpy_iterator()
    return iter(data)


def _as_inputs(element: Any, inputs: list) -> dict[str, np.ndarray]:
    """One batch of ``representative_data`` as a dict from input tensor name (the signature
    key of the converted model) to a float32 array."""
    names = [_keras.input_name(t) for t in inputs]
    if isinstance(element, tuple) and len(element) in (2, 3) and (
            len(inputs) == 1 or isinstance(element[0], (list, tuple, Mapping))):
        element = element[0]  # (inputs, labels[, weights])
    if isinstance(element, Mapping):
        try:
            values = [element[n] if n in element else element[t.name]
                      for n, t in zip(names, inputs)]
        except KeyError:
            raise ValueError(f"A representative_data batch has the keys {sorted(element)}; "
                             f"the model's inputs are {names}.") from None
    elif isinstance(element, (list, tuple)):
        values = list(element)
    else:
        values = [element]
    if len(values) != len(inputs):
        raise ValueError(f"A representative_data batch has {len(values)} inputs; the model "
                         f"has {len(inputs)}: {names}.")
    batch = {}
    for t, value in zip(inputs, values):
        value = np.asarray(value, dtype=np.float32)
        shape = _keras.shape_of(t)
        if value.ndim == len(shape) - 1:
            value = value[None]  # a single example
        if value.ndim != len(shape) or any(
                d is not None and d != v for d, v in zip(shape[1:], value.shape[1:])):
            raise ValueError(f"A representative_data batch for input {_keras.input_name(t)!r} "
                             f"has shape {value.shape}; the model expects {shape}.")
        batch[t.name] = value
    return batch


def _first_examples(batches: list[dict[str, np.ndarray]],
                    count: int) -> list[dict[str, np.ndarray]]:
    result, left = [], count
    for batch in batches:
        if left <= 0:
            break
        result.append({n: v[:left] for n, v in batch.items()})
        left -= len(next(iter(batch.values())))
    return result


def convert(model: Any, quantize: str | None, batches: list[dict[str, np.ndarray]],
            int8_io: bool = False) -> bytes:
    """The ``.tflite`` content of ``model``, unverified (``batches`` calibrate ``"int8"``);
    :func:`export_tflite` converts with it and then verifies."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        converter.representative_dataset = lambda: iter(batches)
        builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    # Flex ops are allowed here and refused afterwards, so that the error can name them all.
    converter.target_spec.supported_ops = [builtins, tf.lite.OpsSet.SELECT_TF_OPS]
    with contextlib.redirect_stdout(io.StringIO()):  # Keras 3 prints the traced signature
        return converter.convert()
