"""The keep-ratio gradient of DSA: dL/dTheta of every gate on one batch, on any strategy.

Example:
    >>> import numpy as np, tensorflow as tf, dsa_tf
    >>> from dsa_tf.allocation.keep_gradients import keep_ratio_gradients
    >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3)), 0.5)
    >>> loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    >>> x, y = np.random.rand(4, 8, 8, 3).astype("float32"), np.arange(4)
    >>> len(keep_ratio_gradients(gated, loss, x, y)) == len(dsa_tf.keep_ratios(gated))
    True
"""

from __future__ import annotations

import copy
from typing import Any

import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.allocation.gated_model import gates_of, sampled_masks


def keep_ratio_gradients(model: Any, loss_fn: Any, x: Any, y: Any, *,
                         batch_statistics: bool = True) -> list[tf.Tensor]:
    """dL/dTheta of every gate on one batch, through DSA's straight-through estimator.

    The loss L is the batch mean of the per-example losses (:func:`per_example_loss`),
    computed with the gates' current masks m; then dL/dp = dL/dm (straight through) is carried
    to Theta by the implicit gradient of the keep probabilities p:
    dL/dTheta = sum_i dL/dm_i * dp_i/da * a (1 - a).

    ``batch_statistics`` (default True, the paper's training-mode pass) runs the model in
    training mode: BatchNorm normalises with the batch's statistics. A group whose channels
    reach the loss only through ``ReLU -> convolution -> BatchNorm`` then has
    ``sum_i m_i dL/dm_i = 0`` (the batch statistics undo any common scale of its kept
    channels) and ``dL/dm_i = 0`` for its dropped ones (ReLU's derivative at 0), so while its
    keep probabilities are nearly equal (small beta2) its gradient vanishes whatever the
    group's worth. With False the model runs in inference mode (moving BatchNorm statistics,
    no dropout) under the gates' sampled masks (:func:`sampled_masks`): no group's gradient
    vanishes, but it answers a common scale of the group's kept channels (which the moving
    statistics no longer undo) more than their presence. Measured on a trained CIFAR ResNet-14
    (``benchmarks/keep_gradients.py``; BENCHMARKS.md, "Why DSA's widths follow noise"): with
    moving statistics every group's gradient is large and positive, and DSA's allocations got
    worse.

    Under a ``tf.distribute`` strategy (the model's ``distribute_strategy``) the batch is the
    global batch, as the batches ``fit`` gets: replica r of R (counted over all workers) takes
    its contiguous slice r of the batch and computes the gradient of its slice's mean loss
    times the slice's share of the batch, and an all-reduce sums the replicas' gradients.
    That is the gradient of the batch's mean loss (with BatchNorm statistics per replica, as
    in the weight steps), and every replica of every worker gets the same values. Every
    worker must iterate the same alpha data (same batches, same order), as every replica
    slices the batch of its own worker. Without a strategy the single replica takes the whole
    batch.

    Raises:
        ValueError: a batch with fewer examples than replicas (a replica would get none).
    """
    return on_replicas(_replica_keep_ratio_gradients, model, loss_fn, x, y, batch_statistics)


def on_replicas(replica_fn: Any, model: Any, loss_fn: Any, x: Any, y: Any,
                *args: Any) -> list[tf.Tensor]:
    """``replica_fn(model, per-example loss, x, y, *args)`` on every replica of the model's
    strategy with the global batch ``(x, y)`` (each replica slices its share with
    :func:`replica_slice` and all-reduces), returning the first replica's values.

    Raises:
        ValueError: a batch with fewer examples than replicas (a replica would get none).
    """
    strategy = model.distribute_strategy
    x, y = tf.nest.map_structure(tf.convert_to_tensor, (x, y))
    size = tf.nest.flatten(x)[0].shape[0]
    if size is not None and size < strategy.num_replicas_in_sync:
        raise ValueError(f"An alpha_data batch of {size} examples cannot be split over "
                         f"{strategy.num_replicas_in_sync} replicas; batch alpha_data with at "
                         f"least one example per replica (drop_remainder=True).")
    values = strategy.run(replica_fn, args=(model, per_example_loss(loss_fn), x, y, *args))
    return [strategy.experimental_local_results(v)[0] for v in values]


def replica_slice(x: Any, y: Any) -> tuple[Any, Any, tf.Tensor]:
    """In a replica context: this replica's contiguous slice of the global batch ``(x, y)``
    and the slice's share of the batch (the weight of its mean loss)."""
    context = tf.distribute.get_replica_context()
    size = tf.shape(tf.nest.flatten(x)[0])[0]
    replica, replicas = context.replica_id_in_sync_group, context.num_replicas_in_sync
    start, stop = size * replica // replicas, size * (replica + 1) // replicas
    x, y = tf.nest.map_structure(lambda t: t[start:stop], (x, y))
    return x, y, tf.cast(stop - start, tf.float32) / tf.cast(size, tf.float32)


def _replica_keep_ratio_gradients(model: Any, loss_fn: Any, x: Any, y: Any,
                                  batch_statistics: bool) -> list[tf.Tensor]:
    """This replica's weighted share of :func:`keep_ratio_gradients`, all-reduced."""
    context = tf.distribute.get_replica_context()
    x, y, share = replica_slice(x, y)
    gates = gates_of(model)
    masks = [_keras.tf_variable(gate.mask) for gate in gates]
    with tf.GradientTape() as tape:
        tape.watch(masks)
        if batch_statistics:
            outputs = model(x, training=True)
        else:
            with sampled_masks(model):
                outputs = model(x, training=False)
        loss = share * tf.reduce_mean(loss_fn(y, outputs))
    mask_grads = [tf.zeros_like(m) if g is None else g for g, m in
                  zip(tape.gradient(loss, masks), masks)]
    thetas = [_keras.tf_variable(gate.theta) for gate in gates]
    with tf.GradientTape() as tape:
        tape.watch(thetas)
        probabilities = [gate.probabilities() for gate in gates]
    grads = tape.gradient(probabilities, thetas, output_gradients=mask_grads)
    grads = [tf.zeros([]) if g is None else g for g in grads]
    return context.all_reduce(tf.distribute.ReduceOp.SUM, grads)


def resolve_loss(model: Any, loss: Any, caller: str) -> Any:
    """The per-example loss for keep-ratio or importance gradients: ``loss``, else the
    model's compiled loss (a name is looked up in Keras' losses).

    Raises:
        ValueError: no loss at all, or one loss per output (``caller`` names the function to
            pass ``loss=...`` to).
    """
    loss = loss if loss is not None else getattr(model, "loss", None)
    if loss is None:
        raise ValueError(f"{caller} needs a loss: compile the model with one, or pass "
                         f"loss=... (e.g. keras.losses.SparseCategoricalCrossentropy()).")
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(f"The model has one loss per output; pass {caller}(loss=...), a "
                         f"single loss(y_true, y_pred).")
    if isinstance(loss, str):
        loss = _keras.keras_of(model).losses.get(loss)
    return per_example_loss(loss)


def per_example_loss(loss: Any) -> Any:
    """``loss`` giving per-example values, which :func:`keep_ratio_gradients` averages.

    A Keras ``Loss`` object is shallow-copied with reduction "none" (tf_keras refuses a loss
    that averages over the batch under a ``tf.distribute`` strategy, where each replica sees
    only its slice); a loss function, which gives per-example values, is returned as it is.

    Example:
        >>> import tensorflow as tf
        >>> loss = tf.keras.losses.MeanSquaredError()
        >>> per_example_loss(loss)(tf.zeros([2, 1]), tf.ones([2, 1])).numpy().tolist()
        [1.0, 1.0]
    """
    if getattr(loss, "reduction", None) in (None, "none"):
        return loss
    unreduced = copy.copy(loss)
    unreduced.reduction = "none"
    return unreduced
