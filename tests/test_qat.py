"""Quantisation-aware training: tfmot for tf_keras models, a clear refusal for Keras 3."""

import numpy as np
import pytest

import dsa_tf
from dsa_tf import _keras


def stripped_resnet(keras):
    model = dsa_tf.models.cifar_resnet(8, input_shape=(16, 16, 3), keras=keras)
    plan = dsa_tf.analyze(model)
    return dsa_tf.strip(model, {g.name: range(g.channels // 2) for g in plan.prunable})


def test_keras3_models_are_refused(keras):
    if not _keras.is_keras3(keras.layers.Layer()):
        pytest.skip("Keras 3 only; tf_keras models are quantised (test_qat_then_int8_export)")
    with pytest.raises(TypeError, match="TF_USE_LEGACY_KERAS=1") as error:
        dsa_tf.quantize_aware(stripped_resnet(keras))
    assert 'quantize="int8"' in str(error.value)


def test_qat_then_int8_export(keras, tmp_path):
    if _keras.is_keras3(keras.layers.Layer()):
        pytest.skip("tfmot supports only tf_keras (test_keras3_models_are_refused)")
    model = stripped_resnet(keras)
    layers_before = [layer.name for layer in model.layers]
    qat = dsa_tf.quantize_aware(model)
    assert [layer.name for layer in model.layers] == layers_before
    assert any("quant" in layer.name for layer in qat.layers)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 16, 16, 3)).astype("float32")
    y = np.arange(32) % 10
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = qat.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    report = dsa_tf.export_tflite(qat, tmp_path / "qat.tflite", quantize="int8",
                                  representative_data=[x[:16], x[16:]], int8_io=True)
    assert report.verification.passed and report.verification.samples == 16
    assert report.ops["CONV_2D"] == 9 and "DEQUANTIZE" not in report.ops
