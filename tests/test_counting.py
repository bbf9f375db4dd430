"""FLOPs and parameter counts against hand counts."""

import numpy as np
import pytest

import dsa_tf


def test_cifar_resnet20_flops_match_hand_count(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    # 3x3 convs: stem 3->16 at 32x32, 6 convs 16->16 at 32x32, then per stage at 16x16 / 8x8 a
    # strided conv, 5 convs and a 1x1 projection.
    stem = 2 * 9 * 3 * 16 * 32 * 32
    stage1 = 6 * 2 * 9 * 16 * 16 * 32 * 32
    stage2 = 2 * 9 * 16 * 32 * 16 * 16 + 5 * 2 * 9 * 32 * 32 * 16 * 16 + 2 * 16 * 32 * 16 * 16
    stage3 = 2 * 9 * 32 * 64 * 8 * 8 + 5 * 2 * 9 * 64 * 64 * 8 * 8 + 2 * 32 * 64 * 8 * 8
    convs = stem + stage1 + stage2 + stage3
    assert convs == 81_625_088
    assert dsa_tf.count_flops(model) == convs + 2 * 64 * 10


def test_cifar_resnet56_flops_match_paper_count(keras):
    model = dsa_tf.models.cifar_resnet(56, keras=keras)
    assert dsa_tf.count_flops(model) == 251_494_400 + 2 * 64 * 10


def test_each_layer_type_is_counted_as_documented(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same")(inputs)                      # 2*9*3*4*64
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)  # 2*9*8*64
    x = layers.SeparableConv2D(5, 3, strides=2, padding="same")(x)        # 2*16*8*(9+5)
    x = layers.Conv2DTranspose(6, 2, strides=2)(x)                        # 2*4*5*6*16
    x = layers.BatchNormalization()(x)
    x = layers.Dense(7)(x)                                                # 2*64*6*7
    model = keras.Model(inputs, x)
    expected = (2 * 9 * 3 * 4 * 64 + 2 * 9 * 8 * 64 + 2 * 16 * 8 * (9 + 5)
                + 2 * 4 * 5 * 6 * 16 + 2 * 64 * 6 * 7)
    assert dsa_tf.count_flops(model) == expected
    conv1d = keras.Sequential([keras.Input((10, 2)), layers.Conv1D(3, 3)])
    assert dsa_tf.count_flops(conv1d) == 2 * 3 * 2 * 3 * 8


@pytest.mark.parametrize("depth", [20, 56])
def test_resource_model_is_exact_at_full_width(keras, depth):
    model = dsa_tf.models.cifar_resnet(depth, keras=keras)
    plan = dsa_tf.analyze(model)
    ones = np.ones(len(plan.prunable))
    assert plan.flops(ones) == dsa_tf.count_flops(model)
    assert plan.params(ones) == dsa_tf.count_params(model) == model.count_params()


def test_unknown_spatial_size_is_refused(keras):
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(ValueError, match="static input shape"):
        dsa_tf.count_flops(model)
