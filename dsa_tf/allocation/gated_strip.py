"""Stripping a gated model: the channels its gates keep, and the public :func:`strip`.

A gated model (made by :func:`dsa_tf.prune_to_budget`) carries one ChannelGate per prunable
group; the structure passes gates through (they are channel mask layers), and this module
reads, from each gate call, which group and which positions of the gated tensor it masks.

Example:
    >>> import dsa_tf
    >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
    >>> dsa_tf.set_keep_ratios(gated, {"stem_conv": 0.5})
    >>> dsa_tf.count_flops(dsa_tf.strip(gated)) < dsa_tf.count_flops(gated)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.gates import is_gate
from dsa_tf.allocation.resources import ResourceModel
from dsa_tf.structure import strip as structure_strip
from dsa_tf.structure.graph import ChannelPlan, FlatCall, analyze


def strip(model: Any, keep: Mapping[str, Iterable[int]] | None = None, *,
          exclude: Iterable[str] = ()) -> Any:
    """Returns a smaller plain Keras model that keeps only the given channels.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras), plain or gated
            (made by :func:`dsa_tf.prune_to_budget`).
        keep: for each channel group to prune (names from :func:`dsa_tf.analyze`), the indices
            of the channels to keep. Groups not listed keep all their channels. Default for a
            gated model: what its gates keep in inference (their hard masks), so that
            ``strip(gated)(x)`` equals ``gated(x, training=False)``.
        exclude: layer names to keep whole, as for :func:`dsa_tf.analyze` (a gated model
            remembers the ``exclude`` it was made with).

    Returns:
        A new functional model of standard Keras layers whose outputs equal the original
        model's outputs with the dropped channels forced to zero at every layer of their group.
        Nested models are flattened into it; a layer whose name would clash is renamed
        ``<nested model>_<layer>``. Gates are left out.

    Raises:
        ValueError: for unsupported models (see :func:`dsa_tf.analyze`), invalid ``keep``, or
            no ``keep`` for a model without gates.

    Example:
        >>> import dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(20)
        >>> small = dsa_tf.strip(model, keep={"stage1_block1_1_conv": range(8)})
        >>> dsa_tf.count_params(small) < dsa_tf.count_params(model)
        True
    """
    gates = [layer for layer in model.layers if is_gate(layer)]
    exclude = tuple(exclude) or (tuple(gates[0].exclude) if gates else ())
    if keep is None:
        plan = analyze(model, exclude)
        keep = gate_keep(plan)
        budget = gates[0].budget
        hard = ResourceModel(plan, gates[0].latency_table).fractions(
            plan.keep_ratios(keep), budget)
        over = [f"{name} {hard[name]:.4f} > {value:.4f}" for name, value in budget.items()
                if hard[name] > value]
        if over:
            warnings.warn(f"strip: the gated model's hard configuration is over its budget "
                          f"({', '.join(over)}): its allocation has not met the budget yet "
                          f"(see dsa_tf.budget_status).", stacklevel=2)
    return structure_strip.strip(model, keep, exclude=exclude)


def gate_group(plan: ChannelPlan, fc: FlatCall) -> tuple[int, np.ndarray, np.ndarray]:
    """For a ChannelGate call: its group (index into ``plan.groups``), the positions of the
    gated tensor's channel axis it masks, and the gate channel of each position."""
    in_map = fc.info.in_maps[0]
    positions = fc.info.argument("positions", 1)
    index = fc.info.argument("index", 2)
    positions = np.arange(len(in_map)) if positions is None else np.asarray(positions)
    index = np.arange(len(positions)) if index is None else np.asarray(index)
    return int(plan.group_of_space[in_map.spaces[positions[0]]]), positions, index


def gate_keep(plan: ChannelPlan) -> dict[str, np.ndarray]:
    """The channels the ChannelGates of a gated model keep (their hard masks)."""
    keep: dict[str, np.ndarray] = {}
    for fc in plan.calls:
        if not is_gate(fc.op):
            continue
        g, positions, index = gate_group(plan, fc)
        mask = fc.op.hard_mask().numpy() > 0.5
        kept = np.zeros(plan.groups[g].channels, dtype=bool)
        kept[fc.info.in_maps[0].index[positions]] = mask[index]
        keep[plan.groups[g].name] = np.flatnonzero(kept)
    if not keep:
        raise ValueError("strip(model) needs keep={group_name: channel_indices} for a model "
                         "without ChannelGates; groups are listed by dsa_tf.analyze(model).")
    return keep



def gate_order(plan: Any, gates: list) -> np.ndarray:
    """For each gate, the index of its group in ``plan.prunable``."""
    prunable = {plan.groups.index(g): k for k, g in enumerate(plan.prunable)}
    order = {}
    for fc in plan.calls:
        if any(fc.op is gate for gate in gates) and fc.op.name not in order:
            order[fc.op.name] = prunable[gate_group(plan, fc)[0]]
    return np.array([order[gate.name] for gate in gates])
