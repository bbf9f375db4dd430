"""Run a model with chosen channels forced to zero: the reference a stripped model matches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras
from dsa_tf.structure.graph import ChannelPlan, analyze, resolve
from dsa_tf.structure.rules import ChannelNorm
from dsa_tf.structure.strip import space_masks


def masked_call(model: Any, keep: Mapping[str, Iterable[int]], inputs: Any, *,
                exclude: Iterable[str] = ()) -> list[np.ndarray]:
    """Runs ``model`` (in inference mode) with the channels not in ``keep`` set to zero at the
    output of every layer of their group.

    This is what :func:`dsa_tf.strip` promises to compute with a smaller model; use it to check
    a strip or to see what pruning a group does before rebuilding anything.

    Args:
        model: a functional or Sequential Keras model.
        keep: ``{group_name: kept channel indices}`` as for :func:`dsa_tf.strip`.
        inputs: one array, or a list of arrays for a model with several inputs.
        exclude: layer names to keep whole, as for :func:`dsa_tf.analyze`.

    Returns:
        The model's outputs as a flat list of numpy arrays.

    Example:
        >>> import numpy as np, dsa_tf
        >>> model = dsa_tf.models.cifar_resnet(20)
        >>> x = np.zeros((1, 32, 32, 3), "float32")
        >>> keep = {"stage1_block1_1_conv": range(8)}
        >>> out = dsa_tf.masked_call(model, keep, x)[0]
        >>> bool(np.allclose(out, dsa_tf.strip(model, keep)(x), atol=1e-5))
        True
    """
    plan = analyze(model, exclude)
    return _masked_outputs(plan, keep, tf.nest.flatten(inputs))


def _masked_outputs(plan: ChannelPlan, keep: Mapping[str, Iterable[int]],
                    inputs: list) -> list[np.ndarray]:
    masks = space_masks(plan, keep)
    values: dict[int, Any] = {}
    for tensor, value in zip(_keras.model_inputs(plan.model), inputs):
        values[id(tensor)] = tf.convert_to_tensor(value)

    def lookup(t: Any) -> Any:
        return values[id(resolve(plan.alias, t))]

    for fc in plan.calls:
        in_map = fc.info.in_maps[0] if fc.info.in_maps else None
        if isinstance(fc.rule, ChannelNorm) and not fc.opaque and in_map is not None \
                and not in_map.keep_mask(masks).all():  # normalised over the kept channels
            x = lookup(fc.call.inputs[0])
            keep = in_map.keep_mask(masks).astype(x.dtype.as_numpy_dtype)
            outputs = [ChannelNorm.masked_call(fc.op, x, keep)]
        else:
            outputs = fc.call.replay(fc.op, lookup)
        for old, new, channel_map in zip(fc.call.outputs, outputs, fc.out_maps):
            if channel_map is not None:
                keep_mask = channel_map.keep_mask(masks)
                if not keep_mask.all():
                    new = new * tf.constant(keep_mask.astype(new.dtype.as_numpy_dtype))
            values[id(resolve(plan.alias, old))] = new
    return [np.asarray(lookup(t)) for t in _keras.model_outputs(plan.model)]
