"""taylor_allocation: global pruning by the first-order Taylor estimate of each channel's effect.

Molchanov et al. estimate how much the loss changes when a channel is removed by the
first-order Taylor term of the loss in the channel's activation ("Pruning Convolutional Neural
Networks for Resource Efficient Inference", ICLR 2017; "Importance Estimation for Neural
Network Pruning", CVPR 2019, which puts a gate after each BatchNorm and takes the gradient
with respect to the gate): removing channel i of activation a changes the loss by about
|sum over positions of a_i * dL/da_i|. That sum is exactly dL/dm_i for a mask m = 1
multiplying the channel, so this module computes it with the ChannelGates of
:func:`dsa_tf.prune_to_budget`: one mask per group, applied at every point of the group where
a dropped channel could become non-zero again (after each of its BatchNorms, biases and
shifting activations; where DSA's masks act), which sums the term over those members of the
group. Layer outputs that keep a zero channel zero (a ReLU after a gated BatchNorm, a conv
output read only by its BatchNorm) carry no gate: for a ReLU the term would repeat the gated
input's exactly. Per batch of ``data`` it takes the gradient of
the batch's mean loss, in inference mode (BatchNorm moving statistics, no dropout: the network
as it would be deployed), and sums |dL/dm_i| over ``batches`` batches. The scores are then
normalised per group and pruned with one global threshold, as in
:func:`dsa_tf.magnitude_allocation` (:mod:`dsa_tf.allocation.global_threshold`, which
weighs steps by their FLOPs per millisecond under a latency budget).

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
    >>> data = [(np.random.rand(4, 8, 8, 3).astype("float32"), np.arange(4))] * 2
    >>> loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> keep = dsa_tf.taylor_allocation(model, 0.5, data, loss=loss, batches=2)
    >>> dsa_tf.count_flops(dsa_tf.strip(model, keep)) <= 0.5 * dsa_tf.count_flops(model)
    True
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.allocation.budget import validated_budget
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gates import FROZEN
from dsa_tf.allocation.global_threshold import global_allocation
from dsa_tf.allocation.keep_gradients import resolve_loss
from dsa_tf.allocation.measured_latency import within_measured_latency
from dsa_tf.allocation.prune import prune_to_budget


def taylor_allocation(model: Any, budget: float | Mapping[str, float], data: Iterable, *,
                      loss: Any = None, batches: int = 4, resource: str = "flops",
                      min_channels: int = 1, round_to: int | None = None,
                      exclude: Iterable[str] = (), latency_table: Any = None,
                      ) -> dict[str, np.ndarray]:
    """The channels to keep under one global threshold on normalised Taylor importances.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras), preferably
            trained; not changed (the gradients are taken on a gated copy).
        budget: fraction of the model's resource (0 < budget <= 1), an absolute count, or a
            dict of several constraints such as ``{"flops": 0.5, "params": 0.4}``, as for
            :func:`dsa_tf.prune_to_budget`.
        data: an iterable of ``(x, y)`` batches (a ``tf.data.Dataset`` or a list); a third
            element (sample weights) is ignored.
        loss: ``loss(y_true, y_pred)``, a Keras loss or its name; default: the loss the model
            was compiled with.
        batches: how many batches of ``data`` to accumulate over.
        resource: "flops", "params" or "latency" (for a numeric ``budget``).
        min_channels: the fewest channels any group keeps.
        round_to: every pruned group keeps a multiple of this many channels, or all of them
            (default: 1, and for a latency budget each group's step in the latency table,
            8 or 16: see :func:`dsa_tf.allocation.budget.validated_budget`).
        exclude: layer names whose channels stay whole (see :func:`dsa_tf.analyze`).
        latency_table: for a latency budget, as for :func:`dsa_tf.prune_to_budget`. With a
            table measured on this device (the default), the result is timed against
            the unpruned model and allocated again until it measures 93-97% of the
            budget (:mod:`dsa_tf.allocation.measured_latency`; a line per timing).

    Returns:
        ``{group_name: sorted kept channel indices}`` for every prunable group, what
        :func:`dsa_tf.strip` takes. The stripped model meets every constraint.

    Raises:
        ValueError: for the budgets :func:`dsa_tf.prune_to_budget` refuses, no ``data``, data
            without batches or with batches that are not ``(x, y)``, a ``batches`` count below
            1, or no loss (neither given nor compiled, or one loss per output).

    Example:
        >>> import numpy as np, dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
        >>> model.compile(loss="sparse_categorical_crossentropy")
        >>> data = [(np.random.rand(4, 8, 8, 3).astype("float32"), np.arange(4))]
        >>> keep = dsa_tf.taylor_allocation(model, {"params": 0.5}, data, batches=1)
        >>> len(keep) == len(dsa_tf.analyze(model).prunable)
        True
    """
    resources, fractions, round_to = validated_budget(
        model, budget, resource, min_channels, round_to, exclude, latency_table)
    loss_fn = resolve_loss(model, loss, "taylor_allocation")
    scores = taylor_importance(prune_to_budget(model, 1.0, exclude=exclude), loss_fn,
                               _first_batches(data, batches))
    return within_measured_latency(
        model, budget, resource, resources, fractions,
        lambda target: global_allocation(resources, target, scores, int(min_channels), round_to),
        min_channels=int(min_channels), round_to=round_to, exclude=exclude)


def taylor_importance(gated: Any, loss_fn: Any, batches: list) -> dict[str, np.ndarray]:
    """``{group_name: sum over batches of |dL/dm|}`` for every gate of ``gated``, its masks
    frozen to ones (so that inference applies them and they get a gradient).

    Args:
        gated: a gated model (:func:`dsa_tf.prune_to_budget`); its gates are changed.
        loss_fn: per-example loss ``loss_fn(y_true, y_pred)``, averaged over each batch.
        batches: the ``(x, y)`` batches to use.
    """
    gates = gates_of(gated)
    for gate in gates:
        gate.mask.assign(tf.ones([gate.channels]))
        gate.mode.assign(FROZEN)
    masks = [_keras.tf_variable(gate.mask) for gate in gates]
    scores = {gate.group: np.zeros(gate.channels) for gate in gates}
    for x, y in batches:
        with tf.GradientTape() as tape:
            tape.watch(masks)
            value = tf.reduce_mean(loss_fn(y, gated(x, training=False)))
        for gate, grad in zip(gates, tape.gradient(value, masks)):
            if grad is not None:
                scores[gate.group] += np.abs(grad.numpy())
    return scores


def _first_batches(data: Iterable | None, count: Any) -> list[tuple]:
    """The first ``count`` ``(x, y)`` pairs of ``data``; ValueError for no data, no batch, a
    batch that is not ``(x, y)`` or ``(x, y, sample_weight)``, or a count below 1."""
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise ValueError(f"batches must be a positive integer, got {count!r}.")
    if data is None:
        raise ValueError("taylor_allocation needs data: (x, y) batches to take gradients on.")
    batches = list(itertools.islice(iter(data), int(count)))
    if not batches:
        raise ValueError("data yielded no batch.")
    for batch in batches:
        if not isinstance(batch, (tuple, list)) or not 2 <= len(batch) <= 3:
            raise ValueError(f"data must yield (x, y) batches; got a {type(batch).__name__}.")
    return [tuple(batch[:2]) for batch in batches]


