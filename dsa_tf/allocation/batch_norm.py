"""reestimate_batchnorm: BatchNorm moving statistics recomputed for the channels a model keeps.

BatchNorm layers normalise with batch statistics in training and with moving averages in
inference. The moving averages trail the network: with momentum 0.99 they average the last
few hundred steps, and in a pruned network they were gathered under other masks (DSA's
random masks during the allocation) or, for a model pruned one-shot, under the full width.
Inference then disagrees with training. Re-estimating them on a few batches with the final
masks closes that gap (measurements in BENCHMARKS.md, "BatchNorm statistics").

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
    >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(64, 8, 8, 3)).astype("float32")
    >>> dsa_tf.reestimate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x).batch(16))
    4
    >>> bn = model.get_layer("stem_bn")
    >>> bool(np.abs(np.asarray(bn.moving_mean)).max() > 0.1)   # no longer the initial zeros
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import tensorflow as tf


def reestimate_batchnorm(model: Any, data: Iterable, batches: int = 32) -> int:
    """Sets every BatchNorm's moving mean and variance to the average of its batch statistics
    over ``batches`` batches of ``data`` (model in training mode, weights unchanged).

    The model runs as it trains: dropout active, a gated model's gates applying their
    training masks (the frozen masks after DSA's allocation). Each BatchNorm's moving
    statistics become the mean over the batches of its batch mean and batch variance, as
    PyTorch's cumulative BatchNorm averaging does; nothing else changes (the layers' momentum
    is restored). Nested models are included.

    Args:
        model: a Keras model (Keras 3 or tf_keras), plain, stripped or gated.
        data: batches of inputs, or of ``(x, y)`` / ``(x, y, sample_weight)`` tuples (labels
            are ignored): a ``tf.data.Dataset`` or a list. Use training images, augmented as
            in training.
        batches: how many batches to average (fewer if ``data`` has fewer).

    Returns:
        The number of batches used (0 when the model has no BatchNorm).

    Raises:
        ValueError: ``batches < 1`` or ``data`` yields no batch.
    """
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}.")
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)]
            for layer in layers]
    used = 0
    try:
        for layer in layers:
            layer.momentum = 0.0  # each batch sets the moving statistics to its own
        forward = tf.function(lambda x: model(x, training=True))  # traced with momentum 0
        for batch in itertools.islice(iter(data), batches):
            forward(batch[0] if isinstance(batch, (tuple, list)) else batch)
            for total, layer in zip(sums, layers):
                total[0] += np.asarray(layer.moving_mean)
                total[1] += np.asarray(layer.moving_variance)
            used += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if not used:
        raise ValueError("reestimate_batchnorm: data yielded no batch.")
    for (mean, variance), layer in zip(sums, layers):
        layer.moving_mean.assign(mean / used)
        layer.moving_variance.assign(variance / used)
    return used


def batch_norm_layers(model: Any) -> list:
    """Every BatchNormalization layer of ``model``, nested models included, each once."""
    found: dict[int, Any] = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop(0)
        if hasattr(layer, "layers") and not hasattr(layer, "moving_mean"):
            stack[:0] = list(layer.layers)
        elif hasattr(layer, "moving_mean") and hasattr(layer, "moving_variance"):
            found.setdefault(id(layer), layer)
    return list(found.values())
