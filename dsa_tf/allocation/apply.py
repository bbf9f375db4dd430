"""apply_allocation: give a gated model a fixed allocation (a keep dict) as frozen masks.

A baseline allocator (:func:`dsa_tf.uniform_allocation`, :func:`dsa_tf.magnitude_allocation`,
:func:`dsa_tf.taylor_allocation`) or any other source of a keep dict decides which channels
stay; applying it to a gated model (:func:`dsa_tf.prune_to_budget`) puts the gates in the state
DSA leaves them in when the budget is met: mode FROZEN, ``mask`` the kept channels (applied in
training and inference), so that ``fit`` (with or without :class:`dsa_tf.DSACallback`, which
then only fine-tunes) trains the pruned network and :func:`dsa_tf.strip` cuts it out. Each
gate's keep ratio is set to the kept fraction too (:func:`dsa_tf.set_keep_ratios`), so
:func:`dsa_tf.keep_ratios`, :func:`dsa_tf.allocation_report` and the callback's logs report
the allocation.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> gated = dsa_tf.prune_to_budget(model, 0.5)
    >>> keep = dsa_tf.magnitude_allocation(model, 0.5)
    >>> dsa_tf.apply_allocation(gated, keep)
    >>> dsa_tf.count_flops(dsa_tf.strip(gated)) == dsa_tf.count_flops(dsa_tf.strip(model, keep))
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf.allocation.gated_model import gates_of, set_keep_ratios
from dsa_tf.allocation.gated_strip import gate_group
from dsa_tf.allocation.gates import BY_ASSIGNMENT, FROZEN, is_gate
from dsa_tf.allocation.keep_process import kept_count
from dsa_tf.structure.graph import ChannelPlan, analyze
from dsa_tf.structure.strip import space_masks


def apply_allocation(gated: Any, keep: Mapping[str, Iterable[int]]) -> None:
    """Freezes every gate of ``gated`` to keep exactly the channels ``keep`` names.

    Args:
        gated: a gated model made by :func:`dsa_tf.prune_to_budget` (changed in place).
        keep: ``{group_name: kept channel indices}``, as :func:`dsa_tf.strip` takes it and
            the baseline allocators return it. A gated group that ``keep`` does not list
            keeps all its channels (as in :func:`dsa_tf.strip`), so ``strip(gated)`` equals
            ``strip(model, keep)`` of the model that was gated. The budget recorded in the
            gates is not checked: the allocation decides what is kept.

    Raises:
        ValueError: a model without ChannelGate; a group ``keep`` names that has no gate
            (unknown, or not prunable when the model was gated, e.g. excluded); indices
            outside the group, repeated or none; or a kept count the gate
            cannot hold (not a multiple of the gate's ``round_to`` or all channels, or below
            its ``min_channels``: make the allocation with the settings of the gated model).
            Nothing is changed when it raises.

    Example:
        >>> import dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(20)
        >>> gated = dsa_tf.prune_to_budget(model, 0.5)
        >>> dsa_tf.apply_allocation(gated, {"stem_conv": range(8)})
        >>> round(dsa_tf.keep_ratios(gated)["stem_conv"], 3)
        0.5
    """
    gates = gates_of(gated)
    if not gates:
        raise ValueError(f"{gated.name!r} has no ChannelGate; make the gated model with "
                         f"dsa_tf.prune_to_budget(model, budget), or strip the plain model "
                         f"directly with dsa_tf.strip(model, keep).")
    unknown = sorted(set(keep) - {gate.group for gate in gates})
    if unknown:
        raise ValueError(f"No gated group {unknown[0]!r}; gated groups are "
                         f"{sorted(gate.group for gate in gates)} (make the allocation with the "
                         f"exclude the model was gated with).")
    keep = {name: np.asarray(list(indices), dtype=np.int64) for name, indices in keep.items()}
    plan = analyze(gated, gates[0].exclude)
    names = _plan_names(plan)  # a nested model's groups are renamed in its flat gated copy
    space_masks(plan, {names[name]: indices for name, indices in keep.items()})
    masks = {}
    for gate in gates:
        kept = np.zeros(gate.channels, dtype=np.float32)
        kept[keep.get(gate.group, np.arange(gate.channels))] = 1
        count = int(kept.sum())
        allowed = int(kept_count(count / gate.channels, gate.channels, gate.min_channels,
                                 gate.round_to))
        if allowed != count:
            raise ValueError(
                f"keep[{gate.group!r}] keeps {count} of {gate.channels} channels, which its gate "
                f"cannot hold (made with min_channels={gate.min_channels}, "
                f"round_to={gate.round_to}; it would keep {allowed}). Make the allocation with "
                f"the min_channels and round_to the model was gated with.")
        masks[gate.group] = kept
    set_keep_ratios(gated, {gate.group: float(masks[gate.group].mean()) for gate in gates})
    for gate in gates:
        gate.mask.assign(masks[gate.group])
        gate.mode.assign(FROZEN)
        gate.frozen_by.assign(BY_ASSIGNMENT)


def _plan_names(plan: ChannelPlan) -> dict[str, str]:
    """The name, in the gated model's own plan, of each gate's group."""
    return {fc.op.group: plan.groups[gate_group(plan, fc)[0]].name
            for fc in plan.calls if is_gate(fc.op)}
