"""keras.applications models (weights=None): stripping parity and exact resource models."""

import pytest

from masking import check_strip

ZOO = {
    "ResNet50": (64, 64, 3),
    "ResNet50V2": (64, 64, 3),
    "MobileNetV2": (64, 64, 3),
    "MobileNetV3Small": (64, 64, 3),
    "EfficientNetB0": (64, 64, 3),
    "DenseNet121": (64, 64, 3),
    "VGG16": (64, 64, 3),
    "Xception": (75, 75, 3),
}


@pytest.mark.parametrize("name", sorted(ZOO))
def test_keras_applications(keras, name):
    build = getattr(keras.applications, name)
    model = build(weights=None, input_shape=ZOO[name], classifier_activation=None)
    check_strip(model, seed=len(name))


def test_backbone_used_as_a_nested_layer(keras):
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    check_strip(model)
