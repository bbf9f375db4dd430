"""The state of a gated model's gates: listing them, their keep ratios and importances.

Example:
    >>> import dsa_tf
    >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), budget=0.5)
    >>> dsa_tf.set_keep_ratios(gated, {"stem_conv": 0.5})
    >>> round(dsa_tf.keep_ratios(gated)["stem_conv"], 3)
    0.5
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from typing import Any

import tensorflow as tf

from dsa_tf.allocation.gates import is_gate
from dsa_tf.allocation.importance import layer_importance

KEEP_ALL_MARGIN = 1e-7


def gates_of(model: Any) -> list:
    """The ChannelGate layers of a gated model, in network order."""
    return [layer for layer in model.layers if is_gate(layer)]


def refresh_importance(model: Any) -> None:
    """Sets every gate's base importance from its source layers' current weights (detached).

    A group with several sources (the BatchNorms of a residual stage) averages them.
    """
    for gate in gates_of(model):
        values = [layer_importance(model.get_layer(n)) for n in gate.importance_sources]
        if values:
            gate.importance.assign(tf.add_n(values) / len(values))


def resample_masks(model: Any) -> None:
    """Starts a new allocation step: refreshes every gate's importance, advances its noise
    counter and draws its Bernoulli mask, once for the whole group (every call point of the
    gate applies the same mask). Traceable: :class:`dsa_tf.DSACallback` runs it in a
    ``tf.function`` before each weight step of the allocation."""
    refresh_importance(model)
    for gate in gates_of(model):
        gate.step.assign_add(1)
        gate.mask.assign(gate.sample())


@contextlib.contextmanager
def sampled_masks(model: Any) -> Iterator[None]:
    """Within the block, calls of ``model`` traced with ``training=False`` apply every gate's
    sampled mask (as in training) instead of its hard mask; the other layers run in inference
    (BatchNorm with its moving statistics, no dropout). What a keep-ratio gradient with
    ``batch_statistics=False`` (:func:`dsa_tf.allocation.keep_gradients.keep_ratio_gradients`)
    runs under."""
    gates = gates_of(model)
    for gate in gates:
        gate.sampled_in_inference = True
    try:
        yield
    finally:
        for gate in gates:
            gate.sampled_in_inference = False


def keep_ratios(model: Any) -> dict[str, float]:
    """The current keep ratio of every gated group: ``{group_name: sigmoid(theta)}``.

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), 0.5)
        >>> round(dsa_tf.keep_ratios(gated)["stage1_block1_1_conv"], 3)
        0.993
    """
    gates = gates_of(model)
    if not gates:
        raise ValueError(f"{model.name!r} has no ChannelGate; make it with "
                         f"dsa_tf.prune_to_budget(model, budget).")
    return {gate.group: float(gate.keep_ratio()) for gate in gates}


def set_keep_ratios(model: Any, ratios: Mapping[str, float]) -> None:
    """Sets the keep ratio of the named groups (0 < ratio <= 1; theta = logit(ratio)).

    A ratio of 1 keeps every channel of the group (theta is set to logit(1 - 1e-7), which
    keeps all channels of any group of fewer than 5 million).

    Raises:
        ValueError: an unknown group name or a ratio outside (0, 1].

    Example:
        >>> import dsa_tf
        >>> gated = dsa_tf.prune_to_budget(dsa_tf.models.cifar_resnet(20), budget=0.5)
        >>> dsa_tf.set_keep_ratios(gated, {"stem_conv": 1.0})
        >>> [r["kept"] for r in dsa_tf.allocation_report(gated)][:1]
        [16]
    """
    gates = {gate.group: gate for gate in gates_of(model)}
    for name, ratio in ratios.items():
        if name not in gates:
            raise ValueError(f"No gated group {name!r}; gated groups are {sorted(gates)}.")
        if not 0 < float(ratio) <= 1:
            raise ValueError(f"Keep ratio of {name!r} must be in (0, 1], got {ratio}.")
    for name, ratio in ratios.items():
        ratio = min(float(ratio), 1 - KEEP_ALL_MARGIN)
        gates[name].theta.assign(math.log(ratio / (1 - ratio)))
