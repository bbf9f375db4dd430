"""Budgets: validating them, and the resources an integer channel configuration uses.

Every allocator (DSA's gates, the baselines) takes the same budget forms: a fraction of the
model's FLOPs or params, an absolute count, or a dict of several constraints that must all
hold. :func:`budget_fractions` turns any of them into fractions of the full model, and
:func:`usage` measures a configuration of kept channel counts (one per prunable group) with
the plan's quadratic resource models, which are exact at integer counts: ``usage`` equals
``count_flops`` / ``count_params`` of the stripped model divided by the full model's.

Example:
    >>> import numpy as np, dsa_tf
    >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
    >>> fractions = budget_fractions(plan, {"flops": 0.5, "params": 0.6})
    >>> half = np.array([g.channels // 2 for g in plan.prunable])
    >>> meets(plan, fractions, half), round(usage(plan, half, ["flops"])["flops"], 3)
    (True, 0.253)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.keep_process import kept_count
from dsa_tf.structure.graph import ChannelPlan, analyze

RESOURCES = ("flops", "params")


def check_rounding(min_channels: Any, round_to: Any) -> None:
    """Raises ValueError unless ``min_channels`` and ``round_to`` are positive integers."""
    for name, value, rule in (("min_channels", min_channels, "be at least 1 (an integer)"),
                              ("round_to", round_to, "be a positive integer")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must {rule}, got {value!r}.")


def fewest_counts(plan: ChannelPlan, min_channels: int = 1, round_to: int = 1) -> np.ndarray:
    """The fewest channels each prunable group may keep: ``min_channels`` rounded up to a
    multiple of ``round_to``, or all of its channels if it has fewer (the rule of
    :func:`dsa_tf.allocation.keep_process.kept_count`)."""
    channels = np.array([g.channels for g in plan.prunable])
    return np.asarray(kept_count(0.0, channels, min_channels, round_to), dtype=np.int64)


def usage(plan: ChannelPlan, counts: np.ndarray, resources: Iterable[str]) -> dict[str, float]:
    """Each resource of the model stripped to ``counts`` kept channels per prunable group, as
    a fraction of the full model's (exact: integer counts over integer counts).

    Args:
        plan: the model's channel plan.
        counts: kept channel count of every group of ``plan.prunable``, in that order.
        resources: names among ``RESOURCES``.
    """
    channels = np.array([g.channels for g in plan.prunable], dtype=np.float64)
    ratios = np.asarray(counts, dtype=np.float64) / channels
    result = {}
    for name in resources:
        form = getattr(plan, name)
        result[name] = round(form(ratios)) / round(form(np.ones(len(channels))))
    return result


def meets(plan: ChannelPlan, fractions: Mapping[str, float], counts: np.ndarray) -> bool:
    """Whether ``counts`` (one per prunable group) meets every constraint of ``fractions``."""
    used = usage(plan, counts, fractions)
    return all(used[name] <= fraction for name, fraction in fractions.items())


def budget_fractions(plan: ChannelPlan, budget: float | Mapping[str, float],
                     resource: str = "flops", min_channels: int = 1,
                     round_to: int = 1) -> dict[str, float]:
    """Validates a budget and returns it as fractions of the model's resources.

    Args:
        plan: the model's channel plan.
        budget: a fraction (0 < budget <= 1) or an absolute count (> 1) of ``resource``, or a
            dict ``{"flops": 0.5, "params": 0.4}`` of constraints that must all hold.
        resource: "flops" or "params", when ``budget`` is a number.
        min_channels: the fewest channels every group keeps.
        round_to: groups keep multiples of this many channels (or all of them).

    Raises:
        ValueError: for an unknown resource, a budget that is not a positive finite number, an
            absolute budget above the model's resource, or a budget below the smallest value
            reachable with ``min_channels`` channels (rounded up to a multiple of ``round_to``)
            in every prunable group (the message states that minimum).

    Example:
        >>> import dsa_tf
        >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
        >>> budget_fractions(plan, 0.5, resource="params")
        {'params': 0.5}
    """
    constraints = dict(budget) if isinstance(budget, Mapping) else {resource: budget}
    if not constraints:
        raise ValueError("budget is an empty dict; give at least one of 'flops', 'params'.")
    if not plan.prunable:
        raise ValueError(f"{plan.model.name!r} has no prunable channel group; "
                         f"dsa_tf.analyze(model) lists every group and why it is not prunable.")
    lowest = fewest_counts(plan, min_channels, round_to)
    fractions = {}
    for name, value in constraints.items():
        if name not in RESOURCES:
            raise ValueError(f"Unknown resource {name!r}; use one of {RESOURCES}.")
        full = round(getattr(plan, name)(np.ones(len(plan.prunable))))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"The {name} budget must be a positive finite number, got {value!r}.")
        fraction = float(value) if value <= 1 else float(value) / full
        if fraction > 1:
            raise ValueError(f"The {name} budget {value:,} exceeds the model's {full:,} {name} "
                             f"(a budget above 1 is an absolute count; a share is in (0, 1]).")
        reachable = usage(plan, lowest, [name])[name]
        if fraction < reachable:
            given = f"{fraction:.4f}" if value <= 1 else f"{value:,} ({fraction:.4f})"
            raise ValueError(
                f"The {name} budget {given} (of the model's {full:,} {name}) cannot be met: with "
                f"min_channels={min_channels}, round_to={round_to} in every prunable group the "
                f"smallest reachable value is {reachable:.4f} ({reachable * full:,.0f} {name}).")
        fractions[name] = fraction
    return fractions


def validated_budget(model: Any, budget: float | Mapping[str, float], resource: str,
                     min_channels: int, round_to: int,
                     exclude: Iterable[str]) -> tuple[ChannelPlan, dict[str, float]]:
    """Analyzes ``model`` and validates the budget and rounding: the common first step of the
    allocators. Returns the plan and the budget as fractions (see :func:`budget_fractions`).

    Example:
        >>> import dsa_tf
        >>> plan, fractions = validated_budget(dsa_tf.models.cifar_resnet(20), 0.5, "flops",
        ...                                    1, 1, ())
        >>> fractions
        {'flops': 0.5}
    """
    check_rounding(min_channels, round_to)
    plan = analyze(model, exclude)
    return plan, budget_fractions(plan, budget, resource, int(min_channels), int(round_to))
