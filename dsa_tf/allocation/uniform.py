"""uniform_allocation: every prunable group keeps the same share of its channels.

The width multiplier of MobileNets (Howard et al., 2017) and the "uniform" baseline that
allocation methods such as AMC (He et al., ECCV 2018) compare against: one keep ratio a for
all groups, the largest that meets the budget. Counts follow the gates' rounding rule
(k = round(a C), a multiple of ``round_to`` or C, at least ``min_channels``;
:func:`dsa_tf.allocation.keep_process.kept_count`), and a is found by bisection at those
integer counts, so the budget holds exactly. What rounding down leaves of the budget is then
filled one step at a time, each to the group furthest (in steps) below a C, while one fits,
at most one step per group (:func:`dsa_tf.allocation.fitted_counts.fitted_counts` with equal
logits and ``most_steps=1``): every group keeps within one step of the same ratio.
With steps of 8 or 16 (a latency budget's default), rounding every group down alone left
much of a budget unused: CIFAR ResNet-56 at a predicted 0.363 of its latency for every budget
from 0.40 to 0.50, 0.296 of its FLOPs; filled, 0.400 at 0.50 (BENCHMARKS.md, "The uniform
allocator fills what rounding down leaves"). At equal latency one common ratio still keeps
fewer FLOPs than hand rounding to 16 where the steps are mixed. Each group keeps
its most important channels, ranked as DSA's gates rank them (|gamma| of its BatchNorms, else
the L1 norms of its producers' filters).

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> keep = dsa_tf.uniform_allocation(model, 0.5)
    >>> dsa_tf.count_flops(dsa_tf.strip(model, keep)) <= 0.5 * dsa_tf.count_flops(model)
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.budget import meets, validated_budget
from dsa_tf.allocation.fitted_counts import fitted_counts
from dsa_tf.allocation.importance import channel_importance, top_channels
from dsa_tf.allocation.measured_latency import within_measured_latency


def uniform_allocation(model: Any, budget: float | Mapping[str, float], *,
                       resource: str = "flops", min_channels: int = 1, round_to: int | None = None,
                       exclude: Iterable[str] = (), latency_table: Any = None,
                       ) -> dict[str, np.ndarray]:
    """The channels to keep when every prunable group keeps the same ratio.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras); not changed.
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
        >>> keep = dsa_tf.uniform_allocation(dsa_tf.models.cifar_resnet(20), 0.5, round_to=4)
        >>> sorted({len(k) for k in keep.values()})  # of 16, 32 (one group a step more), 64
        [12, 20, 24, 44]
    """
    resources, fractions, round_to = validated_budget(
        model, budget, resource, min_channels, round_to, exclude, latency_table)
    plan = resources.plan
    channels = np.array([g.channels for g in plan.prunable])

    def allocate(target: Mapping[str, float]) -> dict[str, np.ndarray]:
        # the fewest channels meet the budget (validated)
        counts = fitted_counts(np.zeros(len(channels)), channels, int(min_channels), round_to,
                               lambda kept: meets(resources, target, kept), most_steps=1)
        return top_channels(plan, importance, counts)

    importance = channel_importance(plan)
    return within_measured_latency(model, budget, resource, resources, fractions, allocate,
                                   min_channels=int(min_channels), round_to=round_to,
                                   exclude=exclude)
