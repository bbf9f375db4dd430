"""Helpers that check a strip the way a user relies on it."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

import dsa_tf
from dsa_tf import _keras
from dsa_tf.allocation.gated_strip import gate_keep


def random_keep(plan: dsa_tf.ChannelPlan, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random channel subset (at least one channel) for every prunable group; a group with
    blocks (a grouped convolution's channels) keeps the same random count in every block."""
    keep = {}
    for g in plan.prunable:
        size = g.channels // g.blocks
        count = rng.integers(1, size + 1)
        keep[g.name] = np.sort(np.concatenate([
            b * size + rng.choice(size, count, replace=False) for b in range(g.blocks)]))
    return keep


def randomize(model: Any, rng: np.random.Generator) -> None:
    """Gives every bias and BatchNorm statistic random values, so that a dropped channel only
    stays zero where the mask reaches (fresh models have zero shifts, which hides that)."""
    for layer in model.layers:
        for weight in layer.weights:
            name = weight.name.split("/")[-1].split(":")[0]
            shape = tuple(weight.shape)
            if name in ("bias", "beta", "moving_mean"):
                weight.assign(rng.normal(0.0, 0.5, shape).astype("float32"))
            elif name in ("gamma", "moving_variance"):
                weight.assign(rng.uniform(0.5, 1.5, shape).astype("float32"))
        if _keras.is_model(layer):
            randomize(layer, rng)


def check_strip(model: Any, seed: int = 0, exclude: tuple = ()) -> Any:
    """Strips random channels of every prunable group and checks what a user relies on:
    output parity with the masked original, and FLOPs/params exactly as predicted."""
    rng = np.random.default_rng(seed)
    randomize(model, rng)
    plan = dsa_tf.analyze(model, exclude=exclude)
    keep = random_keep(plan, rng)
    stripped = dsa_tf.strip(model, keep, exclude=exclude)
    inputs = [rng.normal(size=(2,) + _keras.shape_of(t)[1:]).astype("float32")
              for t in _keras.model_inputs(model)]
    expected = dsa_tf.masked_call(model, keep, inputs, exclude=exclude)
    actual = tf.nest.flatten(stripped(inputs if len(inputs) > 1 else inputs[0]))
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        scale = max(float(np.abs(e).max()), 1e-6)
        assert np.abs(np.asarray(a) - e).max() <= 1e-5 * scale
    ratios = plan.keep_ratios(keep)
    assert dsa_tf.count_flops(stripped) == round(plan.flops(ratios))
    assert dsa_tf.count_params(stripped) == round(plan.params(ratios))
    assert stripped.count_params() == dsa_tf.count_params(stripped)
    return stripped


def fit_with_dsa(gated: Any, examples: int, batch_size: int, epochs: int, lr: float = 0.05,
                 seed: int = 0, callbacks: list | None = None) -> np.ndarray:
    """Trains a gated classifier (logits) with DSACallback on random data shaped for its
    input and outputs, every DSA setting at its default; returns the inputs it trained on
    (and appends the callback to ``callbacks``, if given)."""
    keras = _keras.keras_of(gated)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples,) + _keras.shape_of(gated.inputs[0])[1:]).astype("float32")
    y = rng.integers(0, gated.outputs[0].shape[-1], examples)
    gated.compile(optimizer=keras.optimizers.SGD(lr),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    alpha = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()
    callback = dsa_tf.DSACallback(alpha, verbose=0)
    if callbacks is not None:
        callbacks.append(callback)
    gated.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[callback])
    return x


def calm(model: Any, factor: float = 0.25) -> None:
    """Scales every BatchNorm's gamma by ``factor``.

    A deep network with random weights and BatchNorm statistics amplifies its rounding
    errors block after block: in EfficientNetV2M/L (float64) the strip-vs-gated difference
    grows geometrically from 1e-12 at block 5 to 4e-4 (M) and 0.5 (L) of the output, each
    squeeze-and-excitation sigmoid multiplying it (measured layer by layer; no layer jumps).
    Smaller gammas keep the activations from growing; the shifts that test the masking stay.
    """
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization" and layer.gamma is not None:
            layer.gamma.assign(layer.gamma * factor)


def check_gated_strip(model: Any, seed: int) -> int:
    """Gates ``model``, sets random keep ratios in [0.15, 0.9], and checks that the strip
    equals the gated model's inference and costs what the plan predicts. Returns the
    number of prunable groups."""
    rng = np.random.default_rng(seed)
    randomize(model, rng)
    calm(model)
    plan = dsa_tf.analyze(model)
    gated = dsa_tf.prune_to_budget(model, 1.0)
    dsa_tf.set_keep_ratios(gated, {name: float(rng.uniform(0.15, 0.9))
                                   for name in dsa_tf.keep_ratios(gated)})
    x = rng.normal(size=(2,) + _keras.shape_of(model.inputs[0])[1:]).astype(model.dtype)
    small = dsa_tf.strip(gated)
    for expected, actual in zip(tf.nest.flatten(gated(x, training=False)),
                                tf.nest.flatten(small(x))):
        expected, actual = np.asarray(expected), np.asarray(actual)
        assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
    # The gated model's plan: its groups can be named after another of their producers.
    gated_plan = dsa_tf.analyze(gated)
    ratios = gated_plan.keep_ratios(gate_keep(gated_plan))
    assert dsa_tf.count_flops(small) == round(gated_plan.flops(ratios))
    assert dsa_tf.count_params(small) == round(gated_plan.params(ratios))
    assert gated_plan.flops(np.ones(len(ratios))) == plan.flops(np.ones(len(ratios)))
    return len(plan.prunable)
