"""dsa_tf: budgeted channel pruning for Keras with DSA (Differentiable Sparsity Allocation).

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> plan = dsa_tf.analyze(model)
    >>> small = dsa_tf.strip(model, keep={g.name: range(g.channels // 2) for g in plan.prunable})
    >>> dsa_tf.count_flops(small) < dsa_tf.count_flops(model) / 3
    True
"""

from dsa_tf import data, models
from dsa_tf.callbacks import DSACallback, allocation_report
from dsa_tf.counting import count_flops, count_params
from dsa_tf.export import ExportReport, export_tflite
from dsa_tf.gates import gate_class
from dsa_tf.graph import ChannelPlan, Group, analyze
from dsa_tf.masking import masked_call
from dsa_tf.pipeline import run_pruning
from dsa_tf.prune import keep_ratios, prune_to_budget, set_keep_ratios
from dsa_tf.qat import quantize_aware
from dsa_tf.run_config import RunConfig, preset
from dsa_tf.strip import strip
from dsa_tf.tflite_latency import LatencyReport, benchmark_tflite, compare_tflite_latency
from dsa_tf.verify import ExportVerificationError

ChannelGate = gate_class()  # registered for loading saved gated models

__all__ = [
    "ChannelGate",
    "ChannelPlan",
    "DSACallback",
    "ExportReport",
    "ExportVerificationError",
    "Group",
    "LatencyReport",
    "RunConfig",
    "allocation_report",
    "analyze",
    "benchmark_tflite",
    "compare_tflite_latency",
    "count_flops",
    "count_params",
    "data",
    "export_tflite",
    "keep_ratios",
    "masked_call",
    "models",
    "preset",
    "prune_to_budget",
    "quantize_aware",
    "run_pruning",
    "set_keep_ratios",
    "strip",
]
