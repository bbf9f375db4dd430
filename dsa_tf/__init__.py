"""dsa_tf: budgeted channel pruning for Keras with DSA (Differentiable Sparsity Allocation).

The package has four wings, and data flows one way through them: model -> ``structure``
(channel groups and what they cost) -> ``allocation`` (how many channels each group keeps)
-> strip -> ``deploy`` (TFLite); ``run`` is the ``dsa-tf`` job that drives them all. This
module holds the public API and nothing else.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> plan = dsa_tf.analyze(model)
    >>> small = dsa_tf.strip(model, keep={g.name: range(g.channels // 2) for g in plan.prunable})
    >>> dsa_tf.count_flops(small) < dsa_tf.count_flops(model) / 3
    True
"""

from dsa_tf import models
from dsa_tf.allocation.apply import apply_allocation
from dsa_tf.allocation.batch_norm import reestimate_batchnorm
from dsa_tf.allocation.callback import DSACallback
from dsa_tf.allocation.gated_model import keep_ratios, set_keep_ratios
from dsa_tf.allocation.gated_strip import strip
from dsa_tf.allocation.gates import gate_class
from dsa_tf.allocation.magnitude import magnitude_allocation
from dsa_tf.allocation.masked_norm import masked_norm_class
from dsa_tf.allocation.one_shot import OneShotCallback
from dsa_tf.allocation.prune import prune_to_budget
from dsa_tf.allocation.report import allocation_report, budget_status
from dsa_tf.allocation.taylor import taylor_allocation
from dsa_tf.allocation.uniform import uniform_allocation
from dsa_tf.deploy.export import ExportReport, export_tflite
from dsa_tf.deploy.qat import quantize_aware
from dsa_tf.deploy.timing import LatencyReport, benchmark_tflite, compare_tflite_latency
from dsa_tf.deploy.verify import ExportVerificationError
from dsa_tf.run import data
from dsa_tf.run.config import RunConfig, preset
from dsa_tf.run.pipeline import run_pruning
from dsa_tf.structure.counting import count_flops, count_params
from dsa_tf.structure.graph import ChannelPlan, Group, analyze
from dsa_tf.structure.masking import masked_call

# The layers of gated models, registered for loading saved ones.
ChannelGate = gate_class()
MaskedLayerNormalization = masked_norm_class()

__all__ = [
    "ChannelGate",
    "ChannelPlan",
    "DSACallback",
    "ExportReport",
    "ExportVerificationError",
    "Group",
    "LatencyReport",
    "MaskedLayerNormalization",
    "OneShotCallback",
    "RunConfig",
    "allocation_report",
    "analyze",
    "apply_allocation",
    "benchmark_tflite",
    "budget_status",
    "compare_tflite_latency",
    "count_flops",
    "count_params",
    "data",
    "export_tflite",
    "keep_ratios",
    "magnitude_allocation",
    "masked_call",
    "models",
    "preset",
    "prune_to_budget",
    "quantize_aware",
    "reestimate_batchnorm",
    "run_pruning",
    "set_keep_ratios",
    "strip",
    "taylor_allocation",
    "uniform_allocation",
]
