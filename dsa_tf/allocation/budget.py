"""Budgets: validating them, and the resources an integer channel configuration uses.

Every allocator (DSA's gates, the baselines) takes the same budget forms: a fraction of the
model's FLOPs, params or latency, an absolute count (or milliseconds of latency), or a dict of
several constraints that must all hold. :func:`budget_fractions` turns any of them into
fractions of the full model, and :func:`usage` measures a configuration of kept channel counts
(one per prunable group) with the model's :class:`ResourceModel`, exact at integer counts:
``usage`` equals ``count_flops`` / ``count_params`` of the stripped model divided by the full
model's, and the latency the table predicts for it over the full model's.

Example:
    >>> import numpy as np, dsa_tf
    >>> resources = ResourceModel(dsa_tf.analyze(dsa_tf.models.cifar_resnet(20)))
    >>> fractions = budget_fractions(resources, {"flops": 0.5, "params": 0.6})
    >>> half = np.array([g.channels // 2 for g in resources.plan.prunable])
    >>> meets(resources, fractions, half), round(usage(resources, half, ["flops"])["flops"], 3)
    (True, 0.253)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.keep_process import kept_count
from dsa_tf.allocation.resources import RESOURCES, UNITS, ResourceModel, latency_table_path
from dsa_tf.structure.graph import ChannelPlan, analyze


def check_rounding(min_channels: Any, round_to: Any) -> None:
    """Raises ValueError unless ``min_channels`` and ``round_to`` are positive integers."""
    for name, value, rule in (("min_channels", min_channels, "be at least 1 (an integer)"),
                              ("round_to", round_to, "be a positive integer")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must {rule}, got {value!r}.")


def group_steps(plan: ChannelPlan, round_to: int | np.ndarray = 1) -> np.ndarray:
    """The step of every prunable group's kept count (plan order): ``round_to`` (one for all
    groups, or one per group), or its least common multiple with the group's
    :attr:`~dsa_tf.structure.graph.Group.blocks` (a grouped convolution's channels keep the
    same count in every block).

    Example:
        >>> import tensorflow as tf, dsa_tf
        >>> layers = tf.keras.layers
        >>> model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), layers.Conv2D(8, 1),
        ...                              layers.Conv2D(12, 3, groups=4), layers.Conv2D(2, 1)])
        >>> group_steps(dsa_tf.analyze(model), 2).tolist()   # both sides of the groups=4 conv
        [4, 4]
    """
    steps = np.broadcast_to(np.asarray(round_to, dtype=np.int64), len(plan.prunable))
    return np.array([math.lcm(int(step), g.blocks) for step, g in zip(steps, plan.prunable)],
                    dtype=np.int64)


def fewest_counts(plan: ChannelPlan, min_channels: int = 1,
                  round_to: int | np.ndarray = 1) -> np.ndarray:
    """The fewest channels each prunable group may keep: ``min_channels`` rounded up to a
    multiple of its step (:func:`group_steps`), or all of its channels if it has fewer (the
    rule of :func:`dsa_tf.allocation.keep_process.kept_count`)."""
    channels = np.array([g.channels for g in plan.prunable])
    return np.asarray(kept_count(0.0, channels, min_channels, group_steps(plan, round_to)),
                      dtype=np.int64)


def usage(resources: ResourceModel, counts: np.ndarray, names: Iterable[str]
          ) -> dict[str, float]:
    """Each resource of the model stripped to ``counts`` kept channels per prunable group, as
    a fraction of the full model's (exact: integer counts over integer counts; latency as the
    table predicts it).

    Args:
        resources: the model's resource model.
        counts: kept channel count of every group of ``plan.prunable``, in that order.
        names: names among ``RESOURCES``.
    """
    channels = np.array([g.channels for g in resources.plan.prunable], dtype=np.float64)
    return resources.fractions(np.asarray(counts, dtype=np.float64) / channels, names)


def meets(resources: ResourceModel, fractions: Mapping[str, float], counts: np.ndarray) -> bool:
    """Whether ``counts`` (one per prunable group) meets every constraint of ``fractions``."""
    used = usage(resources, counts, fractions)
    return all(used[name] <= fraction for name, fraction in fractions.items())


def budget_fractions(resources: ResourceModel, budget: float | Mapping[str, float],
                     resource: str = "flops", min_channels: int = 1,
                     round_to: int | np.ndarray = 1) -> dict[str, float]:
    """Validates a budget and returns it as fractions of the model's resources.

    Args:
        resources: the model's resource model (with a latency table for latency budgets).
        budget: a fraction (0 < budget <= 1) or an absolute amount (> 1: a count of FLOPs or
            params, milliseconds of latency) of ``resource``, or a dict
            ``{"flops": 0.5, "params": 0.4}`` of constraints that must all hold.
        resource: "flops", "params" or "latency", when ``budget`` is a number.
        min_channels: the fewest channels every group keeps.
        round_to: groups keep multiples of this many channels (or all of them); one for all
            groups, or one per group in plan order.

    Raises:
        ValueError: for an unknown resource, a budget that is not a positive finite number, an
            absolute budget above the model's resource, or a budget below the smallest value
            reachable with ``min_channels`` channels (rounded up to a multiple of ``round_to``)
            in every prunable group (the message states that minimum).

    Example:
        >>> import dsa_tf
        >>> resources = ResourceModel(dsa_tf.analyze(dsa_tf.models.cifar_resnet(20)))
        >>> budget_fractions(resources, 0.5, resource="params")
        {'params': 0.5}
    """
    plan = resources.plan
    constraints = dict(budget) if isinstance(budget, Mapping) else {resource: budget}
    if not constraints:
        raise ValueError(f"budget is an empty dict; give at least one of {RESOURCES}.")
    if not plan.prunable:
        raise ValueError(f"{plan.model.name!r} has no prunable channel group; "
                         f"dsa_tf.analyze(model) lists every group and why it is not prunable.")
    lowest = fewest_counts(plan, min_channels, round_to)
    fractions = {}
    for name, value in constraints.items():
        if name not in RESOURCES:
            raise ValueError(f"Unknown resource {name!r}; use one of {RESOURCES}.")
        full = resources.full(name)
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"The {name} budget must be a positive finite number, got {value!r}.")
        fraction = float(value) if value <= 1 else float(value) / full
        if fraction > 1:
            raise ValueError(f"The {name} budget {value:,} exceeds the model's {full:,.6g} "
                             f"{UNITS[name]} (a budget above 1 is an absolute amount; a share "
                             f"is in (0, 1]).")
        reachable = usage(resources, lowest, [name])[name]
        if fraction < reachable:
            given = f"{fraction:.4f}" if value <= 1 else f"{value:,} ({fraction:.4f})"
            raise ValueError(
                f"The {name} budget {given} (of the model's {full:,.6g} {UNITS[name]}) cannot be "
                f"met: with min_channels={min_channels}, {_rounding(round_to)} in every "
                f"prunable group the smallest reachable value is {reachable:.4f} "
                f"({reachable * full:,.6g} {UNITS[name]}).")
        fractions[name] = fraction
    return fractions


def validated_budget(model: Any, budget: float | Mapping[str, float], resource: str,
                     min_channels: int, round_to: int | None, exclude: Iterable[str],
                     latency_table: Any = None,
                     ) -> tuple[ResourceModel, dict[str, float], np.ndarray]:
    """Analyzes ``model`` and validates the budget and rounding: the common first step of the
    allocators. Returns the model's resource model, the budget as fractions (see
    :func:`budget_fractions`) and the rounding of every prunable group (plan order):
    ``round_to``, or if None, 1 for FLOPs and params budgets and, for a latency budget, the
    step the latency table's measurements show for the group (the table's step, 8, or twice
    it where the runtime computes the group's channels in tiles of 16:
    :meth:`dsa_tf.deploy.latency_model.LatencyModel.group_steps`), so that pruned groups keep
    counts on the cheap side of the runtime's steps, which are measured points of the table
    (:mod:`dsa_tf.deploy.latency_table`). A latency budget without ``latency_table`` measures
    one on this device (:func:`dsa_tf.deploy.profile.cached_table`). A group with blocks (a
    grouped convolution's channels, :attr:`dsa_tf.structure.graph.Group.blocks`) rounds to
    the least common multiple of that and its number of blocks.

    Example:
        >>> import dsa_tf
        >>> resources, fractions, round_to = validated_budget(
        ...     dsa_tf.models.cifar_resnet(20), 0.5, "flops", 1, None, ())
        >>> fractions, round_to.tolist()
        ({'flops': 0.5}, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    """
    check_rounding(min_channels, 1 if round_to is None else round_to)
    plan = analyze(model, exclude)
    names = set(budget) if isinstance(budget, Mapping) else {resource}
    latency = "latency" in names
    table = latency_table_path(model, latency_table, exclude) if latency else None
    resources = ResourceModel(plan, table)
    if round_to is None and latency:
        steps = resources.latency.group_steps()
    else:
        steps = np.full(len(plan.prunable), 1 if round_to is None else int(round_to), np.int64)
    steps = group_steps(plan, steps)
    return resources, budget_fractions(resources, budget, resource, int(min_channels),
                                       steps), steps


def _rounding(round_to: int | np.ndarray) -> str:
    """``round_to`` as an error message states it."""
    steps = sorted(set(np.atleast_1d(round_to).tolist()))
    return f"round_to={steps[0]}" if len(steps) == 1 else f"round_to in {steps} by group"
