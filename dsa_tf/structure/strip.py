"""Physical stripping: rebuild a genuinely smaller plain Keras model with sliced weights.

The model is replayed layer by layer with new inputs. Every layer is re-created from its config
(a convolution or Dense layer with fewer filters/units when its channels are pruned), called
exactly as in the original graph, and given the original weights sliced along the axes its
rule names. Nested models are flattened into the result. The original model is not touched:
no layer of it is called, built or re-weighted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.structure.graph import ChannelPlan, FlatCall, analyze, resolve, weight_axes
from dsa_tf.structure.rules import grouped_kernel, is_mask_layer, is_masked_form


def space_masks(plan: ChannelPlan, keep: Mapping[str, Iterable[int]]) -> dict[int, np.ndarray]:
    """Validates ``keep`` and returns a boolean keep mask for every channel space it prunes.

    Raises:
        ValueError: an unknown group name, a group that is not prunable, an empty selection,
            indices that repeat or fall outside ``[0, channels)``, or, in a group with
            :attr:`~dsa_tf.structure.graph.Group.blocks` (a grouped convolution's channels),
            different counts in its blocks.
    """
    masks: dict[int, np.ndarray] = {}
    for name, indices in keep.items():
        try:
            group = plan.group(name)
        except KeyError as error:
            raise ValueError(error.args[0]) from None
        indices = np.asarray(list(indices), dtype=np.int64)
        if indices.size == 0:
            raise ValueError(f"keep[{name!r}] is empty; every group keeps at least one channel.")
        if indices.min() < 0 or indices.max() >= group.channels:
            raise ValueError(
                f"keep[{name!r}] has indices outside [0, {group.channels}): "
                f"{sorted(set(indices[(indices < 0) | (indices >= group.channels)].tolist()))}")
        if len(np.unique(indices)) != indices.size:
            raise ValueError(f"keep[{name!r}] repeats channel indices.")
        if indices.size == group.channels:
            continue
        if not group.prunable:
            raise ValueError(f"Group {name!r} cannot be pruned: {group.reason}.")
        mask = np.zeros(group.channels, dtype=bool)
        mask[indices] = True
        per_block = mask.reshape(group.blocks, -1).sum(axis=1)
        if len(set(per_block.tolist())) > 1:
            raise ValueError(
                f"keep[{name!r}] keeps {per_block.tolist()} channels in the {group.blocks} "
                f"blocks of {group.channels // group.blocks} channels that a grouped "
                f"convolution reads or writes; every block must keep the same number.")
        g = plan.groups.index(group)
        for space in np.flatnonzero(plan.group_of_space == g).tolist():
            masks[space] = mask
    return masks


def strip(model: Any, keep: Mapping[str, Iterable[int]], *, exclude: Iterable[str] = ()) -> Any:
    """Returns a smaller plain Keras model that keeps only the given channels.

    :func:`dsa_tf.strip` is this function for plain models, and also takes a gated model
    without ``keep`` (its gates' hard masks then say what is kept).

    Args:
        model: a functional or Sequential Keras model (Keras 3 or tf_keras).
        keep: for each channel group to prune (names from :func:`dsa_tf.analyze`), the indices
            of the channels to keep. Groups not listed keep all their channels.
        exclude: layer names to keep whole, as for :func:`dsa_tf.analyze`.

    Returns:
        A new functional model of standard Keras layers whose outputs equal the original
        model's outputs with the dropped channels forced to zero at every layer of their group.
        Nested models are flattened into it; a layer whose name would clash is renamed
        ``<nested model>_<layer>``. Channel mask layers (DSA's gates) are left out.

    Raises:
        ValueError: for unsupported models (see :func:`dsa_tf.analyze`) and invalid ``keep``.

    Example:
        >>> import dsa_tf
        >>> from dsa_tf.structure.strip import strip
        >>> model = dsa_tf.models.cifar_resnet(20)
        >>> small = strip(model, keep={"stage1_block1_1_conv": range(8)})
        >>> dsa_tf.count_params(small) < dsa_tf.count_params(model)
        True
    """
    plan = analyze(model, exclude)
    return rebuild(plan, space_masks(plan, keep))[0]


def rebuild(plan: ChannelPlan, masks: dict[int, np.ndarray],
            after_call: Callable[[FlatCall, list], list] | None = None,
            replace_call: Callable[[FlatCall, Callable, str], list | None] | None = None,
            ) -> tuple[Any, dict]:
    """Replays ``plan``'s model with the channels of ``masks`` removed (see :func:`strip`).

    Channel mask layers (:func:`dsa_tf.structure.rules.is_mask_layer`) are left out, and the
    masked form of a layer (:func:`dsa_tf.structure.rules.is_masked_form`) becomes its plain
    class, called on its first input. ``replace_call(call, lookup, name)`` may compute a call's
    new outputs itself (from the new tensors ``lookup`` gives for old ones, with a layer named
    ``name``; None: replay it), and
    ``after_call(call, outputs)`` may replace each call's new outputs (prune_to_budget inserts
    gates and masked normalisations with them).

    Returns:
        The new model, and a dict from ``id(old layer)`` to its new layer.
    """
    model = plan.model
    keras = _keras.keras_of(model)
    new_tensors: dict[int, Any] = {}
    for tensor in _keras.model_inputs(model):
        shape = _keras.shape_of(tensor)
        new_tensors[id(tensor)] = keras.Input(
            shape=shape[1:], batch_size=shape[0], dtype=tensor.dtype,
            name=_keras.input_name(tensor))

    alias = plan.alias
    new_ops: dict[int, Any] = {}
    names = Counter([_keras.input_name(t) for t in _keras.model_inputs(model)]
                    + [fc.op.name for fc in {id(fc.op): fc for fc in plan.calls}.values()])
    slices = []
    for fc in plan.calls:
        if is_mask_layer(fc.op):
            new_tensors[id(resolve(alias, fc.call.outputs[0]))] = \
                new_tensors[id(resolve(alias, fc.call.inputs[0]))]
            continue
        # A nested layer whose name also exists elsewhere gets its model's name in front.
        name = fc.name.replace("/", "_") if names[fc.op.name] > 1 else fc.op.name

        def new_of(t: Any) -> Any:
            return new_tensors[id(resolve(alias, t))]

        outputs = replace_call(fc, new_of, name) if replace_call is not None else None
        if outputs is None:
            if id(fc.op) not in new_ops:
                new_ops[id(fc.op)] = _new_op(fc, masks, name)
                slices.append((fc, new_ops[id(fc.op)]))
            outputs = ([new_ops[id(fc.op)](new_of(fc.call.inputs[0]))] if is_masked_form(fc.op)
                       else fc.call.replay(new_ops[id(fc.op)], new_of))
        if after_call is not None:
            outputs = after_call(fc, outputs)
        for old, new in zip(fc.call.outputs, outputs):
            new_tensors[id(resolve(alias, old))] = new

    def lookup(t: Any) -> Any:
        return new_tensors[id(resolve(alias, t))]

    inputs = tf.nest.map_structure(lookup, _keras.input_structure(model))
    outputs = tf.nest.map_structure(lookup, _keras.output_structure(model))
    # after_call may add a call per channel space of each output (prune_to_budget's gates).
    num_calls = len(plan.calls) + sum(len(np.unique(m.spaces)) for fc in plan.calls
                                      for m in fc.out_maps if m is not None)
    stripped = _keras.functional_model(keras, inputs, outputs, model.name, num_calls)
    for fc, new_op in slices:
        if getattr(fc.op, "weights", None):
            new_op.set_weights(_sliced_weights(fc, plan, masks))
    return stripped, new_ops


def _kept(channel_map: Any, masks: dict[int, np.ndarray]) -> np.ndarray | None:
    return None if channel_map is None else channel_map.keep_mask(masks)


def _new_op(fc: FlatCall, masks: dict, name: str) -> Any:
    config = _keras.layer_config(fc.op)
    if fc.rule is not None and not fc.opaque and fc.out_maps and fc.out_maps[0] is not None:
        config = fc.rule.resized(config, [int(_kept(m, masks).sum()) for m in fc.out_maps])
    if "name" in config:
        config["name"] = name
    if is_masked_form(fc.op):
        return getattr(_keras.keras_of(fc.op).layers, fc.op.unmasked_class).from_config(config)
    return _keras.recreate(fc.op, config)


def _sliced_weights(fc: FlatCall, plan: ChannelPlan, masks: dict) -> list[np.ndarray]:
    kept_in = _kept(fc.info.in_maps[0] if fc.info.in_maps else None, masks)
    multiplier = getattr(fc.op, "depth_multiplier", 1)
    kept = {
        "in": kept_in,
        "out": _kept(fc.out_maps[0] if fc.out_maps else None, masks),
        "mid": None if kept_in is None else np.repeat(kept_in, multiplier),
    }
    result = []
    for weight, axes in weight_axes(fc):
        value = np.asarray(weight.numpy() if hasattr(weight, "numpy") else weight)
        if "group_in" in axes:  # (..., input channels / groups, filters)
            value = grouped_kernel(value, kept["in"], kept["out"], fc.op.groups)
            axes = axes[:-2]
        for axis, role in enumerate(axes):
            if role is not None:
                value = np.compress(kept[role], value, axis=axis)
        result.append(value)
    return result
