"""Grouped convolutions (ResNeXt, RegNet): pruned by the same number of channels in every
group of the convolution, from the analysis to the allocators, DSA's gates and strip."""

import numpy as np
import pytest
import tensorflow as tf

import dsa_tf
from dsa_tf.allocation.gated_model import gates_of

from masking import check_strip, fit_with_dsa, randomize
from small_models import resnext

GROUPED = ("b0_in", "b0_grouped", "b1_in", "b1_grouped")


def _per_block(keep, group, blocks=4, channels=32):
    mask = np.zeros(channels, bool)
    mask[keep[group]] = True
    return mask.reshape(blocks, -1).sum(axis=1).tolist()


def test_both_sides_of_a_grouped_conv_prune_in_equal_blocks(keras):
    model = resnext(keras)
    plan = dsa_tf.analyze(model)
    assert [(g.name, g.blocks) for g in plan.prunable] == [("stem", 1)] + [
        (name, 4) for name in GROUPED]
    for seed in range(3):
        stripped = check_strip(model, seed=seed)  # parity, exact FLOPs and params
        for block in ("b0", "b1"):
            layer = stripped.get_layer(f"{block}_grouped")
            assert layer.groups == 4 and layer.filters % 4 == 0
            assert stripped.get_layer(f"{block}_in").filters % 4 == 0


def test_a_pruned_grouped_conv_counts_its_grouped_kernel(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(12, 1, name="into")(inputs)
    x = layers.Conv2D(9, 3, padding="same", groups=3, name="g3")(x)
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    keep = {"into": [0, 1, 4, 5, 8, 9], "g3": [0, 3, 6]}  # 2 of 4 inputs, 1 of 3 filters
    stripped = dsa_tf.strip(model, keep)
    grouped = stripped.get_layer("g3")
    assert (grouped.groups, tuple(grouped.kernel.shape)) == (3, (3, 3, 2, 3))
    assert dsa_tf.count_flops(stripped) == (
        2 * 64 * 3 * 6 + 2 * 9 * 64 * (6 // 3) * 3 + 2 * 3 * 2)
    assert dsa_tf.count_params(stripped) == (3 * 6 + 6) + (9 * 2 * 3 + 3) + (3 * 2 + 2)
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(stripped(x), dsa_tf.masked_call(model, keep, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_unequal_blocks_are_refused(keras):
    model = resnext(keras)
    keep = {"b0_in": list(range(8)) + list(range(8, 12))}  # 8 + 4 + 0 + 0
    with pytest.raises(ValueError, match=r"keeps \[8, 4, 0, 0\] channels in the 4 blocks"):
        dsa_tf.strip(model, keep)
    gated = dsa_tf.prune_to_budget(model, 0.5)
    with pytest.raises(ValueError, match="every block must keep the same number"):
        dsa_tf.apply_allocation(gated, keep)


def test_a_concatenation_into_a_grouped_conv_is_kept_whole(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(4, 1, name="a")(inputs)
    b = layers.Conv2D(4, 1, name="b")(inputs)
    x = layers.Conv2D(8, 3, groups=2, name="grouped")(layers.Concatenate()([a, b]))
    model = keras.Model(inputs, layers.Dense(2)(layers.GlobalAveragePooling2D()(x)))
    plan = dsa_tf.analyze(model)
    for name in ("a", "b"):
        assert "grouped convolution (groups=2) reading channels of several groups" in \
            plan.group(name).reason
    assert plan.group("grouped").prunable and plan.group("grouped").blocks == 2
    check_strip(model)


@pytest.mark.parametrize("allocator", ["uniform", "magnitude"])
def test_allocators_keep_equal_blocks_within_the_budget(keras, allocator):
    model = resnext(keras)
    randomize(model, np.random.default_rng(0))
    for budget in (0.3, {"params": 0.5}):
        keep = getattr(dsa_tf, f"{allocator}_allocation")(model, budget, round_to=2)
        for group in GROUPED:
            counts = _per_block(keep, group)
            assert len(set(counts)) == 1, (group, counts)  # so a multiple of lcm(2, 4)
        assert len(keep["stem"]) % 2 == 0
        small = dsa_tf.strip(model, keep)
        used = (dsa_tf.count_flops(small) / dsa_tf.count_flops(model) if budget == 0.3 else
                dsa_tf.count_params(small) / dsa_tf.count_params(model))
        assert used <= (budget if budget == 0.3 else budget["params"])


def test_magnitude_keeps_the_largest_gammas_of_every_block(keras):
    model = resnext(keras)
    gamma = np.arange(1, 33, dtype="float32")[::-1].copy()  # block 0 has the largest
    model.get_layer("b0_in_bn").gamma.assign(gamma)
    keep = dsa_tf.magnitude_allocation(model, 0.5)
    kept = keep["b0_in"]
    counts = _per_block(keep, "b0_in")
    assert len(set(counts)) == 1
    # Within each block of 8 the first channels have the largest |gamma|.
    assert kept.tolist() == [8 * b + i for b in range(4) for i in range(counts[0])]


def test_dsa_gates_sample_and_keep_equal_blocks(keras):
    rng = np.random.default_rng(2)
    model = resnext(keras)
    randomize(model, rng)
    gated = dsa_tf.prune_to_budget(model, 0.4)
    gate = {g.group: g for g in gates_of(gated)}["b0_grouped"]
    assert (gate.blocks, gate.round_to) == (4, 4)
    gate.importance.assign(rng.lognormal(0.0, 1.0, 32).astype("float32")
                           * np.repeat([1.0, 10.0, 0.1, 1.0], 8).astype("float32"))
    dsa_tf.set_keep_ratios(gated, {"b0_grouped": 0.5})
    probabilities = gate.probabilities().numpy().reshape(4, 8)
    np.testing.assert_allclose(probabilities.mean(axis=1), 0.5, atol=1e-4)
    assert gate.hard_mask().numpy().reshape(4, 8).sum(axis=1).tolist() == [4, 4, 4, 4]

    fit_with_dsa(gated, examples=64, batch_size=16, epochs=6)
    small = dsa_tf.strip(gated)
    assert dsa_tf.count_flops(small) <= 0.4 * dsa_tf.count_flops(model)
    x = rng.normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(small(x), gated(x, training=False), rtol=1e-4, atol=1e-4)
    for block in ("b0", "b1"):
        assert small.get_layer(f"{block}_grouped").groups == 4
    assert all(tf.reduce_all(tf.math.is_finite(w)) for w in small.weights)
