"""A keep-ratio signal that sees channels' presence: central differences of the loss.

DSA's straight-through gradient (:func:`dsa_tf.allocation.keep_gradients.keep_ratio_gradients`)
vanishes for a group whose channels reach the loss through ``ReLU -> convolution ->
BatchNorm`` while its keep probabilities are nearly equal: the batch statistics undo a common
scale of its kept channels and a dropped channel's gradient is zero at ReLU's kink. The loss
itself does see whether channels are there. For every group k this module evaluates the batch
loss with the group's mask drawn at keep ratios ``a_k - delta`` and ``a_k + delta`` from the
same noise as the step's mask (common random numbers: the higher ratio keeps a superset, the
channels between the two are those a slightly larger keep ratio would add), every other group
at its sampled mask, and returns

    dL/dTheta_k ~ (L(hi) - L(lo)) / (hi - lo) * a_k (1 - a_k),   lo, hi = a_k -+ delta in [0, 1]

in the units of the straight-through gradient, so the ADMM takes either. The forward passes
run in training mode (BatchNorm with the batch's statistics, as the paper's Theta step); the
caller restores the moving statistics. It costs two forward passes per group and alpha batch
(no backward pass).

:func:`keep_ratio_top_k_differences` asks the same question of the network the weights train
under with top-k masks: every group at its k most important channels, the loss with group k
dropping its least important kept channels (down to the count at ``a_k - delta``, at least one
step of its rounding) against the loss with all of them,

    dL/dTheta_k ~ (L(k) - L(k_lo)) / ((k - k_lo) / C) * a_k (1 - a_k),

a one-sided difference with no mask noise in it (only the batch's), in one forward pass per
group plus one shared.

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> from dsa_tf.allocation.gated_model import resample_masks
    >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3)), 0.5)
    >>> resample_masks(gated)
    >>> loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> x, y = np.random.rand(4, 8, 8, 3).astype("float32"), np.arange(4)
    >>> len(keep_ratio_differences(gated, loss, x, y)) == len(dsa_tf.keep_ratios(gated))
    True
    >>> len(keep_ratio_top_k_differences(gated, loss, x, y)) == len(dsa_tf.keep_ratios(gated))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from dsa_tf.allocation import keep_process
from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.keep_gradients import on_replicas, replica_slice

DELTA = 0.05


def keep_ratio_differences(model: Any, loss_fn: Any, x: Any, y: Any, *,
                           delta: float = DELTA) -> list[tf.Tensor]:
    """dL/dTheta of every gate on one batch, by central differences of the loss (module
    docstring), on the global batch under a ``tf.distribute`` strategy as
    :func:`dsa_tf.allocation.keep_gradients.keep_ratio_gradients` does.

    Args:
        model: a gated model whose gates hold this step's sampled masks.
        loss_fn: per-example loss ``loss(y_true, y_pred)``.
        x, y: one alpha batch.
        delta: half the width of the keep-ratio interval (0 < delta <= 0.5).

    Raises:
        ValueError: a ``delta`` outside (0, 0.5], or a batch with fewer examples than
            replicas.
    """
    return _on_replicas(_central_differences, model, loss_fn, x, y, delta)


def keep_ratio_top_k_differences(model: Any, loss_fn: Any, x: Any, y: Any, *,
                                 delta: float = DELTA) -> list[tf.Tensor]:
    """dL/dTheta of every gate on one batch under the top-k masks, by one-sided differences of
    the loss (module docstring), on the global batch under a ``tf.distribute`` strategy. The
    gates' masks are left as they were. A group already at its fewest channels gets 0.

    Args:
        model: a gated model.
        loss_fn: per-example loss ``loss(y_true, y_pred)``.
        x, y: one alpha batch.
        delta: the keep-ratio step down (0 < delta <= 0.5); at least one step of the
            group's rounding is dropped.

    Raises:
        ValueError: a ``delta`` outside (0, 0.5], or a batch with fewer examples than
            replicas.
    """
    return _on_replicas(_top_k_differences, model, loss_fn, x, y, delta)


def _on_replicas(signal: Callable, model: Any, loss_fn: Any, x: Any, y: Any,
                 delta: float) -> list[tf.Tensor]:
    """``signal(model, loss, delta)`` on every replica's slice of the global batch, summed
    over the replicas; ``loss()`` is the replica's weighted share of the batch loss in
    training mode under the gates' current masks."""
    if not 0 < delta <= 0.5:
        raise ValueError(f"delta must be in (0, 0.5], got {delta}.")
    return on_replicas(_replica_signal, model, loss_fn, x, y, signal, float(delta))


def _replica_signal(model: Any, loss_fn: Any, x: Any, y: Any, signal: Callable,
                    delta: float) -> list[tf.Tensor]:
    """This replica's share of :func:`_on_replicas`, all-reduced."""
    x, y, share = replica_slice(x, y)

    # One traced function called 2K (or K + 1) times, not inlined: inlined, every call was
    # traced and optimised anew, which took 145 s before a MobileNetV2's first ADMM update
    # and 203 s before a ResNet-56's (29 and 48 s not inlined), for iterations 3-37% faster
    # (benchmarks/allocation_cost.py, BENCHMARKS.md "The allocation's cost").
    @tf.function(experimental_attributes={"_noinline": True})
    def loss() -> tf.Tensor:
        return share * tf.reduce_mean(loss_fn(y, model(x, training=True)))

    context = tf.distribute.get_replica_context()
    return context.all_reduce(tf.distribute.ReduceOp.SUM, signal(model, loss, delta))


def _central_differences(model: Any, loss: Callable, delta: float) -> list[tf.Tensor]:
    """Per gate, the loss at its masks sampled for a -+ delta (:func:`keep_ratio_differences`)."""
    grads = []
    for gate in gates_of(model):
        sampled = tf.identity(tf.convert_to_tensor(gate.mask))
        a = gate.keep_ratio()
        lo, hi = tf.maximum(a - delta, 0.0), tf.minimum(a + delta, 1.0)
        losses = []
        for ratio in (lo, hi):  # variable writes and reads run in program order
            gate.mask.assign(tf.stop_gradient(gate.sample(ratio)))
            losses.append(loss())
        gate.mask.assign(sampled)
        grads.append((losses[1] - losses[0]) / (hi - lo) * a * (1.0 - a))
    return grads


def _top_k_differences(model: Any, loss: Callable, delta: float) -> list[tf.Tensor]:
    """Per gate, the loss at its top-k mask with fewer channels, every other gate at its top-k
    mask (:func:`keep_ratio_top_k_differences`); the gates' masks are restored."""
    gates = gates_of(model)
    saved = [tf.identity(tf.convert_to_tensor(gate.mask)) for gate in gates]
    tops = [tf.stop_gradient(gate.top_k_mask()) for gate in gates]
    for gate, top in zip(gates, tops):
        gate.mask.assign(top)
    full = loss()
    grads = []
    for gate, top in zip(gates, tops):
        a = gate.keep_ratio()
        kept, fewer = _kept_and_fewer(gate, a, delta)
        importance = tf.convert_to_tensor(gate.importance)
        gate.mask.assign(keep_process.hard_mask(
            importance, tf.cast(fewer, tf.float64) / gate.channels, blocks=gate.blocks))
        dropped = tf.cast(kept - fewer, full.dtype) / gate.channels
        lower = loss()
        gate.mask.assign(top)
        grads.append(tf.where(dropped > 0, (full - lower) / tf.maximum(dropped, 1e-9), 0.0)
                     * a * (1.0 - a))
    for gate, mask in zip(gates, saved):
        gate.mask.assign(mask)
    return grads


def _kept_and_fewer(gate: Any, a: tf.Tensor, delta: float) -> tuple[tf.Tensor, tf.Tensor]:
    """The gate's kept count at ``a`` and the count at ``a - delta``, at least one rounding
    step fewer (the two are equal only at the gate's fewest channels)."""
    def count(ratio: tf.Tensor) -> tf.Tensor:
        return keep_process.kept_count(ratio, gate.channels, gate.min_channels, gate.round_to)

    kept = count(a)
    step_down = count(tf.cast(kept - max(gate.round_to, gate.blocks), tf.float64) / gate.channels)
    return kept, tf.minimum(count(a - delta), step_down)
