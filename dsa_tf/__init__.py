"""dsa_tf: budgeted channel pruning for Keras with DSA (Differentiable Sparsity Allocation).

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> plan = dsa_tf.analyze(model)
    >>> small = dsa_tf.strip(model, keep={g.name: range(g.channels // 2) for g in plan.prunable})
    >>> dsa_tf.count_flops(small) < dsa_tf.count_flops(model) / 3
    True
"""

from dsa_tf import models
from dsa_tf.callbacks import DSACallback, allocation_report
from dsa_tf.counting import count_flops, count_params
from dsa_tf.gates import gate_class
from dsa_tf.graph import ChannelPlan, Group, analyze
from dsa_tf.masking import masked_call
from dsa_tf.prune import keep_ratios, prune_to_budget, set_keep_ratios
from dsa_tf.strip import strip

ChannelGate = gate_class()  # registered for loading saved gated models

__all__ = [
    "ChannelGate",
    "ChannelPlan",
    "DSACallback",
    "Group",
    "allocation_report",
    "analyze",
    "count_flops",
    "count_params",
    "keep_ratios",
    "masked_call",
    "models",
    "prune_to_budget",
    "set_keep_ratios",
    "strip",
]
