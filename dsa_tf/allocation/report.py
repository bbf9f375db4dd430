"""What a gated model keeps, group by group (allocation_report), and its budget (budget_status).

Example:
    >>> import dsa_tf
    >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
    >>> len(dsa_tf.allocation_report(gated))
    12
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsa_tf.allocation.gated_model import gates_of
from dsa_tf.allocation.gated_strip import gate_keep, gate_order, resource_fractions
from dsa_tf.allocation.gates import BY_ALLOCATION, BY_ASSIGNMENT, BY_COMPLETION, PHASE_NAMES
from dsa_tf.structure.graph import analyze


def allocation_report(model: Any) -> list[dict]:
    """Per gated group: name, channels, kept channels, keep ratio and share of the FLOPs.

    ``kept`` is the hard configuration (what :func:`dsa_tf.strip` keeps); ``flops_share`` is
    the group's part of the full model's FLOPs, counting each convolution between two groups
    half to each.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
        >>> row = dsa_tf.allocation_report(gated)[0]
        >>> sorted(row)
        ['channels', 'flops_share', 'group', 'keep_ratio', 'kept']
    """
    gates = gates_of(model)
    if not gates:
        raise ValueError(f"{model.name!r} has no ChannelGate; make it with "
                         f"dsa_tf.prune_to_budget(model, budget).")
    plan = analyze(model, gates[0].exclude)
    ones = np.ones(len(plan.prunable))
    flops = plan.flops
    total = flops(ones)
    # d F / d a_k at a = 1 splits every product term between its two groups.
    share = ((flops.A + flops.A.T) @ ones / 2 + flops.b) / total
    rows = []
    for gate, k in zip(gates, gate_order(plan, gates)):
        a = float(gate.keep_ratio())
        kept = int(gate.hard_mask().numpy().sum())
        rows.append({"group": gate.group, "channels": gate.channels, "kept": kept,
                     "keep_ratio": a, "flops_share": float(share[k])})
    return rows


def budget_status(model: Any) -> dict:
    """Whether a gated model meets its budget now, and whether and when DSA met it.

    Returns:
        A dict: ``met`` (the hard configuration, what :func:`dsa_tf.strip` keeps, meets every
        budget), ``budget`` and ``hard`` (per resource, as fractions of the full model),
        ``phase`` ("warm-up", "allocation" or "fine-tuning"), ``frozen_by`` ("allocation" when
        the ADMM met the budget, "completion" when :class:`dsa_tf.DSACallback` completed an
        allocation that had not met it in time, "assignment" for an allocation given with
        :func:`dsa_tf.apply_allocation`, None while not frozen) and
        ``admm_iterations`` so far.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
        >>> status = dsa_tf.budget_status(gated)
        >>> status["met"], status["phase"], status["hard"]["flops"]
        (False, 'warm-up', 1.0)
    """
    gates = gates_of(model)
    if not gates:
        raise ValueError(f"{model.name!r} has no ChannelGate; make it with "
                         f"dsa_tf.prune_to_budget(model, budget).")
    first = gates[0]
    plan = analyze(model, first.exclude)
    hard = resource_fractions(plan, gate_keep(plan), list(first.budget))
    frozen_by = int(first.frozen_by.numpy())
    return {
        "met": all(hard[name] <= value for name, value in first.budget.items()),
        "budget": dict(first.budget),
        "hard": hard,
        "phase": PHASE_NAMES[int(first.mode.numpy())],
        "frozen_by": {BY_ALLOCATION: "allocation", BY_COMPLETION: "completion",
                      BY_ASSIGNMENT: "assignment"}.get(frozen_by),
        "admm_iterations": int(first.admm_step.numpy()),
    }
