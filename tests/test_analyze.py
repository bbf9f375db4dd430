"""Channel-group analysis: DSA's topological grouping and the clear errors."""

import pytest
import tensorflow as tf

import dsa_tf

from small_models import multi_io, nested_backbone, unet


def test_cifar_resnet_groups_follow_the_paper(keras):
    plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20, keras=keras))
    assert len(plan.prunable) == 12
    stage_groups = [g for g in plan.prunable if len(g.producers) > 1]
    # Each stage: its stem/projection conv plus the second conv of each of the 3 blocks.
    assert sorted(len(g.producers) for g in stage_groups) == [4, 4, 4]
    assert sorted(g.channels for g in stage_groups) == [16, 32, 64]
    assert all(len(g.producers) == 1 for g in plan.prunable if g not in stage_groups)
    logits = plan.group("logits")
    assert not logits.prunable and "model output" in logits.reason
    assert [g.reason for g in plan.groups if g.name.startswith("input:")] == ["model input"]
    assert len(dsa_tf.analyze(dsa_tf.models.cifar_resnet(56, keras=keras)).prunable) == 30


def test_group_members_include_every_layer_carrying_the_channels(keras):
    plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20, keras=keras))
    single = next(g for g in plan.prunable if len(g.producers) == 1)
    kinds = {type(plan.model.get_layer(name)).__name__ for name in single.layers}
    assert kinds == {"Conv2D", "BatchNormalization", "ReLU"}


def test_concatenation_and_transpose(keras):
    plan = dsa_tf.analyze(unet(keras))
    # Three encoder convs, the transpose conv and the decoder conv: each its own group; the
    # concatenations join them for their consumers without coupling them.
    assert sorted(g.channels for g in plan.prunable) == [8, 12, 12, 12, 16]
    output_group = plan.groups[-1]
    assert output_group.channels == 2 and not output_group.prunable


def test_squeeze_excitation_multiply_and_shared_layers_couple(keras):
    plan = dsa_tf.analyze(multi_io(keras))
    coupled = [g for g in plan.groups if len(g.producers) == 2]
    assert len(coupled) == 1 and coupled[0].channels == 24   # conv * SE-expanded sigmoid
    head2 = next(g for g in plan.groups if "head2" in g.producers)
    assert not head2.prunable
    inputs = [g for g in plan.groups if g.name.startswith("input:")]
    assert {g.name for g in inputs} == {"input:image", "input:extra"}


def test_nested_model_layers_are_qualified(keras):
    plan = dsa_tf.analyze(nested_backbone(keras))
    names = [g.name for g in plan.groups]
    assert "backbone/stem" in names and "stem" in names


def test_exclude_keeps_channels_whole(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    plan = dsa_tf.analyze(model, exclude=["stage1_block1_1_conv"])
    assert len(plan.prunable) == 11
    assert "excluded layer 'stage1_block1_1_conv'" in plan.group("stage1_block1_1_conv").reason
    with pytest.raises(ValueError, match="unknown layers"):
        dsa_tf.analyze(model, exclude=["no_such_layer"])


def test_softmax_over_channels_blocks_pruning_of_its_group(keras):
    """A softmax over the channels gives every output channel a share of every input channel:
    no channel can be removed without changing the kept ones (LayerNormalization can: see
    test_masked_norm.py)."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = keras.layers.Softmax()(x)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(x))
    group = dsa_tf.analyze(model).group("conv2d")
    assert not group.prunable and "softmax over the channels" in group.reason


def _custom_layer_model(keras):
    """A custom layer with a per-channel weight of its own: neither a rule nor a trace into
    standard layers (tests/test_inline.py) can prune through it."""
    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones")

    layer_cls = type("Doubler", (keras.layers.Layer,),
                     {"build": build, "call": lambda self, x: 2.0 * x * self.scale})
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="c1")(inputs)
    x = layer_cls(name="doubler")(x)
    x = keras.layers.Conv2D(5, 3, name="c2")(x)
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="head")(x))


@pytest.mark.parametrize("case", ["custom", "reshape", "permute"])
def test_unsupported_layers_raise_naming_the_layer(keras, case):
    layers = keras.layers
    inputs = keras.Input((8, 8, 4))
    if case == "custom":
        model, name, cls = _custom_layer_model(keras), "doubler", "Doubler"
    else:
        x = layers.Conv2D(4, 1, name="c1")(inputs)
        culprit = {"reshape": layers.Reshape((8, 16, 2), name="culprit"),
                   "permute": layers.Permute((3, 1, 2), name="culprit")}[case]
        model = keras.Model(inputs, layers.Conv2D(2, 1)(culprit(x)))
        name, cls = "culprit", type(culprit).__name__
    with pytest.raises(ValueError, match=rf"layer '{name}' \({cls}\).*exclude=\['{name}'\]"):
        dsa_tf.analyze(model)


def test_excluded_custom_layer_is_opaque(keras):
    from masking import check_strip

    model = _custom_layer_model(keras)
    plan = dsa_tf.analyze(model, exclude=["doubler"])
    assert not plan.group("c1").prunable
    assert plan.group("c2").prunable
    check_strip(model, exclude=("doubler",))


def test_subclassed_model_is_refused(keras):
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    net = Net()
    net(tf.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="subclassed"):
        dsa_tf.analyze(net)


def test_adding_a_concatenation_to_one_layer_keeps_both_whole(keras):
    """InceptionResNetV2 and NASNet add a concatenation to a single layer's channels: the
    positions cannot share one selection, so those groups stay whole (they used to raise)."""
    from masking import check_strip

    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    concat = layers.Concatenate()([layers.Conv2D(4, 1, name="a")(inputs),
                                   layers.Conv2D(4, 1, name="b")(inputs)])
    x = layers.Add(name="merge")([concat, layers.Conv2D(8, 1, name="c")(inputs)])
    x = layers.Conv2D(6, 3, name="d")(x)
    model = keras.Model(inputs, layers.Conv2D(2, 1)(x))
    plan = dsa_tf.analyze(model)
    for name in "abc":
        assert "merge: merges differently composed channels" in plan.group(name).reason
    assert [g.name for g in plan.prunable] == ["d"]
    check_strip(model)
