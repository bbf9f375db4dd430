"""dsa_tf.structure.operators: every costed operator, with kept channels that match strip."""

import numpy as np
import pytest

import dsa_tf
from dsa_tf.structure.operators import operators

from small_models import grouped_depthwise, unet


def _models(keras):
    mobilenet = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3),
                                               classes=5, alpha=0.35)
    return [dsa_tf.models.cifar_resnet(8, keras=keras), unet(keras), grouped_depthwise(keras),
            mobilenet]


def _channels(layer):
    kernel = layer.get_weights()[0]
    if type(layer).__name__.endswith("Transpose"):  # kernel (..., out, in)
        return kernel.shape[-1], kernel.shape[-2]
    if type(layer).__name__.startswith("Depthwise"):
        return kernel.shape[-2], kernel.shape[-2] * kernel.shape[-1]
    if type(layer).__name__ == "Dense" or layer.__class__.__name__.startswith("Conv"):
        groups = getattr(layer, "groups", 1)
        return kernel.shape[-2] * groups, kernel.shape[-1]
    raise AssertionError(type(layer).__name__)


@pytest.mark.parametrize("seed", [0, 1])
def test_kept_channels_match_the_stripped_layers(keras, seed):
    rng = np.random.default_rng(seed)
    for model in _models(keras):
        plan = dsa_tf.analyze(model)
        keep = {g.name: np.sort(rng.choice(g.channels, rng.integers(1, g.channels + 1),
                                           replace=False)) for g in plan.prunable}
        small = dsa_tf.strip(model, keep)
        ratios = plan.keep_ratios(keep)
        ops = operators(plan)
        assert ops, model.name
        for op in ops:
            expected = _channels(small.get_layer(op.name))
            assert op.counts(ratios) == pytest.approx(expected), (model.name, op.name)
            assert op.counts(np.ones(len(plan.prunable))) == pytest.approx(
                (op.channels_in, op.channels_out))


def test_signature_names_what_the_cost_depends_on(keras):
    ops = {op.name: op for op in operators(dsa_tf.analyze(dsa_tf.models.cifar_resnet(8)))}
    strided = ops["stage2_block1_1_conv"].signature
    assert strided["kind"] == "Conv2D" and strided["kernel_size"] == [3, 3]
    assert strided["strides"] == [2, 2]
    assert strided["input_shape"] == [32, 32] and strided["output_shape"] == [16, 16]
    assert ops["logits"].signature["kind"] == "Dense"
