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
from dsa_tf.allocation.gated_strip import gate_keep, gate_order
from dsa_tf.allocation.gates import BY_ALLOCATION, BY_ASSIGNMENT, BY_COMPLETION, PHASE_NAMES
from dsa_tf.allocation.resources import ResourceModel
from dsa_tf.structure.graph import analyze


def allocation_report(model: Any) -> list[dict]:
    """Per gated group: name, channels, kept channels, keep ratio and share of each resource.

    ``kept`` is the hard configuration (what :func:`dsa_tf.strip` keeps). ``flops_share`` and
    ``params_share`` (and ``latency_share`` under a latency budget) are the group's part of
    the full model's resource (:meth:`dsa_tf.allocation.resources.ResourceModel.shares`: a
    convolution between two groups counts half to each), so the shares of all groups and of
    what no group prunes add up to 1. A budget is met most cheaply in accuracy by
    taking channels where the share is large and the loss does not need them.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
        >>> row = dsa_tf.allocation_report(gated)[0]
        >>> sorted(row)
        ['channels', 'flops_share', 'group', 'keep_ratio', 'kept', 'params_share']
    """
    gates = gates_of(model)
    if not gates:
        raise ValueError(f"{model.name!r} has no ChannelGate; make it with "
                         f"dsa_tf.prune_to_budget(model, budget).")
    plan = analyze(model, gates[0].exclude)
    resources = ResourceModel(plan, gates[0].latency_table)
    names = ["flops", "params"] + (["latency"] if "latency" in gates[0].budget else [])
    shares = {name: resources.shares(name) for name in names}
    rows = []
    for gate, k in zip(gates, gate_order(plan, gates)):
        rows.append({"group": gate.group, "channels": gate.channels,
                     "kept": int(gate.hard_mask().numpy().sum()),
                     "keep_ratio": float(gate.keep_ratio()),
                     **{f"{name}_share": float(share[k]) for name, share in shares.items()}})
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
    hard = ResourceModel(plan, first.latency_table).fractions(plan.keep_ratios(gate_keep(plan)),
                                                             first.budget)
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


def predicted_latency(model: Any) -> dict:
    """The latency its table predicts for a gated model with a latency budget: ``unpruned``
    (every channel kept) and ``stripped`` (its hard configuration, what :func:`dsa_tf.strip`
    keeps) in ms, and the table's ``precision`` and ``threads``.

    Raises:
        ValueError: a model without gates, or gated without a latency table.
    """
    gates = gates_of(model)
    if not gates or not gates[0].latency_table:
        raise ValueError(f"{getattr(model, 'name', model)!r} is not a gated model with a "
                         f"latency budget (prune_to_budget(..., resource='latency')).")
    plan = analyze(model, gates[0].exclude)
    latency = ResourceModel(plan, gates[0].latency_table).latency
    return {"unpruned": latency.predict(np.ones(len(plan.prunable))),
            "stripped": latency.predict(plan.keep_ratios(gate_keep(plan))),
            "precision": latency.table.precision, "threads": latency.table.threads}
