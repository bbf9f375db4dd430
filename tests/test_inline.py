"""Subclassed layers (a user's or keras-hub's blocks) traced into the standard layers their
call runs: analysed, gated and stripped like the same layers written functionally, the
user's layers left as they were, and clear refusals where a layer cannot be traced."""

import numpy as np
import pytest

import dsa_tf

from masking import check_gated_strip, check_strip
from small_models import subclassed_blocks


def _nodes(model):
    return [(layer.name, len(layer._inbound_nodes), len(layer._outbound_nodes))
            for top in model.layers
            for layer in top._flatten_layers(include_self=True, recursive=True)]


def test_subclassed_blocks_prune_like_their_layers(keras):
    model = subclassed_blocks(keras)
    nodes = _nodes(model)
    plan = dsa_tf.analyze(model)
    # The residual add inside block1 couples the stem with block1's second conv.
    assert [g.name for g in plan.prunable] == [
        "stem", "block1/conv1", "stage2/inner_block/conv1", "stage2/project"]
    assert "block1/conv2" in plan.group("stem").producers
    assert dsa_tf.count_flops(model) == round(plan.flops(np.ones(len(plan.prunable))))
    check_strip(model, seed=1)
    assert check_gated_strip(model, seed=2) == 4
    small = dsa_tf.strip(model, {"stem": range(3)})
    assert small.get_layer("block1_conv2").filters == 3
    assert all(type(layer).__module__.startswith(("keras.", "tf_keras."))
               for layer in small.layers)
    assert _nodes(model) == nodes  # the trace left the user's layers as they were


def test_an_excluded_subclassed_layer_stays_whole(keras):
    model = subclassed_blocks(keras)
    plan = dsa_tf.analyze(model, exclude=["block1"])
    assert plan.group("stem").reason == "consumed by excluded layer 'block1'"
    assert plan.group("block1").reason == "excluded layer 'block1'"
    assert plan.group("stage2/project").prunable
    check_strip(model, exclude=("block1",))


def test_a_layer_with_weights_of_its_own_is_refused(keras):
    layers = keras.layers

    class Scale(layers.Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.scale

    inputs = keras.Input((4, 4, 3))
    x = Scale(name="scale")(layers.Conv2D(4, 1)(inputs))
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    with pytest.raises(ValueError, match=r"'scale' \(Scale\).*weights of its own"):
        dsa_tf.analyze(model)
    assert dsa_tf.analyze(model, exclude=["scale"]).group("conv2d").reason.startswith(
        "consumed by excluded layer")


def test_a_tensorflow_function_in_a_call(keras):
    """Keras 3 cannot pass symbolic tensors to TensorFlow functions: the layer is refused
    (and counts 0 FLOPs); tf_keras records them as TFOpLambda layers, which have rules."""
    import tensorflow as tf

    layers = keras.layers

    class TFRelu(layers.Layer):
        def call(self, x):
            return tf.nn.relu(x)

    inputs = keras.Input((4, 4, 3))
    x = TFRelu(name="tf_relu")(layers.Conv2D(4, 1, name="conv")(inputs))
    model = keras.Model(inputs, layers.Dense(2)(layers.Conv2D(5, 1)(x)))
    flops = 2 * 16 * 3 * 4 + 2 * 16 * 4 * 5 + 2 * 16 * 5 * 2
    assert dsa_tf.count_flops(model) == flops
    if hasattr(keras, "ops"):
        with pytest.raises(ValueError, match=r"'tf_relu' \(TFRelu\).*cannot trace it"):
            dsa_tf.analyze(model)
    else:
        assert dsa_tf.analyze(model).group("conv").prunable
        check_strip(model)


def test_keras_ops_split_and_mean_prune_through(keras):
    """CSPNet's channel split and squeeze-and-excitation's spatial mean (Keras 3 ops): the
    split's parts keep a fixed share of their group, so counting stays exact."""
    if not hasattr(keras, "ops"):
        pytest.skip("keras.ops is Keras 3")
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(12, 3, padding="same", name="stem")(inputs)
    squeeze = keras.ops.mean(x, axis=[1, 2], keepdims=True)
    x = x * layers.Conv2D(12, 1, activation="sigmoid", name="excite")(squeeze)
    first, second = keras.ops.split(x, [4], axis=-1)  # 4 and 8 channels: blocks of 4
    first = layers.Conv2D(6, 3, padding="same", name="part")(layers.ReLU()(first))
    x = layers.Concatenate()([first, second])
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    plan = dsa_tf.analyze(model)
    assert [(g.name, g.blocks) for g in plan.prunable] == [("stem", 3), ("part", 1)]
    for seed in range(3):
        check_strip(model, seed=seed)
    small = dsa_tf.strip(model, {"stem": [0, 3, 5, 6, 9, 10]})  # two of every four
    assert small.get_layer("part").kernel.shape[2] == 2
    assert tuple(small.outputs[0].shape) == (None, 2)
    with pytest.raises(ValueError, match=r"keeps \[1, 2, 2\] channels in the 3 blocks"):
        dsa_tf.strip(model, {"stem": [0, 4, 5, 8, 9]})
    channel_mean = keras.ops.mean(inputs, axis=-1, keepdims=True)
    with pytest.raises(ValueError, match="reduces over the channel axis"):
        dsa_tf.analyze(keras.Model(inputs, layers.Conv2D(2, 1)(channel_mean)))
