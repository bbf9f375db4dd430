"""Quantisation-aware training (QAT) of a stripped tf_keras model with tfmot.

tensorflow-model-optimization supports only tf_keras models, and importing it can switch the
process's ``tf.keras`` to tf_keras, so it is imported only here, and only for tf_keras models.
Keras 3 models get post-training full-integer quantisation instead:
``dsa_tf.export_tflite(model, path, quantize="int8", representative_data=...)``.

Example:
    >>> import dsa_tf
    >>> model = dsa_tf.models.cifar_resnet(8)
    >>> if dsa_tf.deploy.qat.is_supported(model):
    ...     _ = dsa_tf.quantize_aware(model)   # a tf_keras model: the QAT copy to fine-tune
    ... else:
    ...     try:
    ...         dsa_tf.quantize_aware(model)
    ...     except TypeError as error:
    ...         assert "TF_USE_LEGACY_KERAS=1" in str(error)
"""

from __future__ import annotations

from typing import Any

from dsa_tf import _keras


def is_supported(model: Any) -> bool:
    """True for the models :func:`quantize_aware` accepts: tf_keras models."""
    return not _keras.is_keras3(model)


def quantize_aware(model: Any) -> Any:
    """Returns a quantisation-aware copy of a tf_keras model, to fine-tune and export as int8.

    The copy (tfmot's ``quantization.keras.quantize_model``) simulates int8 arithmetic with
    fake-quantisation ops in training and in inference, so fine-tuning it adapts the weights to
    int8. Compile and fit it as usual, then export it with
    ``dsa_tf.export_tflite(qat_model, path, quantize="int8", representative_data=...)``, which
    keeps the ranges learned in training. The given model is not changed.

    Args:
        model: a functional or Sequential tf_keras model of layers tfmot supports (the plain
            layers ``dsa_tf.strip`` returns are).

    Returns:
        The quantisation-aware tf_keras model (uncompiled).

    Raises:
        TypeError: ``model`` is a Keras 3 model (tfmot supports only tf_keras).
    """
    if not is_supported(model):
        raise TypeError(
            f"quantize_aware needs a tf_keras model, but {model.name!r} is a Keras 3 model: "
            f"tensorflow-model-optimization supports only tf_keras. Either build the model "
            f"with tf_keras (set TF_USE_LEGACY_KERAS=1 before importing TensorFlow, then "
            f"prune and strip as usual), or skip QAT and use post-training full-integer "
            f"quantisation: dsa_tf.export_tflite(model, path, quantize=\"int8\", "
            f"representative_data=...).")
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_model(model)
