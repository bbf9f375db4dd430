"""prune_to_budget, ChannelGate and strip of a gated model."""

import sys

import numpy as np
import pytest
import tensorflow as tf

import dsa_tf
from dsa_tf import _keras
from dsa_tf.allocation.gated_model import gates_of, resample_masks, sampled_masks
from dsa_tf.allocation.gates import STOCHASTIC, is_gate
from dsa_tf.allocation.keep_differences import (
    keep_ratio_differences,
    keep_ratio_top_k_differences,
)
from dsa_tf.allocation.keep_gradients import keep_ratio_gradients

from masking import randomize
from small_models import deep_chain, multi_io, sequential, unet


def _inputs(model, rng):
    arrays = [rng.normal(size=(2,) + _keras.shape_of(t)[1:]).astype("float32")
              for t in _keras.model_inputs(model)]
    return arrays if len(arrays) > 1 else arrays[0]


def test_user_model_is_untouched_and_gates_start_open(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    randomize(model, np.random.default_rng(0))
    before = [w.numpy().copy() for w in model.weights]
    nodes = [len(layer._inbound_nodes) for layer in model.layers]
    gated = dsa_tf.prune_to_budget(model, 0.5)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
    assert nodes == [len(layer._inbound_nodes) for layer in model.layers]
    assert len(gates_of(gated)) == 12
    x = _inputs(model, np.random.default_rng(1))
    # Theta = 5 keeps round(0.993 * C) = C channels of these groups: the copy is exact.
    np.testing.assert_allclose(gated(x, training=False), model(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gated(x, training=True), model(x, training=True),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("build", [
    lambda keras: dsa_tf.models.cifar_resnet(20, keras=keras), unet, multi_io, sequential])
def test_strip_of_gated_model_matches_its_inference(keras, build):
    rng = np.random.default_rng(3)
    model = build(keras)
    randomize(model, rng)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    dsa_tf.set_keep_ratios(gated, {k: rng.uniform(0.1, 0.9) for k in dsa_tf.keep_ratios(gated)})
    small = dsa_tf.strip(gated)
    assert not any(is_gate(layer) for layer in small.layers)
    x = _inputs(model, rng)
    for expected, actual in zip(tf.nest.flatten(gated(x, training=False)),
                                tf.nest.flatten(small(x))):
        scale = float(np.abs(expected).max())
        assert np.abs(np.asarray(expected) - np.asarray(actual)).max() <= 1e-5 * scale
    plan = dsa_tf.analyze(model)
    kept = [max(1, round(r * g.channels)) / g.channels
            for r, g in zip(dsa_tf.keep_ratios(gated).values(), plan.prunable)]
    assert dsa_tf.count_flops(small) == round(plan.flops(np.array(kept)))
    assert dsa_tf.count_params(small) == round(plan.params(np.array(kept)))


def test_gated_model_round_trips_as_keras_file(keras, tmp_path):
    model = unet(keras)
    gated = dsa_tf.prune_to_budget(model, {"flops": 0.5, "params": 0.6}, seed=4)
    dsa_tf.set_keep_ratios(gated, {k: 0.4 for k in dsa_tf.keep_ratios(gated)})
    path = str(tmp_path / "gated.keras")
    gated.save(path)
    loaded = keras.models.load_model(path)
    assert dsa_tf.keep_ratios(loaded) == pytest.approx(dsa_tf.keep_ratios(gated))
    assert gates_of(loaded)[0].budget == {"flops": 0.5, "params": 0.6}
    x = _inputs(model, np.random.default_rng(0))
    np.testing.assert_allclose(loaded(x, training=False), gated(x, training=False), atol=1e-6)


def test_one_mask_per_group_and_step_at_every_gate_call(keras):
    layers = keras.layers
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(16, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Multiply()([x, layers.Activation("sigmoid")(x)])
    model = keras.Model(inputs, layers.Conv2D(2, 1)(x))
    randomize(model, np.random.default_rng(0))
    gated = dsa_tf.prune_to_budget(model, 0.5, seed=7)
    (gate,) = gates_of(gated)
    taps = [fc.call.outputs[0] for fc in dsa_tf.analyze(gated).calls if is_gate(fc.op)]
    # After the BatchNorm and the sigmoid; the conv's output feeds only the (gated)
    # BatchNorm and the product of two masked tensors stays masked.
    assert len(taps) == 2
    probe = keras.Model(gated.inputs[0], taps)
    gate.mode.assign(STOCHASTIC)
    dsa_tf.set_keep_ratios(gated, {gate.group: 0.5})
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    patterns = set()
    for _ in range(4):
        resample_masks(gated)
        alive = [tuple((np.abs(np.asarray(t)).sum(axis=(0, 1, 2)) > 0).tolist())
                 for t in probe(x, training=True)]
        assert len(set(alive)) == 1  # the same channels are dropped at every call point
        assert alive[0] == tuple((gate.mask.numpy() > 0).tolist())
        patterns.add(alive[0])
    assert len(patterns) > 1  # a new mask each step


def test_keep_ratio_gets_a_straight_through_gradient(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    for g in gates_of(gated):
        g.mode.assign(STOCHASTIC)
    dsa_tf.set_keep_ratios(gated, {g.group: 0.5 for g in gates_of(gated)})
    resample_masks(gated)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    y = np.arange(4)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    grads = keep_ratio_gradients(gated, loss, x, y)
    assert len(grads) == 12
    assert all(np.isfinite(float(g)) for g in grads) and any(float(g) != 0 for g in grads)
    # The straight-through estimate by hand for one gate: dL/dm . dp/dTheta.
    gate = gates_of(gated)[3]
    mask = _keras.tf_variable(gate.mask)
    with tf.GradientTape() as tape:
        tape.watch(mask)
        value = loss(y, gated(x, training=True))
    d_mask = tape.gradient(value, mask).numpy()
    a = float(gate.keep_ratio())
    p = gate.probabilities().numpy()
    dp_da = len(p) * p * (1 - p) / np.sum(p * (1 - p))
    terms = d_mask * dp_da * a * (1 - a)
    # The sum of signed terms cancels; float32 noise is relative to the terms' magnitudes.
    tolerance = 1e-3 * float(np.abs(terms).sum())
    assert float(grads[3]) == pytest.approx(float(terms.sum()), abs=tolerance)


def _allocating_resnet8(keras):
    """A gated CIFAR ResNet-8 (8x8) in the allocation phase, every group at keep ratio 0.5
    with sampled masks; its gates, a random batch and a loss."""
    keras.utils.set_random_seed(0)
    model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3), keras=keras)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    gates = gates_of(gated)
    for g in gates:
        g.mode.assign(STOCHASTIC)
    dsa_tf.set_keep_ratios(gated, {g.group: 0.5 for g in gates})
    resample_masks(gated)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 8, 8, 3)).astype("float32"), np.arange(16) % 10
    return gated, gates, x, y, keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_loss_differences_give_every_group_a_keep_ratio_signal(keras):
    """Where the straight-through gradient of the groups behind ReLU -> conv -> BatchNorm
    vanishes at soft masks, central differences of the loss under the step's noise do not; a
    group's difference is the loss at its masks for a -+ delta, and the sampled masks stay."""
    gated, gates, x, y, loss = _allocating_resnet8(keras)
    sampled = [g.mask.numpy().copy() for g in gates]
    straight = np.abs([float(g) for g in keep_ratio_gradients(gated, loss, x, y)])
    differences = [float(d) for d in keep_ratio_differences(gated, loss, x, y, delta=0.25)]
    for gate, mask in zip(gates, sampled):
        np.testing.assert_array_equal(gate.mask.numpy(), mask)
    last = [g.group for g in gates].index("stage3_block1_2_conv")
    others = np.delete(np.arange(len(gates)), last)
    assert straight[others].max() < 1e-3 * straight[last]
    assert np.all(np.abs(differences)[others] > 100 * straight[others])
    gate = gates[1]
    low, high = gate.sample(0.25).numpy(), gate.sample(0.75).numpy()
    assert np.all(high >= low) and high.sum() > low.sum()  # a superset, from the same noise
    losses = []
    for mask in (low, high):
        gate.mask.assign(mask)
        losses.append(float(loss(y, gated(x, training=True))))
    gate.mask.assign(sampled[1])
    assert differences[1] == pytest.approx((losses[1] - losses[0]) / 0.5 * 0.25, rel=1e-3)


def test_top_k_differences_are_the_loss_rise_of_dropping_a_groups_marginal_channels(keras):
    """Under the top-k masks, a group's signal is the loss with its least important kept
    channels dropped (to the count at a - delta) against the loss with all of them, per
    keep-ratio unit; a group at its fewest channels gets 0, and the sampled masks stay."""
    gated, gates, x, y, loss = _allocating_resnet8(keras)
    dsa_tf.set_keep_ratios(gated, {gates[0].group: 1 / gates[0].channels})  # one channel
    sampled = [g.mask.numpy().copy() for g in gates]
    signal = [float(d) for d in keep_ratio_top_k_differences(gated, loss, x, y, delta=0.25)]
    for gate, mask in zip(gates, sampled):
        np.testing.assert_array_equal(gate.mask.numpy(), mask)
    assert signal[0] == 0.0
    for gate in gates:
        gate.mask.assign(gate.top_k_mask())
    gate = gates[1]  # 16 channels at 0.5: 8 kept, 4 at 0.25
    importance = gate.importance.numpy()
    full = float(loss(y, gated(x, training=True)))
    fewer = np.zeros(gate.channels, "float32")
    fewer[np.argsort(-importance, kind="stable")[:4]] = 1.0
    gate.mask.assign(fewer)
    lower = float(loss(y, gated(x, training=True)))
    assert signal[1] == pytest.approx((full - lower) / (4 / 16) * 0.25, rel=1e-3, abs=1e-6)
    assert np.count_nonzero(signal) == len(gates) - 1


def test_moving_statistics_give_every_group_a_keep_ratio_gradient(keras):
    """With batch statistics the groups behind ReLU -> conv -> BatchNorm get no gradient at
    soft masks; with moving statistics every group does, and it is the straight-through
    estimate of the inference-mode loss under the sampled masks."""
    gated, gates, x, y, loss = _allocating_resnet8(keras)
    batch = np.abs([float(g) for g in keep_ratio_gradients(gated, loss, x, y)])
    moving = np.abs([float(g) for g in keep_ratio_gradients(gated, loss, x, y,
                                                            batch_statistics=False)])
    assert not any(g.sampled_in_inference for g in gates)  # restored after the pass
    last = [g.group for g in gates].index("stage3_block1_2_conv")  # feeds the pooled logits
    others = np.delete(np.arange(len(gates)), last)
    assert batch[others].max() < 1e-3 * batch[last]
    assert np.all(moving[others] > 30 * batch[others])  # orders of magnitude, group by group
    gate = gates[0]
    mask = _keras.tf_variable(gate.mask)
    with tf.GradientTape() as tape:
        tape.watch(mask)
        with sampled_masks(gated):
            value = loss(y, gated(x, training=False))
    a, p = float(gate.keep_ratio()), gate.probabilities().numpy()
    terms = tape.gradient(value, mask).numpy() * len(p) * p * (1 - p) / np.sum(p * (1 - p))
    assert moving[0] == pytest.approx(abs(terms.sum() * a * (1 - a)), rel=1e-3)


@pytest.mark.parametrize("budget, resource, message", [
    (0.0, "flops", "positive finite"),
    (-0.5, "flops", "positive finite"),
    (float("nan"), "flops", "positive finite"),
    (0.5, "energy", "Unknown resource 'energy'"),
    (1e12, "flops", "exceeds the model's"),
    (0.001, "flops", r"smallest reachable value is 0\.0"),
    ({}, "flops", "empty"),
])
def test_bad_budgets_are_refused_without_touching_the_model(keras, budget, resource, message):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match=message):
        dsa_tf.prune_to_budget(model, budget, resource=resource)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))


def test_absolute_budget_and_model_without_prunable_groups(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    gated = dsa_tf.prune_to_budget(model, 0.5 * dsa_tf.count_params(model), resource="params")
    assert gates_of(gated)[0].budget == {"params": pytest.approx(0.5)}
    inputs = keras.Input((4, 4, 3))
    tiny = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs))
    with pytest.raises(ValueError, match="no prunable channel group"):
        dsa_tf.prune_to_budget(tiny, 0.5)


def test_set_keep_ratios_validates(keras):
    gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20, keras=keras), 0.5)
    name = next(iter(dsa_tf.keep_ratios(gated)))
    with pytest.raises(ValueError, match="No gated group"):
        dsa_tf.set_keep_ratios(gated, {"nope": 0.5})
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        dsa_tf.set_keep_ratios(gated, {name: 1.5})
    with pytest.raises(ValueError, match="no ChannelGate"):
        dsa_tf.keep_ratios(dsa_tf.models.cifar_resnet(20, keras=keras))


def test_round_to_raises_the_reachable_minimum_and_shapes_the_strip(keras):
    model = dsa_tf.models.cifar_resnet(20, keras=keras)
    with pytest.raises(ValueError, match="round_to must be a positive integer"):
        dsa_tf.prune_to_budget(model, 0.5, round_to=0)
    dsa_tf.prune_to_budget(model, 0.3)  # reachable with single channels
    with pytest.raises(ValueError, match="round_to=32"):
        dsa_tf.prune_to_budget(model, 0.3, round_to=32)
    gated = dsa_tf.prune_to_budget(model, 0.5, round_to=8)
    dsa_tf.set_keep_ratios(gated, {name: 0.4 for name in dsa_tf.keep_ratios(gated)})
    small = dsa_tf.strip(gated)
    widths = sorted({g.channels for g in dsa_tf.analyze(small).groups if g.prunable})
    assert widths == [8, 24]  # round(0.4 * (16, 32, 64)) = (6, 13, 26) -> (8, 8, 24)


def test_gating_a_graph_deeper_than_the_recursion_limit(keras):
    """Keras maps a functional graph recursively; a gated EfficientNetV2L (1,500+ calls) hit
    RecursionError before strip.rebuild made room for it."""
    model = deep_chain(keras, depth=150)
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(250)  # below what the gated graph (300 calls) needs
    try:
        gated = dsa_tf.prune_to_budget(model, 0.5)
        dsa_tf.set_keep_ratios(gated, {name: 0.5 for name in dsa_tf.keep_ratios(gated)})
        x = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
        small = dsa_tf.strip(gated)
    finally:
        sys.setrecursionlimit(previous)
    np.testing.assert_allclose(small(x), gated(x, training=False), atol=1e-6)
