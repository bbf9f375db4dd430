"""keras-hub image backbones built offline (random weights, small configurations, no presets):
analysis, gating, strip parity and exact resource prediction (a test dependency; keras-hub
needs Keras 3). Their blocks are keras-hub's own layer subclasses, which dsa_tf traces
(:mod:`dsa_tf.structure.inline`).

All of them run in the normal suite.
"""

from __future__ import annotations

from typing import Any

import pytest

from dsa_tf import _keras

if _keras.default_keras().__name__.startswith("tf_keras"):
    pytest.skip("keras-hub builds Keras 3 models", allow_module_level=True)

keras_hub = pytest.importorskip("keras_hub")

from masking import check_gated_strip  # noqa: E402

SHAPE = (32, 32, 3)


def resnet_v1() -> Any:
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64] * 3,
        stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2],
        block_type="bottleneck_block", image_shape=SHAPE)


def resnet_v2() -> Any:
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64] * 3,
        stackwise_num_blocks=[2, 2, 2], stackwise_num_strides=[1, 2, 2],
        block_type="basic_block", use_pre_activation=True, image_shape=SHAPE)


def vgg() -> Any:
    return keras_hub.models.VGGBackbone(stackwise_num_repeats=[2, 2],
                                        stackwise_num_filters=[16, 32], image_shape=SHAPE)


def densenet() -> Any:
    return keras_hub.models.DenseNetBackbone(stackwise_num_repeats=[2, 2], image_shape=SHAPE)


def xception() -> Any:
    return keras_hub.models.XceptionBackbone(
        stackwise_conv_filters=[[32, 64], [64, 128], [256, 256]],
        stackwise_pooling=[True, True, False], image_shape=SHAPE)


def mobilenet() -> Any:
    return keras_hub.models.MobileNetBackbone(
        stackwise_expansion=[[40, 56], [64, 144, 144]], stackwise_num_blocks=[2, 3],
        stackwise_num_filters=[[16, 16], [24, 24, 24]], stackwise_kernel_size=[[3, 3], [5] * 3],
        stackwise_num_strides=[[2, 1], [2, 1, 1]], stackwise_se_ratio=[[None] * 2, [0.25] * 3],
        stackwise_activation=[["relu"] * 2, ["hard_swish"] * 3, ["hard_swish"]],
        stackwise_padding=[[1, 1], [2, 2, 2]], output_num_filters=256,
        input_activation="hard_swish", output_activation="hard_swish", input_num_filters=16,
        image_shape=SHAPE, depthwise_filters=8, depthwise_stride=2, depthwise_residual=False,
        squeeze_and_excite=0.5, last_layer_filter=144)


def efficientnet() -> Any:
    return keras_hub.models.EfficientNetBackbone(
        stackwise_kernel_sizes=[3, 3], stackwise_num_repeats=[1, 2],
        stackwise_input_filters=[24, 24], stackwise_output_filters=[24, 48],
        stackwise_expansion_ratios=[1, 4], stackwise_squeeze_and_excite_ratios=[0.0, 0.25],
        stackwise_strides=[1, 2], stackwise_block_types=["fused", "unfused"],
        stackwise_force_input_filters=[0, 0], stackwise_nores_option=[False, False],
        width_coefficient=1.0, depth_coefficient=1.0, input_shape=SHAPE)


def cspnet() -> Any:
    return keras_hub.models.CSPNetBackbone(
        stem_filters=32, stem_kernel_size=3, stem_strides=1, stackwise_depth=[1, 2],
        stackwise_strides=[1, 2], stackwise_num_filters=[32, 64],
        block_type="bottleneck_block", stage_type="csp", bottle_ratio=[0.5],
        block_ratio=[1.0], expand_ratio=[2.0], image_shape=SHAPE)


def hgnetv2() -> Any:
    return keras_hub.models.HGNetV2Backbone(
        depths=[1, 1], embedding_size=32, hidden_sizes=[64, 128], stem_channels=[3, 16, 32],
        hidden_act="relu", use_learnable_affine_block=False,
        stackwise_stage_filters=[(32, 16, 64, 1, 1, 3), (64, 32, 128, 1, 1, 3)],
        apply_downsample=[False, True], use_lightweight_conv_block=[False, False],
        image_shape=(64, 64, 3))


BACKBONES = {"resnet_v1": resnet_v1, "resnet_v2": resnet_v2, "vgg": vgg, "densenet": densenet,
             "xception": xception, "mobilenet": mobilenet, "efficientnet": efficientnet,
             "hgnetv2": hgnetv2, "cspnet": cspnet}
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone(name):
    """All of them in the normal suite (20 s here): resnet_v2 has keras.ops.pad in its stem;
    mobilenet, efficientnet and hgnetv2 are built of keras-hub's layer subclasses (hgnetv2's
    nested three deep, with Identity layers that have no config); cspnet splits channels."""
    assert check_gated_strip(BACKBONES[name](), seed=len(name)) > 0
