"""Every keras.applications constructor (weights=None): analysis, gating, strip parity and
exact resource prediction.

The constructors are discovered in the installed Keras, not listed by hand. One representative
of each family runs in the normal suite, under one flavour: the families Keras 3 lacks and
the five of ``TF_KERAS_RUNS`` under tf_keras, the others under Keras 3 (``make test`` runs the
two flavours side by side, and Keras 3's run, with its tf.distribute and latency tests, is the
longer one); small models test both flavours' layers. ``make zoo`` (``pytest -m zoo``) runs
every constructor under both flavours.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pytest

import dsa_tf
from dsa_tf import _keras

from masking import check_gated_strip, check_strip, fit_with_dsa

KERAS = _keras.default_keras()

# The smallest input each family accepts at or above 64 x 64.
INPUT_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}

# The families only tf_keras has.
TF_KERAS_ONLY = ("RegNetX", "RegNetY", "ResNetRS")

# Families whose representative the normal suite runs under tf_keras, to balance the two
# flavours' runs (measured in one CI run here: these five take 103 s under Keras 3, 177 s
# under tf_keras; DenseNet121, 41 s against 91 s, stays with Keras 3).
TF_KERAS_RUNS = TF_KERAS_ONLY + ("InceptionResNetV2", "InceptionV3", "NASNet", "ResNetV2",
                                 "Xception")

# The member of each family that runs in the normal suite.
REPRESENTATIVE = {
    "ConvNeXt": "ConvNeXtTiny", "DenseNet": "DenseNet121", "EfficientNetB": "EfficientNetB0",
    "EfficientNetV2": "EfficientNetV2S", "InceptionResNetV2": "InceptionResNetV2",
    "InceptionV3": "InceptionV3", "MobileNet": "MobileNet", "MobileNetV2": "MobileNetV2",
    "MobileNetV3": "MobileNetV3Small", "NASNet": "NASNetMobile", "RegNetX": "RegNetX002",
    "RegNetY": "RegNetY002", "ResNet": "ResNet50", "ResNetRS": "ResNetRS50",
    "ResNetV2": "ResNet50V2", "VGG": "VGG16", "Xception": "Xception",
}


def constructors(keras: Any) -> list[str]:
    """The model constructors of ``keras.applications`` (functions taking ``weights``)."""
    apps = keras.applications
    return sorted(name for name in dir(apps) if not name.startswith("_")
                  and inspect.isfunction(getattr(apps, name))
                  and "weights" in inspect.signature(getattr(apps, name)).parameters)


def family(name: str) -> str:
    """``ResNet50V2`` -> ``ResNetV2``, ``EfficientNetV2B0`` -> ``EfficientNetV2``."""
    for prefix in ("EfficientNetV2", "ConvNeXt", "NASNet", "MobileNetV3"):
        if name.startswith(prefix):
            return prefix
    return re.sub(r"(?<!V)\d+", "", name)


NAMES = constructors(KERAS)
FAMILIES = sorted({family(name) for name in NAMES})
SAMPLE = [REPRESENTATIVE[f] for f in FAMILIES if f in REPRESENTATIVE
          and (f in TF_KERAS_RUNS) == KERAS.__name__.startswith("tf_keras")]


def build(keras: Any, name: str) -> Any:
    size = INPUT_SIZE.get(name, 64)
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                             classifier_activation=None)


def check_application(keras: Any, name: str) -> None:
    """Builds ``name`` in float64 and checks it.

    float64, because with random BatchNorm statistics these deep networks are badly
    conditioned in float32: EfficientNetV2S's activations reach 1e6, and the sigmoid of its
    squeeze-and-excitation blocks turns summation-order rounding into strip-vs-gated
    differences of up to 2e-4 of the output over 15 seeded draws (0.009 and 0.02 in two
    unseeded ones; issue 15 saw 0.8), while the same check in float64 agrees to 5e-14 in
    both Keras flavours. float64 keeps the 1e-5 tolerance a test of the structure.
    """
    keras.utils.set_random_seed(len(name))
    floatx = keras.backend.floatx()
    keras.backend.set_floatx("float64")
    try:
        assert check_gated_strip(build(keras, name), seed=len(name)) > 0
    finally:
        keras.backend.set_floatx(floatx)


def test_every_family_has_a_representative():
    assert set(FAMILIES) <= set(REPRESENTATIVE)
    assert set(TF_KERAS_ONLY) <= set(FAMILIES) or not KERAS.__name__.startswith("tf_keras")
    assert set(SAMPLE) <= set(NAMES)


@pytest.mark.parametrize("name", SAMPLE)
def test_family_representative(keras, name):
    check_application(keras, name)


@pytest.mark.zoo
@pytest.mark.parametrize("name", [n for n in NAMES if n not in SAMPLE])
def test_whole_zoo(keras, name):
    check_application(keras, name)


def test_random_keep_sets_on_plain_models(keras):
    """strip with explicit keep sets equals the masked reference (no gates involved)."""
    model = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3),
                                                classifier_activation=None)
    check_strip(model, seed=3)


def test_backbone_used_as_a_nested_layer(keras):
    backbone = keras.applications.MobileNetV2(weights=None, include_top=False,
                                              input_shape=(32, 32, 3))
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(5)(x))
    check_strip(model)


@pytest.mark.zoo
def test_dsa_fit_on_convnext_tiny_strips_to_its_budget(keras):
    """ConvNeXt normalises its residual streams with LayerNormalization: DSA trains through
    the masked normalisations and the strip meets the budget with parity."""
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=4,
                                            classifier_activation=None)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    x = fit_with_dsa(gated, examples=48, batch_size=8, epochs=3, lr=0.01)
    assert dsa_tf.budget_status(gated)["met"]
    small = dsa_tf.strip(gated)
    assert dsa_tf.count_flops(small) <= 0.5 * dsa_tf.count_flops(model)
    expected = np.asarray(gated(x[:4], training=False))
    assert np.abs(np.asarray(small(x[:4])) - expected).max() <= 1e-4 * np.abs(expected).max()
