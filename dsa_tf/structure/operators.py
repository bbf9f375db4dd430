"""The operators whose cost pruning changes, with their kept channels as forms of the keep ratios.

A latency model measures operators, not groups: a convolution's invoke time depends on its
kind, kernel, strides, spatial size and on how many input and output channels it keeps. Each
:class:`Operator` carries what identifies its measurement (``signature``: everything but the
channel counts) and its kept input and output channels as affine forms of the prunable
groups' keep ratios (:class:`dsa_tf.structure.quadratic.Quadratic`), so that a cost table
over channel counts becomes a function of the keep ratios.

Example:
    >>> import dsa_tf
    >>> from dsa_tf.structure.operators import operators
    >>> ops = operators(dsa_tf.analyze(dsa_tf.models.cifar_resnet(8)))
    >>> [op.name for op in ops][:2], ops[0].signature["kind"]
    (['stem_conv', 'stage1_block1_1_conv'], 'Conv2D')
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from dsa_tf.structure.graph import ChannelPlan
from dsa_tf.structure.quadratic import Quadratic
from dsa_tf.structure.rules import Create, Depthwise, GroupedConv

SIGNATURE_KEYS = ("kernel_size", "strides", "padding", "dilation_rate", "depth_multiplier",
                  "use_bias")


@dataclasses.dataclass(frozen=True)
class Operator:
    """One call of a layer whose cost depends on its kept channels.

    Attributes:
        name: the layer's name (in the flattened graph).
        signature: what its cost depends on besides the channel counts: ``kind`` (the layer
            class), ``input_shape`` and ``output_shape`` without batch and channel axes, and
            the layer settings in ``SIGNATURE_KEYS`` it has.
        channels_in: full input channels.
        channels_out: full output channels.
        kept_in: kept input channels as an affine form of the keep ratios.
        kept_out: kept output channels as an affine form of the keep ratios.
    """

    name: str
    signature: dict
    channels_in: int
    channels_out: int
    kept_in: Quadratic
    kept_out: Quadratic

    def counts(self, keep_ratios: np.ndarray) -> tuple[float, float]:
        """(kept input, kept output) channels at the given keep ratios."""
        return self.kept_in(keep_ratios), self.kept_out(keep_ratios)


def operators(plan: ChannelPlan) -> list[Operator]:
    """Every convolution, depthwise/separable convolution and Dense call of ``plan``, in
    network order (a layer called twice appears twice). General grouped convolutions (1 <
    groups < input channels) are left out: the latency tables do not measure them, and their
    time stays in a latency model's fixed part at its unpruned value, so a latency budget
    does not count the time pruning them saves (it predicts too much, never too little)."""
    result = []
    for fc in plan.calls:
        if fc.opaque or not isinstance(fc.rule, (Create, Depthwise)) \
                or isinstance(fc.rule, GroupedConv):
            continue
        info = fc.info
        signature: dict[str, Any] = {
            "kind": type(fc.op).__name__,
            "input_shape": [int(d) for d in info.in_shapes[0][1:-1]],
            "output_shape": [int(d) for d in info.out_shapes[0][1:-1]],
        }
        for key in SIGNATURE_KEYS:
            value = getattr(fc.op, key, None)
            if value is not None:
                signature[key] = list(value) if isinstance(value, tuple) else value
        if getattr(fc.op, "groups", 1) != 1:
            signature["groups_per_channel"] = True
        result.append(Operator(
            name=fc.name, signature=signature,
            channels_in=int(info.in_shapes[0][-1]), channels_out=int(info.out_shapes[0][-1]),
            kept_in=_form(plan.count(info.in_maps[0] if info.in_maps else None), plan),
            kept_out=_form(plan.count(fc.out_maps[0] if fc.out_maps else None), plan)))
    return result


def _form(count: Quadratic | int, plan: ChannelPlan) -> Quadratic:
    if isinstance(count, Quadratic):
        return count
    return Quadratic.linear(np.zeros(len(plan.prunable)), float(count))
