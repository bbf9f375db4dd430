"""Subclassed layers traced into the standard layers they call.

keras-hub builds its backbones from its own ``Layer`` subclasses (MobileNet's
``DepthwiseConvBlock``, EfficientNet's ``FusedMBConvBlock``...), whose ``call`` runs standard
Keras layers and operations. dsa_tf has no rule for such a class, and does not guess one;
instead it traces the layer: its ``call`` runs once on symbolic inputs of the call's shapes,
and the Keras layers and operations it runs on them form a functional graph that the
analysis walks as it walks a nested model. So the
layer prunes exactly as its body does, and strip, like a gated model, flattens it into the
standard layers it is made of.

A layer is traced only when it is neither a Keras class nor a model, has no rule, and is not
``exclude``d. Tracing is refused (the layer is then reported as unsupported, as before)
when its ``call`` cannot run on symbolic tensors (TensorFlow functions, Python branches on
values), when it uses weights of its own rather than through its sublayers, or when it is
called more than once (its weights are shared).
"""

from __future__ import annotations

from typing import Any

from dsa_tf import _keras


class TraceError(ValueError):
    """A subclassed layer that cannot be traced; the message says why."""


def traceable(op: Any) -> bool:
    """Whether ``op`` is a layer dsa_tf may trace: a ``Layer`` subclass defined outside
    Keras, not a model.

    Example:
        >>> import tensorflow as tf
        >>> traceable(tf.keras.layers.Dense(2))
        False
    """
    module = type(op).__module__
    keras = _keras.keras_of(op)
    return (isinstance(op, keras.layers.Layer) and not _keras.is_model(op)
            and not module.startswith(("keras.", "tf_keras.")))


def trace(call: _keras.Call) -> Any:
    """The functional model computing ``call`` with the standard layers its layer runs.

    Its inputs stand for ``call.inputs`` and its flat outputs for ``call.outputs``, in order;
    its layers are the traced layer's own sublayers (their weights are the model's). The
    trace leaves the user's layers as they were (:func:`dsa_tf._keras.nodes_restored`).

    Raises:
        TraceError: the layer cannot be traced (see the module docstring).
    """
    op = call.op
    keras = _keras.keras_of(op)
    inputs = {id(t): keras.Input(shape=_keras.shape_of(t)[1:], batch_size=_keras.shape_of(t)[0],
                                 dtype=t.dtype) for t in call.inputs}
    with _keras.nodes_restored(op):
        try:
            outputs = call.replay(op.call, lambda t: inputs[id(t)])
            model = keras.Model(list(inputs.values()), outputs, name=op.name)
        except Exception as error:  # a call() that cannot run on symbolic tensors
            first_line = (str(error).splitlines() or [""])[0][:200]
            raise TraceError(f"its call cannot be traced on symbolic tensors "
                             f"({type(error).__name__}: {first_line})") from None
    used = {id(w) for inner in _keras.calls(model) for w in getattr(inner.op, "weights", [])}
    if any(id(w) not in used for w in op.weights):
        raise TraceError("its call uses weights of its own, not only through its sublayers")
    return model
