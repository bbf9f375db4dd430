"""LayerNormalization (and RMSNormalization) over a prunable group: normalised over the kept
channels, in the plain strip, in the gated model (their masked forms) and in training; and
UnitNormalization, exact as it is."""

import numpy as np
import pytest

import dsa_tf
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gated_strip import gate_keep

from masking import check_strip, fit_with_dsa, randomize

NORMS = ("layer", "rms_scaling", "rms")  # LayerNormalization, with rms_scaling, RMSNormalization


def convnext_like(keras, norm="layer"):
    """ConvNeXt's pattern: a residual stream normalised by LayerNormalization (depthwise conv,
    LN, two Dense), plus an LN on a concatenation of two groups and one on the pooled head;
    ``norm`` "rms" uses RMSNormalization instead."""
    if norm == "rms":
        def normalization(**settings):
            return keras.layers.RMSNormalization(**settings)
    else:
        def normalization(**settings):
            extra = {"rms_scaling": True} if norm == "rms_scaling" else {}
            return keras.layers.LayerNormalization(**settings, **extra)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", name="stem")(inputs)
    x = normalization(epsilon=1e-6, name="stem_ln")(x)
    for i in range(2):
        y = keras.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        y = normalization(epsilon=1e-6, name=f"ln{i}")(y)
        y = keras.layers.Dense(32, activation="gelu", name=f"expand{i}")(y)
        x = keras.layers.Add(name=f"add{i}")([x, keras.layers.Dense(16, name=f"project{i}")(y)])
    side = keras.layers.Conv2D(8, 1, name="side")(x)
    x = keras.layers.Concatenate(name="concat")([x, side])
    x = normalization(epsilon=1e-3, name="concat_ln")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = normalization(epsilon=1e-3, name="head_ln")(x)
    return keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))


def skip_unless_available(keras, norm):
    if norm == "rms_scaling" and not hasattr(keras.layers.LayerNormalization(), "rms_scaling"):
        pytest.skip("this Keras has no rms_scaling")
    if norm == "rms" and not hasattr(keras.layers, "RMSNormalization"):
        pytest.skip("this Keras has no RMSNormalization")


@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_layer_norm_groups_are_prunable_and_strip_normalises_over_kept_channels(keras, norm):
    skip_unless_available(keras, norm)
    model = convnext_like(keras, norm)
    plan = dsa_tf.analyze(model)
    assert {g.name for g in plan.prunable} >= {"stem", "expand0", "expand1", "side"}
    for seed in range(3):
        check_strip(model, seed=seed)


@pytest.mark.parametrize("norm", NORMS)
def test_gated_model_matches_its_strip_and_round_trips(keras, tmp_path, norm):
    skip_unless_available(keras, norm)
    model = convnext_like(keras, norm)
    plan_class = "RMSNormalization" if norm == "rms" else "LayerNormalization"
    rng = np.random.default_rng(0)
    randomize(model, rng)
    gated = dsa_tf.prune_to_budget(model, 1.0)
    assert sum(type(layer).__name__ == f"Masked{plan_class}" for layer in gated.layers) == 5
    dsa_tf.set_keep_ratios(gated, {n: float(rng.uniform(0.2, 0.9))
                                   for n in dsa_tf.keep_ratios(gated)})
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    expected = np.asarray(gated(x, training=False))
    small = dsa_tf.strip(gated)
    assert {type(layer).__name__ for layer in small.layers} >= {plan_class}
    assert f"Masked{plan_class}" not in {type(layer).__name__ for layer in small.layers}
    assert np.abs(np.asarray(small(x)) - expected).max() <= 1e-5 * np.abs(expected).max()
    plan = dsa_tf.analyze(gated)
    ratios = plan.keep_ratios(gate_keep(plan))
    assert dsa_tf.count_flops(small) == round(plan.flops(ratios))
    assert dsa_tf.count_params(small) == round(plan.params(ratios))
    path = str(tmp_path / "gated.keras")
    gated.save(path)
    loaded = keras.models.load_model(path)
    assert np.abs(np.asarray(loaded(x, training=False)) - expected).max() == 0


def test_in_training_the_statistics_follow_the_sampled_masks(keras):
    """During DSA's allocation each step samples a mask per gate: the LayerNormalization of a
    gated group must normalise over the channels that step keeps, as the strip of exactly
    that mask would."""
    model = convnext_like(keras)
    rng = np.random.default_rng(1)
    randomize(model, rng)
    gated = dsa_tf.prune_to_budget(model, 1.0)
    plan = dsa_tf.analyze(gated)
    keep = {}
    for gate in gates_of(gated):
        mask = (rng.uniform(size=gate.channels) < 0.6).astype("float32")
        mask[rng.integers(gate.channels)] = 1.0
        gate.mask.assign(mask)
        keep[gate.group] = np.flatnonzero(mask)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    trained = np.asarray(gated(x, training=True))
    expected = dsa_tf.masked_call(gated, {g.name: keep[g.name] for g in plan.prunable}, x)[0]
    assert np.abs(trained - expected).max() <= 1e-5 * np.abs(expected).max()


def test_dsa_fit_meets_the_budget_through_layer_norms(keras):
    model = convnext_like(keras)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    x = fit_with_dsa(gated, examples=96, batch_size=16, epochs=6)
    assert dsa_tf.budget_status(gated)["met"]
    small = dsa_tf.strip(gated)
    assert dsa_tf.count_flops(small) <= 0.5 * dsa_tf.count_flops(model)
    expected = np.asarray(gated(x[:4], training=False))
    assert np.abs(np.asarray(small(x[:4])) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_unit_normalization_over_a_group_keeps_it_prunable_and_exact(keras):
    """x / ||x|| over the channels: the dropped channels are zero in the gated model and
    absent in the strip, and add nothing to the norm either way."""
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(16, 3, name="conv")(inputs)
    x = keras.layers.UnitNormalization(name="unit")(x)
    x = keras.layers.Conv2D(8, 1, name="mix")(x)
    outputs = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    assert {g.name for g in dsa_tf.analyze(model).prunable} == {"conv", "mix"}
    for seed in range(2):
        check_strip(model, seed=seed)
    rng = np.random.default_rng(2)
    gated = dsa_tf.prune_to_budget(model, 1.0)
    dsa_tf.set_keep_ratios(gated, {"conv": 0.4, "mix": 0.6})
    x = rng.normal(size=(2, 6, 6, 3)).astype("float32")
    expected = np.asarray(gated(x, training=False))
    assert np.abs(np.asarray(dsa_tf.strip(gated)(x)) - expected).max() <= (
        1e-5 * np.abs(expected).max())
