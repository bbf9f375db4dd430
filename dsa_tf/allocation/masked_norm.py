"""MaskedLayerNormalization: a gated model's LayerNormalization over the kept channels only.

When a prunable group is normalised by a LayerNormalization over its channels (ConvNeXt's
residual streams), pruning it changes the statistics: the stripped layer normalises over the
channels it keeps. In the gated model, :func:`dsa_tf.prune_to_budget` therefore replaces
such a layer with this one, called on ``[x, mask]``, where ``mask`` is the group's current gate
mask (the same stochastic mask as the gate's during DSA's allocation, the hard mask in
inference) broadcast over ``x``: the mean and variance are taken over the kept channels and
the dropped ones are set to zero, so ``strip(gated)(x)`` equals ``gated(x, training=False)``.
The structure sees it as its plain class (``unmasked_class``), and strip rebuilds it as a
LayerNormalization with the kept channels' gamma and beta.

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


def make_masked_norm_class(keras: Any) -> type:
    """The MaskedLayerNormalization class for one Keras flavour (``keras`` or ``tf_keras``)."""

    @keras.utils.register_keras_serializable(package="dsa_tf",
                                             name="MaskedLayerNormalization")
    class MaskedLayerNormalization(keras.layers.LayerNormalization):
        """LayerNormalization over the channels where its second input is 1."""

        unmasked_class = "LayerNormalization"  # dsa_tf.structure.rules.is_masked_form

        def build(self, input_shape: Any) -> None:
            super().build(input_shape[0])

        def call(self, inputs: Any) -> Any:
            x, mask = inputs
            return ChannelNorm.masked_call(self, x, mask)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape[0]

    return MaskedLayerNormalization


masked_norm_class = per_flavour(make_masked_norm_class)
masked_norm_class.__doc__ = """The MaskedLayerNormalization class for ``keras`` (default:
``tf.keras``)."""
