"""LatencyModel: a model's predicted LiteRT latency as a function of its groups' keep ratios.

The prediction is the sum over the costed operators (:mod:`dsa_tf.structure.operators`) of
their measured invoke time (:class:`dsa_tf.deploy.latency_table.LatencyTable`), interpolated
bilinearly on the table's grid at the operator's kept input and output channels, plus a fixed
time for what pruning does not change (``fixed_ms``: the unpruned model's measured latency
minus the operators' predicted sum, when calibrated). At grid points the prediction is the
table's own sum; between them it is piecewise linear in every channel count, hence
differentiable almost everywhere in the keep ratios, which is what DSA's ADMM needs
(:func:`dsa_tf.allocation.admm.admm_iteration` takes any differentiable resource function).

Example:
    >>> import dsa_tf
    >>> from dsa_tf.deploy.latency_table import LatencyTable
    >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3)))
    >>> table = LatencyTable("doc", "none", "float32", 1)
    >>> for op in operators(plan):   # a made-up table: 1 ms per input x output channel
    ...     grid_in, grid_out = [1, op.channels_in], [1, op.channels_out]
    ...     table.entries[signature_key(op.signature)] = {
    ...         "channels_in": grid_in, "channels_out": grid_out,
    ...         "ms": [[i * o for o in grid_out] for i in grid_in]}
    >>> model = LatencyModel(plan, table)
    >>> import numpy as np
    >>> model.predict(np.ones(len(plan.prunable))) > model.predict(np.full(6, 0.5))
    True
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from dsa_tf.deploy.latency_table import LatencyTable, signature_key
from dsa_tf.structure.graph import ChannelPlan
from dsa_tf.structure.operators import operators


class LatencyModel:
    """Predicted latency (ms) of ``plan``'s model from a latency table.

    Args:
        plan: the model's :class:`dsa_tf.ChannelPlan`.
        table: a table covering every costed operator of the model.
        fixed_ms: time that pruning does not change (added to every prediction).

    Raises:
        ValueError: an operator whose signature the table does not cover, or channel counts
            outside its grid.
    """

    def __init__(self, plan: ChannelPlan, table: LatencyTable, fixed_ms: float = 0.0):
        self.table = table
        self.fixed_ms = float(fixed_ms)
        self.operators = operators(plan)
        self._entries = []
        missing = []
        for op in self.operators:
            entry = table.entries.get(signature_key(op.signature))
            if entry is None:
                missing.append(f"{op.name} ({op.signature['kind']} {op.signature})")
                continue
            grid_in = np.asarray(entry["channels_in"], dtype=np.float64)
            grid_out = np.asarray(entry["channels_out"], dtype=np.float64)
            depthwise = op.signature["kind"].startswith("Depthwise")
            if op.channels_in > grid_in[-1] or (
                    not depthwise and op.channels_out > grid_out[-1]):
                missing.append(f"{op.name} ({op.channels_in}->{op.channels_out} channels, the "
                               f"table's grid ends at {grid_in[-1]:.0f}->{grid_out[-1]:.0f})")
                continue
            self._entries.append((op, grid_in, grid_out, np.asarray(entry["ms"], np.float64),
                                  depthwise))
        if missing:
            raise ValueError(f"The latency table ({table.device}, {table.precision}) does not "
                             f"cover {len(missing)} operator(s): {'; '.join(missing[:5])}. "
                             f"Measure a table for this model (dsa-tf profile).")

    def predict(self, keep_ratios: np.ndarray) -> float:
        """Predicted latency in ms at the given keep ratios (numpy, exact interpolation)."""
        total = self.fixed_ms
        for op, grid_in, grid_out, ms, depthwise in self._entries:
            n_in, n_out = op.counts(keep_ratios)
            row = np.array([np.interp(n_in, grid_in, ms[:, j]) for j in range(ms.shape[1])])
            total += row[0] if depthwise else float(np.interp(n_out, grid_out, row))
        return float(total)

    def tf_predict(self, keep_ratios: tf.Tensor) -> tf.Tensor:
        """The same prediction as a differentiable TensorFlow function of the keep ratios."""
        total = tf.constant(self.fixed_ms, tf.float32)
        for op, grid_in, grid_out, ms, depthwise in self._entries:
            n_in = _affine(op.kept_in, keep_ratios)
            column = [_interp(n_in, grid_in, ms[:, j]) for j in range(ms.shape[1])]
            if depthwise:
                total += column[0]
            else:
                total += _interp(_affine(op.kept_out, keep_ratios), grid_out, tf.stack(column))
        return total


def _affine(form, keep_ratios: tf.Tensor) -> tf.Tensor:
    return tf.tensordot(tf.constant(form.b, tf.float32), keep_ratios, 1) + form.c


def _interp(x: tf.Tensor, grid: np.ndarray, values) -> tf.Tensor:
    """Piecewise-linear interpolation of ``values`` on ``grid`` at x (clamped to the grid)."""
    values = tf.cast(tf.convert_to_tensor(values), tf.float32)
    if len(grid) == 1:
        return values[0]
    grid_t = tf.constant(grid, tf.float32)
    x = tf.clip_by_value(x, grid_t[0], grid_t[-1])
    upper = tf.clip_by_value(tf.searchsorted(grid_t, tf.reshape(x, [1]), side="right")[0],
                             1, len(grid) - 1)
    low, high = grid_t[upper - 1], grid_t[upper]
    weight = (x - low) / (high - low)
    return values[upper - 1] * (1.0 - weight) + values[upper] * weight
