"""prune_to_budget: copy a model and insert DSA's channel gates, one per prunable group.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> gated = dsa_tf.prune_to_budget(model, budget=0.5)
    >>> sorted(dsa_tf.keep_ratios(gated).items())[0][1] > 0.99   # gates start open
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf import _keras
from dsa_tf.allocation.gated_model import refresh_importance
from dsa_tf.allocation.gates import gate_class
from dsa_tf.structure.graph import ChannelPlan, FlatCall, analyze, resolve
from dsa_tf.structure.rules import Depthwise, Through
from dsa_tf.structure.strip import rebuild

RESOURCES = ("flops", "params")


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
    """
    constraints = dict(budget) if isinstance(budget, Mapping) else {resource: budget}
    if not constraints:
        raise ValueError("budget is an empty dict; give at least one of 'flops', 'params'.")
    if not plan.prunable:
        raise ValueError(f"{plan.model.name!r} has no prunable channel group; "
                         f"dsa_tf.analyze(model) lists every group and why it is not prunable.")
    fewest = -(-max(min_channels, 1) // round_to) * round_to
    lowest = np.array([min(1.0, fewest / g.channels) for g in plan.prunable])
    fractions = {}
    for name, value in constraints.items():
        if name not in RESOURCES:
            raise ValueError(f"Unknown resource {name!r}; use one of {RESOURCES}.")
        model_of = getattr(plan, name)
        full = model_of(np.ones(len(plan.prunable)))
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
                or not math.isfinite(value) or value <= 0:
            raise ValueError(f"The {name} budget must be a positive finite number, got {value!r}.")
        fraction = float(value) if value <= 1 else float(value) / full
        if fraction > 1:
            raise ValueError(f"The {name} budget {value:,} exceeds the model's {full:,.0f} {name} "
                             f"(a budget above 1 is an absolute count; a share is in (0, 1]).")
        reachable = model_of(lowest) / full
        if fraction < reachable:
            given = f"{fraction:.4f}" if value <= 1 else f"{value:,} ({fraction:.4f})"
            raise ValueError(
                f"The {name} budget {given} (of the model's {full:,.0f}) cannot be met: with "
                f"min_channels={min_channels}, round_to={round_to} in every prunable group the "
                f"smallest reachable value is {reachable:.4f} ({model_of(lowest):,.0f} {name}).")
        fractions[name] = fraction
    return fractions


def prune_to_budget(model: Any, budget: float | Mapping[str, float], *,
                    resource: str = "flops", exclude: Iterable[str] = (),
                    min_channels: int = 1, round_to: int = 1, seed: int | None = None) -> Any:
    """Returns a copy of ``model`` with a ChannelGate for every prunable channel group.

    The user's model is not touched: its layers are re-created and their weights copied. Train
    the result with :class:`dsa_tf.DSACallback`; :func:`dsa_tf.strip` turns it into the smaller
    plain model.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras).
        budget: fraction of the model's resource (0 < budget <= 1), an absolute count, or a
            dict of several constraints such as ``{"flops": 0.5, "params": 0.4}``.
        resource: "flops" or "params" (for a numeric ``budget``).
        exclude: layer names whose channels stay whole (see :func:`dsa_tf.analyze`).
        min_channels: the fewest channels any group keeps.
        round_to: every pruned group keeps a multiple of this many channels, or all of them
            (8 or 16 suit the vector units of CPUs and NPUs; see BENCHMARKS.md). Hard masks
            round the kept count down, so the stripped model still meets the budget.
        seed: seed of the gates' Bernoulli noise (default: a fixed seed, 0).

    Returns:
        The gated Keras model. Every gate records the budget (as fractions) in its config, so
        a gated model saved as ``.keras`` and loaded again still knows its budget.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), {"flops": 0.5})
        >>> len(dsa_tf.keep_ratios(gated))
        12
    """
    if min_channels < 1:
        raise ValueError(f"min_channels must be at least 1, got {min_channels}.")
    if isinstance(round_to, bool) or not isinstance(round_to, (int, np.integer)) or round_to < 1:
        raise ValueError(f"round_to must be a positive integer, got {round_to!r}.")
    plan = analyze(model, exclude)
    fractions = budget_fractions(plan, budget, resource, min_channels, int(round_to))
    ChannelGate = gate_class(_keras.keras_of(model))
    base_seed = 0 if seed is None else int(seed)
    gates = {
        g.name: ChannelGate(group=g.name, channels=g.channels, min_channels=min_channels,
                            round_to=int(round_to),
                            seed=base_seed * 100_003 + k, budget=fractions,
                            exclude=sorted(set(exclude)),
                            name=f"gate_{g.name.replace('/', '_').replace(':', '_')}")
        for k, g in enumerate(plan.prunable)
    }

    redundant = _masked_downstream(plan)

    def insert_gates(fc: FlatCall, outputs: list) -> list:
        if fc.rule is None or fc.opaque or fc.rule.preserves_zero(fc.op, fc.info):
            return outputs
        return [out if id(resolve(plan.alias, old)) in redundant else _gate(plan, gates, out, m)
                for out, old, m in zip(outputs, fc.call.outputs, fc.out_maps)]

    gated, new_layers = rebuild(plan, {}, after_call=insert_gates)
    _set_importance_sources(plan, gates, new_layers)
    refresh_importance(gated)
    return gated


def _masked_downstream(plan: ChannelPlan) -> set[int]:
    """Tensors that need no gate: every consumer is a per-channel layer whose own output is
    gated (a convolution's output feeding only its BatchNorm), so the mask after that layer
    already zeroes the dropped channels. DSA masks after the BatchNorm, before the activation.
    """
    consumers: dict[int, list[FlatCall]] = {}
    for fc in plan.calls:
        for tensor in fc.call.inputs:
            consumers.setdefault(id(resolve(plan.alias, tensor)), []).append(fc)
    outputs = {id(resolve(plan.alias, t)) for t in _keras.model_outputs(plan.model)}

    def masks_its_output(fc: FlatCall) -> bool:
        return (len(fc.call.inputs) == 1 and not fc.opaque
                and isinstance(fc.rule, (Through, Depthwise))
                and not fc.rule.preserves_zero(fc.op, fc.info))

    return {tensor for tensor, users in consumers.items()
            if tensor not in outputs and all(masks_its_output(fc) for fc in users)}


def _gate(plan: ChannelPlan, gates: dict, tensor: Any, channel_map: Any) -> Any:
    if channel_map is None:
        return tensor
    groups = plan.group_of_space[channel_map.spaces]
    for g in np.unique(groups).tolist():
        group = plan.groups[g]
        if not group.prunable:
            continue
        positions = np.flatnonzero(groups == g)
        whole = len(positions) == len(channel_map) == group.channels and np.array_equal(
            channel_map.index, np.arange(group.channels))
        if whole:
            tensor = gates[group.name](tensor)
        else:
            tensor = gates[group.name](tensor, positions=positions.tolist(),
                                       index=channel_map.index[positions].tolist())
    return tensor


def _set_importance_sources(plan: ChannelPlan, gates: dict, new_layers: dict) -> None:
    """Each gate's importance comes from its group's BatchNorms, else its producers' filters."""
    batch_norms: dict[str, list[str]] = {}
    producers: dict[str, list[str]] = {}
    for fc in plan.calls:
        if fc.opaque or not fc.out_maps or fc.out_maps[0] is None:
            continue
        groups = np.unique(plan.group_of_space[fc.out_maps[0].spaces]).tolist()
        if len(groups) != 1 or not plan.groups[groups[0]].prunable:
            continue
        group = plan.groups[groups[0]].name
        new_name = new_layers[id(fc.op)].name
        kind = type(fc.op).__name__
        if kind == "BatchNormalization":
            batch_norms.setdefault(group, []).append(new_name)
        elif fc.name in plan.groups[groups[0]].producers:
            producers.setdefault(group, []).append(new_name)
    for name, gate in gates.items():
        gate.importance_sources = batch_norms.get(name) or producers.get(name, [])
