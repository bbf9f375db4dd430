"""Which Keras a model belongs to, and the few graph-introspection calls that differ.

dsa_tf works with Keras 3 (TensorFlow 2.21's default ``tf.keras``) and with tf_keras
(``TF_USE_LEGACY_KERAS=1``). The flavour is read off each model's class, so both kinds of
model can even live in one process. Everything that touches Keras internals is here; the rest
of the package sees a functional model as a flat list of :class:`Call` records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import tensorflow as tf


def default_keras() -> ModuleType:
    """Returns the Keras that ``tf.keras`` resolves to in this process."""
    return tf.keras


def is_keras3(obj: Any) -> bool:
    """True when ``obj`` (a layer, model or operation) comes from Keras 3, False for tf_keras."""
    module = type(obj).__module__
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("tf_keras"):
            return False
        if cls.__module__.startswith("keras"):
            return True
    raise TypeError(f"{type(obj).__name__} (module {module}) is not a Keras object.")


def keras_of(obj: Any) -> ModuleType:
    """Returns the Keras module (``keras`` or ``tf_keras``) that ``obj`` belongs to."""
    return importlib.import_module("keras" if is_keras3(obj) else "tf_keras")


def is_keras_tensor(obj: Any) -> bool:
    """True for a symbolic Keras tensor of either flavour."""
    name = type(obj).__name__
    return name == "KerasTensor" or (
        hasattr(obj, "_keras_history") and not isinstance(obj, tf.Variable)
    )


def is_functional(model: Any) -> bool:
    """True for models with a graph of layers (functional or built Sequential models)."""
    if is_keras3(model):
        from keras.src.models.functional import Functional
        from keras.src.models.sequential import Sequential

        if isinstance(model, Sequential):
            return getattr(model, "_functional", None) is not None
        return isinstance(model, Functional)
    return bool(getattr(model, "_is_graph_network", False))


def is_model(op: Any) -> bool:
    """True when ``op`` is a Keras model (so a nested model used as a layer)."""
    return isinstance(op, keras_of(op).Model)


@dataclasses.dataclass
class Call:
    """One call of a layer or operation in a functional graph.

    Attributes:
        op: the layer, or in Keras 3 a bare operation such as the one behind ``x + y``.
        node: the Keras node of this call (used to replay it with new tensors).
        inputs: the Keras tensors the call consumed, in the node's flat order.
        outputs: the Keras tensors it produced, flat.
    """

    op: Any
    node: Any
    inputs: list
    outputs: list

    def replay(self, op: Any, lookup: Callable[[Any], Any]) -> list:
        """Calls ``op`` with this call's arguments, each Keras tensor ``t`` replaced by
        ``lookup(t)``. Returns the flat list of outputs."""
        def swap(x: Any) -> Any:
            return lookup(x) if is_keras_tensor(x) else x

        if is_keras3(self.op):
            args, kwargs = self.node.arguments.convert(swap)
        else:
            args = tf.nest.map_structure(swap, self.node.call_args)
            kwargs = tf.nest.map_structure(swap, self.node.call_kwargs)
        return tf.nest.flatten(op(*args, **kwargs))


def functional_model(keras: ModuleType, inputs: Any, outputs: Any, name: str,
                     num_calls: int) -> Any:
    """``keras.Model(inputs, outputs, name=name)`` for graphs of any depth.

    Both Keras flavours map a new functional graph with a recursive walk, a few Python frames
    per layer on the longest path, so a deep graph (EfficientNetV2L with a gate after each
    BatchNorm: over 1,500 layers) exceeds Python's default recursion limit of 1,000. The
    limit is raised for the call, to 1,000 frames plus 8 per call of the graph.

    Args:
        keras: the Keras module (``keras`` or ``tf_keras``).
        inputs: the model's input Keras tensors (any structure).
        outputs: its output Keras tensors (any structure).
        name: the model's name.
        num_calls: the number of layer calls in the graph (an upper bound on its depth).

    Example:
        >>> import tensorflow as tf
        >>> x = tf.keras.Input((4,))
        >>> functional_model(tf.keras, x, tf.keras.layers.Dense(2)(x), "m", 1).name
        'm'
    """
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 1000 + 8 * num_calls))
    try:
        return keras.Model(inputs, outputs, name=name)
    finally:
        sys.setrecursionlimit(previous)


def graph_of(model: Any) -> Any:
    """The functional graph behind ``model`` (a built Sequential model's functional twin)."""
    if is_keras3(model):
        from keras.src.models.sequential import Sequential

        if isinstance(model, Sequential):
            return model._functional
    return model


def calls(model: Any) -> list[Call]:
    """The calls of a functional model in topological order, input layers left out."""
    graph = graph_of(model)
    result = []
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            if node.is_input:
                continue
            if is_keras3(graph):
                op, inputs = node.operation, list(node.arguments.keras_tensors)
            else:
                op, inputs = node.layer, list(node.keras_inputs)
            result.append(Call(op, node, inputs, tf.nest.flatten(node.outputs)))
    return result


@contextlib.contextmanager
def nodes_restored(layer: Any) -> Iterator[None]:
    """Leaves ``layer`` and every layer inside it with the graph nodes they had on entry.

    Calling a layer on symbolic tensors records a node on it (and its consumers); a symbolic
    trace of a layer's body (:mod:`dsa_tf.structure.inline`) would otherwise leave such
    nodes on the user's layers. A functional model built inside keeps the nodes it uses.
    """
    layers = list(layer._flatten_layers(include_self=True, recursive=True))
    saved = [(each, len(each._inbound_nodes), len(each._outbound_nodes)) for each in layers]
    try:
        yield
    finally:
        for each, inbound, outbound in saved:
            del each._inbound_nodes[inbound:]
            del each._outbound_nodes[outbound:]


def input_structure(model: Any) -> Any:
    """The model's input Keras tensors in the structure the model was built with."""
    graph = graph_of(model)
    return graph._inputs_struct if is_keras3(graph) else graph._nested_inputs


def output_structure(model: Any) -> Any:
    """The model's output Keras tensors in the structure the model was built with."""
    graph = graph_of(model)
    return graph._outputs_struct if is_keras3(graph) else graph._nested_outputs


def model_inputs(model: Any) -> list:
    """The model's input Keras tensors, flat."""
    return list(tf.nest.flatten(input_structure(model)))


def model_outputs(model: Any) -> list:
    """The model's output Keras tensors, flat."""
    return list(tf.nest.flatten(output_structure(model)))


def input_name(tensor: Any) -> str:
    """The name of the InputLayer behind a model input tensor."""
    history = tensor._keras_history
    return (history.operation if hasattr(history, "operation") else history.layer).name


def shape_of(tensor: Any) -> tuple:
    """The static shape of a Keras tensor as a tuple (None for unknown dimensions)."""
    return tuple(None if d is None else int(d) for d in tf.TensorShape(tensor.shape).as_list())


def layer_config(op: Any) -> dict:
    """A layer's or operation's config, without the stale build information of Keras 3.

    Keras 3 has no config for a layer made with arguments it cannot serialise (keras-hub
    makes its ``Identity`` layers so); such a layer gets the settings every layer has (name,
    trainable, dtype), which is its whole config when its class takes no others."""
    try:
        config = dict(op.get_config())
    except NotImplementedError:
        config = {"name": op.name, "trainable": op.trainable, "dtype": op.dtype_policy}
    config.pop("build_config", None)
    return config


def recreate(op: Any, config: dict) -> Any:
    """A new, unbuilt instance of ``op``'s class from ``config``."""
    return type(op).from_config(config)


def tf_variable(variable: Any) -> tf.Variable:
    """The ``tf.Variable`` behind a Keras variable (Keras 3 wraps it; tf_keras does not)."""
    return variable if isinstance(variable, tf.Variable) else variable.value


def per_flavour(make: Callable[[ModuleType], Any]) -> Callable[[ModuleType | None], Any]:
    """``get(keras=None)``: the class (or classes) ``make(keras)`` builds for one Keras
    flavour (default: ``tf.keras``), built once per flavour (a Keras layer subclasses one
    flavour's Layer, and registering it twice would clash). ``get.classes`` holds what was
    built so far."""
    classes: dict[str, Any] = {}

    def get(keras: ModuleType | None = None) -> Any:
        keras = keras or default_keras()
        key = keras.__name__.split(".")[0]
        if key not in classes:
            classes[key] = make(keras)
        return classes[key]

    get.classes = classes
    return get
