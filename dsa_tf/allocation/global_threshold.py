"""Global pruning: one threshold on normalised channel scores, across all groups.

The allocation of network slimming (Liu et al., ICCV 2017: prune every channel whose BN scale
is below one global percentile) and of Torch-Pruning's ``global_pruning=True`` (Fang et al.,
CVPR 2023): scores are normalised within each group (divided by the group's mean, so a
threshold means the same in groups of different scales), and channels are removed in
ascending order of normalised score, whatever their group, until every budget constraint
holds. Here the removal stops at the first point of that order where the stripped model meets
the budget exactly (the resources at integer counts, :func:`dsa_tf.allocation.budget.usage`).
A group never goes below ``min_channels`` (rounded up to a multiple of ``round_to``); with
``round_to`` it loses channels in steps that keep its count a multiple of ``round_to`` (the
first step from a width that is not a multiple goes to the multiple below), and a step's
score is the highest score it removes, so a threshold t removes, in each group, the most
channels a legal step allows among those scoring at most t. A group with blocks (a grouped
convolution's channels) loses the same number of channels from every block, the lowest of
each, a step scoring the highest score it removes in any block. Steps of equal score (the equal
|gamma| of an untrained model) go first in the group that has lost the smallest share of its
channels, so that fully tied scores give a near-uniform allocation rather than emptying the
first groups.

Under a latency budget a step's score is weighted by its **efficiency on the device**: the
fraction of the model's FLOPs it removes per fraction of the model's latency it saves (both at
the full width of the other groups; latency as the table predicts it). Scores are normalised
within each group, so without it a threshold compares channels across groups as if every
group's channels cost the device alike; with it, among equally scored channels, those whose
time buys the least computation go first (memory-bound depthwise and narrow operators, counts
the runtime computes as slowly as the next tile), and a latency budget keeps more capacity: on
MobileNetV2 at half its predicted latency, 0.523 of the FLOPs against 0.444 unweighted (and
0.469 for a FLOPs budget rounded to 16 channels by hand; measured: BENCHMARKS.md, "Latency
budgets"). A step that saves no time goes last. Because latency steps are large, the steps
taken last are then given back where the budget still holds (:func:`removal_counts`).
Budgets of FLOPs and params keep the unweighted order and cut (network slimming's); a mixed
budget with latency is weighted.

Example:
    >>> import numpy as np, dsa_tf
    >>> from dsa_tf.allocation.budget import budget_fractions
    >>> from dsa_tf.allocation.resources import ResourceModel
    >>> resources = ResourceModel(dsa_tf.analyze(dsa_tf.models.cifar_resnet(20)))
    >>> scores = {g.name: np.linspace(1, 2, g.channels) for g in resources.plan.prunable}
    >>> keep = global_allocation(resources, budget_fractions(resources, 0.5), scores)
    >>> keep["stem_conv"].tolist()[:3]   # channels 0-4, the lowest scores, went first
    [5, 6, 7]
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from dsa_tf.allocation.budget import fewest_counts, group_steps, meets
from dsa_tf.allocation.importance import block_sorted, normalised, top_channels
from dsa_tf.allocation.resources import ResourceModel


def global_allocation(resources: ResourceModel, fractions: Mapping[str, float],
                      scores: Mapping[str, np.ndarray], min_channels: int = 1,
                      round_to: int | np.ndarray = 1) -> dict[str, np.ndarray]:
    """The keep dict of a global threshold on normalised ``scores`` that meets the budget.

    Args:
        resources: the model's resource model (its ``plan`` names the groups).
        fractions: the budget as fractions (from
            :func:`dsa_tf.allocation.budget.budget_fractions`, which checks it is reachable).
        scores: ``{group_name: per-channel score}`` for every prunable group; higher is more
            important. Normalised here with :func:`dsa_tf.allocation.importance.normalised`.
        min_channels: the fewest channels any group keeps.
        round_to: groups keep multiples of this many channels, or all of them (one for all
            groups, or one per group in plan order).

    Returns:
        ``{group_name: sorted kept channel indices}`` for every prunable group.
    """
    counts = removal_counts(resources, fractions, normalised(scores), min_channels, round_to)
    return top_channels(resources.plan, scores, counts)


def removal_counts(resources: ResourceModel, fractions: Mapping[str, float],
                   scores: Mapping[str, np.ndarray], min_channels: int = 1,
                   round_to: int | np.ndarray = 1) -> np.ndarray:
    """Kept channel counts (one per prunable group) after removing the lowest-scoring steps
    until the budget holds: the fewest steps of the global order that meet it (bisection
    over the number of steps; fewer channels never cost more). Under a latency budget the
    last step taken can be large (16 channels of a wide early layer, or several steps of a
    group at once when a lower count of it came earlier in the weighted order), so the
    removed steps are then given back, the last removed first, wherever the budget still
    holds (other budgets keep the threshold's cut: their steps are small by default, and
    giving back steps would favour the cheapest groups over the scores)."""
    plan = resources.plan
    channels = np.array([g.channels for g in plan.prunable])
    step_scores, step_shares, step_groups, step_counts = [], [], [], []
    steps = group_steps(plan, round_to)
    for k, (group, fewest, step) in enumerate(zip(
            plan.prunable, fewest_counts(plan, min_channels, round_to), steps.tolist())):
        ascending = block_sorted(scores[group.name], group.blocks)
        size = ascending.shape[1]
        counts = list(range((group.channels - 1) // step * step, fewest - 1, -step))
        weights = (_device_efficiency(resources, k, counts) if "latency" in fractions
                   else np.ones(len(counts)))
        for count, weight in zip(counts, weights):
            score = ascending[:, size - count // group.blocks - 1].max()
            step_scores.append(np.inf if np.isinf(weight) else score * weight)
            step_shares.append(1 - count / group.channels)  # removed after the step
            step_groups.append(k)
            step_counts.append(count)
    order = np.lexsort((np.array(step_shares, dtype=np.float64),
                        np.array(step_scores, dtype=np.float64)))
    groups = np.array(step_groups, dtype=np.int64)[order]
    counts = np.array(step_counts, dtype=np.int64)[order]

    def after(removed: np.ndarray) -> np.ndarray:
        kept = channels.copy()
        np.minimum.at(kept, groups[removed], counts[removed])
        return kept

    low, high = 0, len(order)  # all steps: every group at its fewest, which meets the budget
    while low < high:
        middle = (low + high) // 2
        met = meets(resources, fractions, after(np.arange(middle)))
        low, high = (low, middle) if met else (middle + 1, high)
    removed = np.ones(high, dtype=bool)
    kept = after(np.arange(high))
    for step in range(high - 1 if "latency" in fractions else -1, -1, -1):
        removed[step] = False
        candidate = after(np.flatnonzero(removed))
        if np.array_equal(candidate, kept) or not meets(resources, fractions, candidate):
            removed[step] = True  # no effect on its own, or over the budget: stays removed
        else:
            kept = candidate
    return kept


def _device_efficiency(resources: ResourceModel, group: int, counts: list[int]) -> np.ndarray:
    """For each step of ``group`` (from the previous count, or the full width, down to each
    of ``counts``, the other groups whole): the fraction of the model's FLOPs it removes over
    the fraction of its predicted latency it saves; infinite for a step that saves no time."""
    channels = resources.plan.prunable[group].channels
    widths = [channels, *counts]
    flops, latency = (np.array([_at(resources, name, group, n / channels) for n in widths])
                      for name in ("flops", "latency"))
    removed = -np.diff(flops) / resources.full("flops")
    saved = -np.diff(latency) / resources.full("latency")
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(saved > 0, removed / np.where(saved > 0, saved, 1.0), np.inf)


def _at(resources: ResourceModel, name: str, group: int, ratio: float) -> float:
    """``name`` with ``group`` at keep ratio ``ratio`` and every other group whole."""
    ratios = np.ones(len(resources.plan.prunable))
    ratios[group] = ratio
    return resources.value(name, ratios)
