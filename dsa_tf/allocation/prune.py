"""prune_to_budget: copy a model and insert DSA's channel gates, one per prunable group.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(20)
    >>> gated = dsa_tf.prune_to_budget(model, budget=0.5)
    >>> sorted(dsa_tf.keep_ratios(gated).items())[0][1] > 0.99   # gates start open
    True
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from dsa_tf import _keras
from dsa_tf.allocation.budget import validated_budget
from dsa_tf.allocation.gated_model import refresh_importance
from dsa_tf.allocation.gates import gate_class
from dsa_tf.allocation.importance import importance_sources
from dsa_tf.allocation.masked_norm import masked_norm_classes
from dsa_tf.deploy.latency_table import LatencyTable
from dsa_tf.structure.graph import ChannelPlan, FlatCall, resolve
from dsa_tf.structure.rules import ChannelNorm, Depthwise, Through
from dsa_tf.structure.strip import rebuild


def prune_to_budget(model: Any, budget: float | Mapping[str, float], *,
                    resource: str = "flops", exclude: Iterable[str] = (),
                    min_channels: int = 1, round_to: int | None = None, seed: int | None = None,
                    latency_table: str | os.PathLike | LatencyTable | None = None) -> Any:
    """Returns a copy of ``model`` with a ChannelGate for every prunable channel group.

    The user's model is not touched: its layers are re-created and their weights copied. Train
    the result with :class:`dsa_tf.DSACallback`; :func:`dsa_tf.strip` turns it into the smaller
    plain model.

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras).
        budget: fraction of the model's resource (0 < budget <= 1), an absolute amount (a
            count of FLOPs or params, milliseconds of latency), or a dict of several
            constraints such as ``{"flops": 0.5, "params": 0.4}`` or
            ``{"latency": 0.5, "params": 0.6}``.
        resource: "flops", "params" or "latency" (for a numeric ``budget``). Latency is the
            LiteRT invoke time predicted by a latency table
            (:class:`dsa_tf.deploy.latency_model.LatencyModel`).
        exclude: layer names whose channels stay whole (see :func:`dsa_tf.analyze`).
        min_channels: the fewest channels any group keeps.
        round_to: every pruned group keeps a multiple of this many channels, or all of them
            (8 or 16 suit the vector units of CPUs and NPUs; see BENCHMARKS.md). Hard masks
            round the kept count down, so the stripped model still meets the budget. Default:
            1, and for a latency budget each group's step in the latency table (8, or 16
            where the table shows the runtime computing the group's channels in tiles of
            16; see :func:`dsa_tf.allocation.budget.validated_budget`).
        seed: seed of the gates' Bernoulli noise (default: a fixed seed, 0).
        latency_table: for a latency budget: the path of a table made by ``dsa-tf profile``
            on the target device, or a :class:`dsa_tf.deploy.latency_table.LatencyTable`;
            None measures one on this machine (float32, 1 thread; a minute or more, with
            progress output; cached, so the same model is measured once).

    Returns:
        The gated Keras model. Every gate records the budget (as fractions) in its config, so
        a gated model saved as ``.keras`` and loaded again still knows its budget.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), {"flops": 0.5})
        >>> len(dsa_tf.keep_ratios(gated))
        12
    """
    resources, fractions, round_to = validated_budget(
        model, budget, resource, min_channels, round_to, exclude, latency_table)
    plan = resources.plan
    ChannelGate = gate_class(_keras.keras_of(model))
    base_seed = 0 if seed is None else int(seed)
    gates = {
        g.name: ChannelGate(group=g.name, channels=g.channels, min_channels=min_channels,
                            round_to=int(round_to[k]), blocks=g.blocks,
                            seed=base_seed * 100_003 + k, budget=fractions,
                            exclude=sorted(set(exclude)),
                            latency_table=resources.latency_table,
                            name=f"gate_{g.name.replace('/', '_').replace(':', '_')}")
        for k, g in enumerate(plan.prunable)
    }

    redundant = _masked_downstream(plan)

    def insert_gates(fc: FlatCall, outputs: list) -> list:
        if fc.rule is None or fc.opaque or fc.rule.preserves_zero(fc.op, fc.info):
            return outputs
        return [out if id(resolve(plan.alias, old)) in redundant else _gate(plan, gates, out, m)
                for out, old, m in zip(outputs, fc.call.outputs, fc.out_maps)]

    masked_norms: dict[int, Any] = {}

    def masked_norm(fc: FlatCall, new_of: Any, name: str) -> list | None:
        """A LayerNormalization (RMSNormalization) of a prunable group becomes its masked
        form on [x, the gates' mask]: it normalises over the kept channels, as its strip
        will."""
        in_map = fc.info.in_maps[0] if fc.info.in_maps else None
        if not isinstance(fc.rule, ChannelNorm) or fc.opaque or in_map is None or not any(
                plan.groups[g].prunable for g in plan.group_of_space[in_map.spaces]):
            return None
        x = new_of(fc.call.inputs[0])
        if id(fc.op) not in masked_norms:
            config = {**_keras.layer_config(fc.op), "name": name}
            masked = masked_norm_classes(_keras.keras_of(model))[type(fc.op).__name__]
            masked_norms[id(fc.op)] = masked.from_config(config)
        layer = masked_norms[id(fc.op)]
        output = layer([x, _gate(plan, gates, x, in_map, mask_only=True)])
        layer.set_weights(fc.op.get_weights())
        return [output]

    gated, new_layers = rebuild(plan, {}, after_call=insert_gates, replace_call=masked_norm)
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


def _gate(plan: ChannelPlan, gates: dict, tensor: Any, channel_map: Any,
          mask_only: bool = False) -> Any:
    """``tensor`` through the gate of every prunable group on its channel axis; with
    ``mask_only``, the product of their masks broadcast to its shape instead."""
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
        where = {} if whole else {"positions": positions.tolist(),
                                  "index": channel_map.index[positions].tolist()}
        if mask_only:  # the first gate makes the mask, the next ones multiply it
            where["mask_only"] = True
            mask_only = False
        tensor = gates[group.name](tensor, **where)
    return tensor


def _set_importance_sources(plan: ChannelPlan, gates: dict, new_layers: dict) -> None:
    """Each gate's importance comes from its group's BatchNorms, else its producers' filters
    (:func:`dsa_tf.allocation.importance.importance_sources`), as layers of the gated copy."""
    for name, sources in importance_sources(plan).items():
        gates[name].importance_sources = [new_layers[id(fc.op)].name for fc in sources]
