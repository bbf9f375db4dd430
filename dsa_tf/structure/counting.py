"""FLOPs and parameter counts of plain Keras models.

Convention: FLOPs = 2 x multiply-accumulates of the layers that multiply by weights:
Conv1D/2D/3D (kernel x C_in x C_out per output pixel), their transposed versions (kernel x C_in
x C_out per *input* pixel), DepthwiseConv (kernel x channels per output pixel),
SeparableConv (its depthwise and pointwise parts) and Dense (C_in x C_out per position). Bias
additions, normalisation, activations, pooling and element-wise ops count 0, as in DSA and most
pruning papers. A subclassed layer counts the FLOPs of the standard layers its call runs
(traced as the analysis traces it, :mod:`dsa_tf.structure.inline`); layers dsa_tf does not
know count 0 FLOPs. Parameters are all weights of the
model, trainable or not (what ``model.count_params()`` reports).
"""

from __future__ import annotations

from typing import Any

from dsa_tf import _keras
from dsa_tf.structure.graph import _flat_calls, full_flops


def count_flops(model: Any) -> int:
    """FLOPs (2 x MACs) of one forward pass of one example, convention in the module doc.

    Args:
        model: a functional or Sequential Keras model with static spatial input shapes.

    Example:
        >>> import dsa_tf
        >>> dsa_tf.count_flops(dsa_tf.models.cifar_resnet(20))
        81626368
    """
    if not _keras.is_functional(model):
        raise ValueError(f"count_flops needs a functional or Sequential model; {model.name!r} "
                         f"is a subclassed or unbuilt model.")
    return sum(full_flops(call, name) for call, name in _flat_calls(model, (), {}, set(),
                                                                     strict=False))


def count_params(model: Any) -> int:
    """Number of weights of the model (trainable and not), each shared weight once.

    Example:
        >>> import dsa_tf
        >>> dsa_tf.count_params(dsa_tf.models.cifar_resnet(20))
        274042
    """
    seen = {}
    for weight in model.weights:
        seen[id(weight)] = weight
    return int(sum(int(_size(w.shape)) for w in seen.values()))


def _size(shape: Any) -> int:
    size = 1
    for d in shape:
        size *= int(d)
    return size
