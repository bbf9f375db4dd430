"""Masked normalisations: a gated model's LayerNormalization or RMSNormalization over the
kept channels only.

When a prunable group is normalised by a LayerNormalization (ConvNeXt's residual streams) or
an RMSNormalization over its channels, pruning it changes the statistics: the stripped layer
normalises over the channels it keeps. In the gated model, :func:`dsa_tf.prune_to_budget`
therefore replaces such a layer with its masked form (``MaskedLayerNormalization``,
``MaskedRMSNormalization``), called on ``[x, mask]``, where ``mask`` is the group's current
gate mask (the same stochastic mask as the gate's during DSA's allocation, the hard mask in
inference) broadcast over ``x``: the statistics are taken over the kept channels and the
dropped ones are set to zero, so ``strip(gated)(x)`` equals ``gated(x, training=False)``.
The structure sees a masked form as its plain class (``unmasked_class``), and strip rebuilds
it as that class with the kept channels' weights.

Example:
    >>> import numpy as np, dsa_tf
    >>> from dsa_tf.allocation.masked_norm import masked_norm_class
    >>> layer = masked_norm_class()(epsilon=1e-6)
    >>> x = np.array([[1.0, 2.0, 3.0, 100.0]], "float32")
    >>> mask = np.array([[1.0, 1.0, 1.0, 0.0]], "float32")
    >>> [round(float(v), 3) for v in np.asarray(layer([x, mask]))[0]]
    [-1.225, 0.0, 1.225, 0.0]
"""

from __future__ import annotations

from typing import Any

from dsa_tf._keras import per_flavour
from dsa_tf.structure.rules import ChannelNorm

MASKABLE = ("LayerNormalization", "RMSNormalization")  # where the flavour has them


def make_masked_norm_classes(keras: Any) -> dict[str, type]:
    """The masked form of every class of ``MASKABLE`` that one Keras flavour (``keras`` or
    ``tf_keras``) has, by the plain class's name (each registered for loading saved
    models as ``dsa_tf>Masked<name>``)."""
    return {name: _masked_class(keras, name) for name in MASKABLE
            if hasattr(keras.layers, name)}


def _masked_class(keras: Any, name: str) -> type:
    @keras.utils.register_keras_serializable(package="dsa_tf", name=f"Masked{name}")
    class Masked(getattr(keras.layers, name)):
        __doc__ = f"""{name} over the channels where its second input is 1."""

        unmasked_class = name  # dsa_tf.structure.rules.is_masked_form

        def build(self, input_shape: Any) -> None:
            super().build(input_shape[0])

        def call(self, inputs: Any) -> Any:
            x, mask = inputs
            return ChannelNorm.masked_call(self, x, mask)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape[0]

    Masked.__name__ = Masked.__qualname__ = f"Masked{name}"
    return Masked


masked_norm_classes = per_flavour(make_masked_norm_classes)
masked_norm_classes.__doc__ = """The masked normalisation classes for ``keras`` (default:
``tf.keras``), by the name of the class each stands for."""


def masked_norm_class(keras: Any = None) -> type:
    """The MaskedLayerNormalization class for ``keras`` (default: ``tf.keras``)."""
    return masked_norm_classes(keras)["LayerNormalization"]
