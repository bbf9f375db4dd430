"""DSA's held-out ``alpha_data``: checked against the model when ``fit`` begins, then read one
batch per ADMM iteration, endlessly and resumably.

Example:
    >>> import numpy as np
    >>> batches = [(np.zeros((2, 4)), np.zeros(2)), (np.ones((2, 4)), np.ones(2))]
    >>> stream = alpha_batches(batches, start=3)     # resumed after 3 iterations
    >>> float(next(stream)[1][0]), float(next(stream)[1][0])
    (1.0, 0.0)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf import _keras


def check_reiterable(alpha_data: Any) -> None:
    """Refuses data that cannot be read again and again (one-shot iterators, generators).

    Raises:
        ValueError: naming what was given and what to pass instead.
    """
    if isinstance(alpha_data, Iterator) or not isinstance(alpha_data, Iterable):
        why = "one-shot: exhausted after one pass" if isinstance(alpha_data, Iterator) \
            else "not iterable"
        raise ValueError(f"alpha_data must be read again and again, but the given "
                         f"{type(alpha_data).__name__} is {why}. Pass a tf.data.Dataset "
                         f"or a list of (x, y) batches.")


def check_alpha_data(alpha_data: Iterable, model: Any, loss_fn: Any) -> None:
    """Checks alpha_data's first batch against the model's inputs and the loss, so that a
    mismatch is reported when ``fit`` begins rather than at the first ADMM iteration.

    Raises:
        ValueError: no batch, a batch that is not ``(x, y)`` or ``(x, y, sample_weight)``,
            inputs of the wrong structure or shape, or labels the loss cannot use.
    """
    try:
        first = next(iter(alpha_data))
    except StopIteration:
        raise ValueError("alpha_data yielded no batch.") from None
    if not isinstance(first, (tuple, list)) or not 2 <= len(first) <= 3:
        raise ValueError(f"alpha_data must yield (x, y) or (x, y, sample_weight) batches; "
                         f"its first batch is {describe(first)}.")
    x, y = first[:2]
    inputs = _keras.model_inputs(model)
    names = [_keras.input_name(t) for t in inputs]
    if isinstance(x, Mapping):
        missing = [n for n in names if n not in x]
        if missing:
            raise ValueError(f"alpha_data's x has keys {sorted(x)}; the model's inputs are "
                             f"{names} (missing {missing}).")
        given = [x[n] for n in names]
    else:
        given = tf.nest.flatten(x)
    if len(given) != len(inputs):
        raise ValueError(f"alpha_data's x is {describe(x)}; the model has {len(inputs)} "
                         f"input(s) {names}.")
    for name, tensor, value in zip(names, inputs, given):
        expected = _keras.shape_of(tensor)
        if not tf.TensorShape(expected).is_compatible_with(_shape(value)):
            raise ValueError(f"alpha_data's x for the model input {name!r} has shape "
                             f"{_shape(value)}; the model expects {expected} (None: any "
                             f"size).")
    output = model(x, training=False)
    try:
        loss_fn(y, output)
    except (ValueError, TypeError, tf.errors.OpError) as error:
        raise ValueError(f"The keep-ratio loss fails on alpha_data's first batch: y is "
                         f"{describe(y)}, the model's output {describe(output)}. "
                         f"{type(error).__name__}: {error}") from error


def alpha_batches(alpha_data: Iterable, start: int) -> Iterator:
    """An endless iterator over alpha_data from batch ``start`` on. One batch is read per
    ADMM iteration, so starting at the iteration count makes a resumed fit read the
    batches the uninterrupted one would have read.

    Raises:
        ValueError: (when iterated) alpha_data yields no batch.
    """
    if isinstance(alpha_data, tf.data.Dataset):
        return iter(alpha_data.repeat().skip(start))
    if isinstance(alpha_data, Sized) and len(alpha_data):
        start %= len(alpha_data)

    def forever() -> Iterator:
        while True:
            empty = True
            for batch in alpha_data:
                empty = False
                yield batch
            if empty:
                raise ValueError("alpha_data yielded no batch.")

    return itertools.islice(forever(), start, None)


def describe(value: Any) -> str:
    """A batch or part of one, for error messages: its structure and shapes."""
    if isinstance(value, (tuple, list)):
        parts = ", ".join(describe(v) for v in value)
        return f"a {type(value).__name__} of {len(value)} ({parts})"
    if isinstance(value, Mapping):
        return f"a dict with keys {sorted(value)}"
    return f"an array of shape {_shape(value)}"


def _shape(value: Any) -> tuple:
    """The shape of an array, tensor or nested list, as a tuple."""
    return tuple(value.shape) if hasattr(value, "shape") else np.shape(value)
