"""magnitude_allocation: global pruning by weight magnitude (network slimming).

Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017) ranks channels by the |gamma| of their BatchNorms and removes those
below one threshold shared by the whole network, which decides how many channels each layer
keeps; Torch-Pruning's ``MagnitudeImportance`` / ``BNScaleImportance`` with
``global_pruning=True`` (Fang et al., CVPR 2023) does the same on coupled groups. Here a
channel's importance is summed over its group's members: the |gamma| of every BatchNorm
carrying only that group, or, for a group without BatchNorm, the L2 norms of its producers'
filters (:mod:`dsa_tf.allocation.importance`). Network slimming thresholds raw scales, which
its L1 penalty on gamma makes comparable; for a model trained without it, importances are
divided here by their group's mean (Torch-Pruning's "mean" normaliser), so that the summed
|gamma| of a residual stage's several BatchNorms and a single conv's filter norms compare as
"above or below the group's average". The global threshold then rises until the budget holds
(:mod:`dsa_tf.allocation.global_threshold`; under a latency budget each step's score is
weighted by the FLOPs it removes per millisecond it saves, and the budget is filled).

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> keep = dsa_tf.magnitude_allocation(model, {"flops": 0.5, "params": 0.4})
    >>> dsa_tf.count_params(dsa_tf.strip(model, keep)) <= 0.4 * dsa_tf.count_params(model)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.budget import validated_budget
from dsa_tf.allocation.global_threshold import global_allocation
from dsa_tf.allocation.importance import channel_importance
from dsa_tf.allocation.measured_latency import within_measured_latency


def magnitude_allocation(model: Any, budget: float | Mapping[str, float], *,
                         resource: str = "flops", min_channels: int = 1,
                         round_to: int | None = None,
                         exclude: Iterable[str] = (), latency_table: Any = None,
                         ) -> dict[str, np.ndarray]:
    """The channels to keep under one global threshold on normalised weight magnitudes.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras), preferably
            trained (magnitudes of fresh weights say little); not changed.
        budget: fraction of the model's resource (0 < budget <= 1), an absolute count, or a
            dict of several constraints such as ``{"flops": 0.5, "params": 0.4}``, as for
            :func:`dsa_tf.prune_to_budget`.
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
        ValueError: for the budgets :func:`dsa_tf.prune_to_budget` refuses (bad forms, unknown
            resource, below the reachable minimum, a model without prunable groups).

    Example:
        >>> import dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(20)
        >>> keep = dsa_tf.magnitude_allocation(model, 0.5, round_to=8)
        >>> all(len(k) % 8 == 0 for k in keep.values())
        True
    """
    resources, fractions, round_to = validated_budget(
        model, budget, resource, min_channels, round_to, exclude, latency_table)
    scores = channel_importance(resources.plan, norm_order=2)
    return within_measured_latency(
        model, budget, resource, resources, fractions,
        lambda target: global_allocation(resources, target, scores, int(min_channels), round_to),
        min_channels=int(min_channels), round_to=round_to, exclude=exclude)
