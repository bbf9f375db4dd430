"""Channel importance from weights: BatchNorm scales or filter norms, per channel group.

A group's channels are ranked by the |gamma| of its BatchNorms (network slimming, Liu et al.,
ICCV 2017; DSA's base importance), or, for a group without BatchNorm, by the norms of its
producers' filters. A group with several such layers (the BatchNorms of a residual stage)
sums them, as Torch-Pruning's group importance does; within a group that gives the ranking
DSA's gates use (they average the same values).

Example:
    >>> import dsa_tf
    >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
    >>> importance = channel_importance(plan)
    >>> importance["stem_conv"].shape   # |gamma| of the stage's 4 BatchNorms, summed
    (16,)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf.structure.graph import ChannelPlan, FlatCall


def layer_importance(layer: Any, norm_order: int = 1) -> tf.Tensor:
    """|gamma| of a BatchNorm, or the L1 (``norm_order=1``) or L2 (``norm_order=2``) norm of
    each output filter of a convolution or Dense layer.

    Example:
        >>> import tensorflow as tf
        >>> dense = tf.keras.layers.Dense(2, kernel_initializer="ones")
        >>> _ = dense(tf.zeros([1, 4]))
        >>> layer_importance(dense, norm_order=2).numpy().tolist()
        [2.0, 2.0]
    """
    kind = type(layer).__name__
    if kind == "BatchNormalization":
        if layer.gamma is None:
            return tf.ones(layer.beta.shape, dtype=layer.beta.dtype)
        return tf.abs(tf.convert_to_tensor(layer.gamma))
    kernel = layer.pointwise_kernel if kind.startswith("Separable") else layer.kernel
    kernel = tf.convert_to_tensor(kernel)
    out_axis = kernel.shape.rank - (2 if "Transpose" in kind else 1)
    axes = [a for a in range(kernel.shape.rank) if a != out_axis]
    return tf.reduce_sum(tf.abs(kernel) ** norm_order, axis=axes) ** (1.0 / norm_order)


def importance_sources(plan: ChannelPlan) -> dict[str, list[FlatCall]]:
    """For each prunable group, the calls whose weights rank its channels: its BatchNorms
    (those whose output carries this group only), else its producers. Each layer once."""
    batch_norms: dict[str, list[FlatCall]] = {}
    producers: dict[str, list[FlatCall]] = {}
    seen: set[int] = set()
    for fc in plan.calls:
        if fc.opaque or not fc.out_maps or fc.out_maps[0] is None or id(fc.op) in seen:
            continue
        groups = np.unique(plan.group_of_space[fc.out_maps[0].spaces]).tolist()
        if len(groups) != 1 or not plan.groups[groups[0]].prunable:
            continue
        group = plan.groups[groups[0]]
        if type(fc.op).__name__ == "BatchNormalization":
            batch_norms.setdefault(group.name, []).append(fc)
        elif fc.name in group.producers:
            producers.setdefault(group.name, []).append(fc)
        seen.add(id(fc.op))
    return {g.name: batch_norms.get(g.name) or producers.get(g.name, []) for g in plan.prunable}


def channel_importance(plan: ChannelPlan, norm_order: int = 1) -> dict[str, np.ndarray]:
    """Each prunable group's channel importance: the sum over its :func:`importance_sources`
    of :func:`layer_importance`, each value added to the group channel it belongs to.

    Args:
        plan: the model's channel plan.
        norm_order: 1 or 2, the filter norm used for groups without BatchNorm.

    Returns:
        ``{group_name: importance}``, float64 arrays of the group's channel count.
    """
    sources = importance_sources(plan)
    result = {}
    for group in plan.prunable:
        total = np.zeros(group.channels)
        for fc in sources[group.name]:
            values = layer_importance(fc.op, norm_order).numpy().astype(np.float64)
            np.add.at(total, fc.out_maps[0].index, values)
        result[group.name] = total
    return result


def normalised(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every group's scores divided by the group's mean score (Torch-Pruning's "mean"
    normaliser), so that a global threshold compares groups of different scales: a channel
    scoring 1 is an average channel of its group. An all-zero group stays zero.

    Example:
        >>> import numpy as np
        >>> normalised({"a": np.array([1.0, 3.0]), "b": np.zeros(2)})["a"].tolist()
        [0.5, 1.5]
    """
    return {name: s / s.mean() if s.mean() > 0 else np.zeros_like(s)
            for name, s in scores.items()}


def top_channels(plan: ChannelPlan, scores: Mapping[str, np.ndarray],
                 counts: np.ndarray) -> dict[str, np.ndarray]:
    """The keep dict of ``counts`` (one per prunable group): each group's highest-scoring
    channels, sorted indices; ties keep the lower index, as the gates' top-k does. A group
    with blocks (a grouped convolution's channels) keeps the highest-scoring
    ``count / blocks`` of every block.

    Example:
        >>> import numpy as np, dsa_tf
        >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
        >>> scores = {g.name: -np.arange(g.channels, dtype=float) for g in plan.prunable}
        >>> top_channels(plan, scores, [2] * len(plan.prunable))["stem_conv"].tolist()
        [0, 1]
    """
    keep = {}
    for group, count in zip(plan.prunable, counts):
        rows = np.asarray(scores[group.name]).reshape(group.blocks, -1)
        best = np.argsort(-rows, axis=1, kind="stable")[:, :int(count) // group.blocks]
        keep[group.name] = np.sort((best + rows.shape[1] * np.arange(group.blocks)[:, None])
                                   .ravel())
    return keep


def block_sorted(scores: np.ndarray, blocks: int) -> np.ndarray:
    """Each of ``blocks`` equal, contiguous blocks of ``scores`` in ascending order, shape
    (blocks, len(scores) / blocks).

    Example:
        >>> block_sorted(np.array([3.0, 1.0, 0.0, 2.0]), 2).tolist()
        [[1.0, 3.0], [0.0, 2.0]]
    """
    return np.sort(np.asarray(scores).reshape(blocks, -1), axis=1)
