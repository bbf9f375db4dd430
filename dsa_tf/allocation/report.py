"""allocation_report: what a gated model keeps, group by group.

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
from dsa_tf.allocation.gated_strip import gate_order
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
