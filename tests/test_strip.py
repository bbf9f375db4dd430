"""Physical stripping: parity with the masked original, exact resource prediction."""

import numpy as np
import pytest

import dsa_tf

from masking import check_strip, random_keep
from small_models import (
    bare_ops,
    conv1d,
    grouped_depthwise,
    multi_io,
    nested_backbone,
    sequential,
    unet,
)


@pytest.mark.parametrize("depth", [20, 56])
def test_cifar_resnet(keras, depth):
    check_strip(dsa_tf.models.cifar_resnet(depth, keras=keras), seed=depth)


@pytest.mark.parametrize("build", [unet, conv1d, sequential, nested_backbone, multi_io, bare_ops,
                                   grouped_depthwise])
def test_small_models(keras, build):
    stripped = check_strip(build(keras))
    assert dsa_tf.count_flops(stripped) < dsa_tf.count_flops(build(keras))


def test_stripped_model_is_plain_keras_and_round_trips(keras, tmp_path):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    stripped = check_strip(model)
    assert all(type(layer).__module__.startswith(("keras.", "tf_keras."))
               for layer in stripped.layers)
    path = str(tmp_path / "small.keras")
    stripped.save(path)
    loaded = keras.models.load_model(path)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x), stripped(x), rtol=1e-6, atol=1e-6)


def test_original_model_is_not_mutated(keras):
    model = nested_backbone(keras)
    before = [w.numpy().copy() for w in model.weights]
    nodes = [len(layer._inbound_nodes) for layer in model.layers]
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    out_before = np.asarray(model(x))
    plan = dsa_tf.analyze(model)
    dsa_tf.strip(model, random_keep(plan, np.random.default_rng(0)))
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
    assert nodes == [len(layer._inbound_nodes) for layer in model.layers]
    np.testing.assert_array_equal(np.asarray(model(x)), out_before)


def test_keeping_everything_reproduces_the_model(keras):
    model = unet(keras)
    plan = dsa_tf.analyze(model)
    stripped = dsa_tf.strip(model, {g.name: range(g.channels) for g in plan.prunable})
    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(stripped(x), model(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dsa_tf.masked_call(model, {}, x)[0], model(x), atol=1e-6)


@pytest.mark.parametrize("keep, message", [
    ({"nope": [0]}, "No channel group 'nope'"),
    ({"stage1_block1_1_conv": []}, "empty"),
    ({"stage1_block1_1_conv": [0, 16]}, r"outside \[0, 16\)"),
    ({"stage1_block1_1_conv": [-1]}, "outside"),
    ({"stage1_block1_1_conv": [1, 1]}, "repeats"),
    ({"logits": [0]}, "cannot be pruned: reaches a model output"),
])
def test_invalid_keep_is_refused(keras, keep, message):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    names = [g.name for g in dsa_tf.analyze(model).groups]
    assert "stage1_block1_1_conv" in names and "logits" in names
    with pytest.raises(ValueError, match=message):
        dsa_tf.strip(model, keep)


def test_strip_without_keep_explains_itself(keras):
    with pytest.raises(ValueError, match="needs keep="):
        dsa_tf.strip(dsa_tf.models.cifar_resnet(20, keras=keras))


def test_depthwise_grouped_conv_passes_channels_and_resizes_groups(keras):
    model = grouped_depthwise(keras)
    plan = dsa_tf.analyze(model)
    stem = plan.group("stem")
    assert {"dw", "pw", "add", "dw_x2"} <= set(stem.layers)   # dw passes the stem's channels
    assert stem.producers == ("stem", "pw")
    assert not any(g.name in ("dw", "dw_x2", "dw1d") for g in plan.groups)
    assert plan.group("pw2").prunable and "dw1d" in plan.group("pw2").layers
    stripped = dsa_tf.strip(model, {"stem": [0, 2, 5], "pw2": range(5)})
    assert (stripped.get_layer("dw").filters, stripped.get_layer("dw").groups) == (3, 3)
    assert (stripped.get_layer("dw_x2").filters, stripped.get_layer("dw_x2").groups) == (6, 3)
    assert (stripped.get_layer("dw1d").filters, stripped.get_layer("dw1d").groups) == (5, 5)
