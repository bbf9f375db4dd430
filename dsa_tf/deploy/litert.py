"""Running ``.tflite`` models with LiteRT: interpreters, signature inputs and the op list.

Models run in ``ai_edge_litert``'s interpreter (XNNPACK is its default CPU delegate);
``tf.lite.Interpreter`` is used only when ``ai_edge_litert`` cannot be imported. Inputs and
outputs go through the model's default signature, whose keys are the Keras input names and the
output names (``output_0``, ``output_1``... for Keras 3 models), so they never depend on the
order LiteRT gives its tensors.

Example:
    >>> import dsa_tf
    >>> from dsa_tf.deploy import litert
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(16, 16, 3))
    >>> report = dsa_tf.export_tflite(model, "/tmp/dsa_tf_litert_doctest.tflite")
    >>> ops = litert.op_histogram(open(report.path, "rb").read())
    >>> ops["CONV_2D"], ops["FULLY_CONNECTED"]
    (9, 1)
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

FLEX_PREFIX = "Flex"


def interpreter(model: str | bytes, threads: int = 1) -> Any:
    """A LiteRT interpreter with its tensors allocated.

    Args:
        model: the path of a ``.tflite`` file, or its content.
        threads: CPU threads for the interpreter (XNNPACK uses them too).
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a declared dependency
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": model}
    result = Interpreter(**source, num_threads=threads)
    result.allocate_tensors()
    return result


def op_histogram(content: bytes) -> dict[str, int]:
    """How often every operator occurs in a ``.tflite`` model (all subgraphs).

    Builtin operators are named as in the TFLite schema (``CONV_2D``); custom operators by
    their custom code, so select-TF ops appear as ``Flex<TF op>`` (``FlexCumprod``).
    """
    from tensorflow.lite.python import schema_py_generated as schema

    builtin_names = {code: name for name, code in vars(schema.BuiltinOperator).items()
                     if not name.startswith("_")}
    model = schema.Model.GetRootAsModel(content, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            names.append(code.CustomCode().decode())
        else:
            names.append(builtin_names.get(builtin, f"BUILTIN_{builtin}"))
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for o in range(subgraph.OperatorsLength()):
            counts[names[subgraph.Operators(o).OpcodeIndex()]] += 1
    return dict(sorted(counts.items()))


def flex_ops(ops: dict[str, int]) -> list[str]:
    """The select-TF (Flex) operators of an op histogram."""
    return sorted(name for name in ops if name.startswith(FLEX_PREFIX))


def run(runner: Any, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Runs a signature runner on float inputs, quantising and dequantising integer tensors.

    Args:
        runner: ``interpreter.get_signature_runner()``.
        inputs: a batch for every signature input, by name.

    Returns:
        Every signature output by name, as float32.
    """
    feeds = {}
    for name, detail in runner.get_input_details().items():
        feeds[name] = _to_tensor_type(np.asarray(inputs[name]), detail)
    outputs = runner(**feeds)
    details = runner.get_output_details()
    return {name: _to_float(value, details[name]) for name, value in outputs.items()}


def set_random_inputs(interpreter: Any, rng: np.random.Generator) -> None:
    """Gives every input of an interpreter one random example (batch 1) in its own dtype."""
    for detail in interpreter.get_input_details():
        shape = [1 if d < 0 else int(d) for d in detail["shape_signature"]]
        dtype = np.dtype(detail["dtype"])
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            value = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        else:
            value = rng.normal(size=shape).astype(dtype)
        if list(detail["shape"]) != shape:
            interpreter.resize_tensor_input(detail["index"], shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], value)


def _to_tensor_type(value: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if not np.issubdtype(dtype, np.integer):
        return value.astype(dtype)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    quantised = np.round(value / scale + zero_point)
    return np.clip(quantised, info.min, info.max).astype(dtype)


def _to_float(value: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if np.issubdtype(np.dtype(detail["dtype"]), np.integer) and scale:
        return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return value.astype(np.float32)
