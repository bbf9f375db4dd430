"""TFLite export: conversion in every quantisation mode, verification in LiteRT, Flex refusal,
bad arguments, and latency measurement."""

import os

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import dsa_tf
from dsa_tf import _keras
from dsa_tf.deploy import export as export_module
from dsa_tf.deploy.verify import TOLERANCES, verify_tflite

from masking import randomize
from small_models import multi_io

SHAPE = (16, 16, 3)


def stripped_resnet(seed: int):
    """A CIFAR ResNet-8 with random BatchNorm statistics, half of every group stripped."""
    model = dsa_tf.models.cifar_resnet(8, input_shape=SHAPE, keras=_keras.default_keras())
    randomize(model, np.random.default_rng(seed))
    plan = dsa_tf.analyze(model)
    return dsa_tf.strip(model, {g.name: range(0, g.channels, 2) for g in plan.prunable})


def batches(count: int = 4, size: int = 4, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(size,) + SHAPE).astype("float32") for _ in range(count)]


MODES = [(None, False), ("dynamic", False), ("float16", False), ("int8", False), ("int8", True)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The stripped ResNet-8 exported in every mode, with its weights before the exports."""
    model = stripped_resnet(seed=0)
    weights = [w.numpy().copy() for w in model.weights]
    config = model.get_config()
    directory = tmp_path_factory.mktemp("export")
    reports = {}
    for quantize, int8_io in MODES:
        reports[quantize, int8_io] = dsa_tf.export_tflite(
            model, directory / f"{quantize}_{int8_io}.tflite", quantize=quantize,
            representative_data=batches(), int8_io=int8_io)
    return model, weights, config, reports


@pytest.mark.parametrize("quantize,int8_io", MODES)
def test_round_trip(exported, quantize, int8_io):
    model, _, _, reports = exported
    report = reports[quantize, int8_io]
    assert report.quantize == quantize
    assert os.path.getsize(report.path) == report.size_bytes
    # BatchNorms and ReLUs fold into the convolutions, Dense becomes FULLY_CONNECTED.
    convs = sum(type(layer).__name__ == "Conv2D" for layer in model.layers)
    assert report.ops["CONV_2D"] == convs
    assert report.ops["FULLY_CONNECTED"] == 1
    assert not any(name.startswith("Flex") for name in report.ops)
    if quantize == "int8":  # integer kernels; float only at the inputs and outputs
        assert report.ops.get("QUANTIZE", 0) == report.ops.get("DEQUANTIZE", 0) == 1 - int8_io
    assert report.verification.passed
    assert report.verification.samples == 16
    assert report.verification.max_error <= TOLERANCES[quantize]

    # An independent run of the file: the logits of four examples match the Keras model.
    x = batches(1, 4, seed=5)[0]
    interpreter = Interpreter(model_path=report.path)
    runner = interpreter.get_signature_runner()
    (key, detail), = runner.get_input_details().items()
    (out_key, out_detail), = runner.get_output_details().items()
    expected = np.asarray(model(x, training=False))
    if int8_io:
        assert detail["dtype"] == np.int8 and out_detail["dtype"] == np.int8
        scale, zero = detail["quantization"]
        x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        scale, zero = out_detail["quantization"]
        actual = (runner(**{key: x})[out_key].astype(np.float32) - zero) * scale
    else:
        assert detail["dtype"] == np.float32
        actual = runner(**{key: x})[out_key]
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error <= {None: 1e-5, "float16": 1e-2}.get(quantize, 0.1)
    assert (actual.argmax(1) == expected.argmax(1)).mean() >= 0.75


def test_quantised_files_are_smaller(exported):
    reports = exported[3]
    size = {key: r.size_bytes for key, r in reports.items()}
    float32 = size[None, False]  # about 80% of it are the float32 weights
    assert 0.5 * float32 < size["float16", False] < 0.7 * float32
    assert size["int8", False] < 0.45 * float32
    assert size["dynamic", False] < 0.45 * float32


def test_model_is_not_mutated(exported):
    model, weights, config, _ = exported
    assert model.get_config() == config
    for before, after in zip(weights, model.weights):
        np.testing.assert_array_equal(before, after.numpy())


def test_report_dict_and_summary(exported):
    report = exported[3]["int8", True]
    data = report.to_dict()
    assert data["num_ops"] == sum(report.ops.values()) == report.num_ops
    assert data["verification"]["errors"] == report.verification.errors
    assert data["verification"]["passed"] is True
    assert "int8" in report.summary() and "passed" in report.summary()


def test_tolerances_are_enforced(exported):
    model, _, _, reports = exported
    report = reports["int8", False]
    content = open(report.path, "rb").read()
    data = [{model.inputs[0].name: x} for x in batches(2, 4, seed=6)]
    error = verify_tflite(model, content, data, tolerance=1.0).max_error
    assert 0 < error <= TOLERANCES["int8"]
    with pytest.raises(dsa_tf.ExportVerificationError, match="FAILED on 8 examples"):
        verify_tflite(model, content, data, tolerance=error / 2)
    with pytest.raises(dsa_tf.ExportVerificationError, match="top-1"):
        verify_tflite(model, content, data, tolerance=1.0, min_top1=1.01)


def two_heads(keras):
    """Two inputs and two outputs of equal shapes, whose names sort against their order, so
    that any mix-up of inputs or outputs changes the results."""
    layers = keras.layers
    second = keras.Input((6,), name="z_second")
    first = keras.Input((6,), name="a_first")
    x = layers.Dense(5, activation="relu")(layers.Concatenate()([second, first * 3.0]))
    return keras.Model([second, first], [layers.Dense(4, name="z_head")(x),
                                         layers.Dense(4, name="a_head")(x)])


def test_inputs_and_outputs_are_matched_by_name(keras, tmp_path):
    model = two_heads(keras)
    report = dsa_tf.export_tflite(model, tmp_path / "heads.tflite")
    assert report.verification.max_error <= 1e-5
    assert set(report.verification.errors) == {"z_head", "a_head"}


def test_multi_output_model_int8(keras, tmp_path):
    model = multi_io(keras)
    randomize(model, np.random.default_rng(3))
    rng = np.random.default_rng(4)
    data = [{"image": rng.normal(size=(4, 8, 8, 3)), "extra": rng.normal(size=(4, 8, 8, 2))}
            for _ in range(4)]
    report = dsa_tf.export_tflite(model, tmp_path / "multi.tflite", quantize="int8",
                                  representative_data=tf.data.Dataset.from_tensor_slices(
                                      {k: np.stack([d[k] for d in data]) for k in data[0]}))
    assert set(report.verification.errors) == {"head1", "head2"}
    assert report.verification.samples == 16  # the dataset yields single examples
    assert set(report.verification.top1) == {"head1"}


def test_broken_export_raises(monkeypatch, tmp_path):
    model, other = stripped_resnet(seed=0), stripped_resnet(seed=1)
    convert = export_module.convert
    monkeypatch.setattr(export_module, "convert", lambda _, *args: convert(other, *args))
    for quantize in (None, "int8"):
        path = tmp_path / f"{quantize}.tflite"
        with pytest.raises(dsa_tf.ExportVerificationError, match="relative error"):
            dsa_tf.export_tflite(model, path, quantize=quantize, representative_data=batches())
        assert not path.exists()


def cumprod_model(keras):
    inputs = keras.Input((4, 4), name="x")
    x = keras.layers.Dense(4)(inputs)
    return keras.Model(inputs, keras.layers.Lambda(lambda t: tf.math.cumprod(t, axis=-1))(x))


def test_flex_ops_are_refused_unless_allowed(keras, tmp_path):
    model = cumprod_model(keras)
    path = tmp_path / "flex.tflite"
    with pytest.raises(ValueError, match="FlexCumprod"):
        dsa_tf.export_tflite(model, path)
    assert not path.exists()
    report = dsa_tf.export_tflite(model, path, allow_flex=True)
    assert report.ops["FlexCumprod"] == 1
    assert report.verification is None
    assert path.exists()


def test_bad_arguments(keras, tmp_path):
    model = two_heads(keras)
    with pytest.raises(ValueError, match="representative_data"):
        dsa_tf.export_tflite(model, tmp_path / "m.tflite", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        dsa_tf.export_tflite(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="int8_io"):
        dsa_tf.export_tflite(model, tmp_path / "m.tflite", int8_io=True)
    with pytest.raises(TypeError, match="needs a Keras model"):
        dsa_tf.export_tflite(lambda x: x, tmp_path / "m.tflite")
    with pytest.raises(TypeError, match="functional or built Sequential"):
        dsa_tf.export_tflite(keras.Sequential([keras.layers.Dense(2)]), tmp_path / "m.tflite")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dsa_tf.export_tflite(model, tmp_path / "missing" / "m.tflite")
    with pytest.raises(IsADirectoryError):
        dsa_tf.export_tflite(model, tmp_path)
    with pytest.raises(ValueError, match="the model's inputs are"):
        dsa_tf.export_tflite(model, tmp_path / "m.tflite",
                             representative_data=[{"a_first": np.zeros((1, 6))}])
    image = keras.Input((None, None, 3))
    variable = keras.Model(image, keras.layers.Conv2D(2, 3)(image))
    with pytest.raises(ValueError, match="unknown size"):
        dsa_tf.export_tflite(variable, tmp_path / "m.tflite")
    assert not os.listdir(tmp_path)


def test_benchmark_tflite(exported, tmp_path):
    report = exported[3][None, False]
    latency = dsa_tf.benchmark_tflite(report.path, rounds=5, invokes=10, warmup=3)
    assert 0 < latency.min_ms <= latency.p10_ms <= latency.median_ms <= latency.p90_ms
    assert latency.p90_ms <= latency.max_ms < 1000
    assert latency.size_bytes == report.size_bytes and latency.rounds == 5
    assert latency.to_dict()["median_ms"] == latency.median_ms
    assert "median" in latency.summary()


def test_compare_latency_of_a_much_smaller_model(keras, tmp_path):
    full = dsa_tf.models.cifar_resnet(8, keras=keras)
    plan = dsa_tf.analyze(full)
    small = dsa_tf.strip(full, {g.name: range(g.channels // 8) for g in plan.prunable})
    paths = [dsa_tf.export_tflite(m, tmp_path / f"{i}.tflite").path
             for i, m in enumerate([full, small])]
    reports = dsa_tf.compare_tflite_latency(paths, rounds=5, invokes=10, warmup=3)
    assert [r.path for r in reports] == [str(p) for p in paths]
    assert reports[1].median_ms < reports[0].median_ms
    assert reports[1].size_bytes < reports[0].size_bytes / 10
