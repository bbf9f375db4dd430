"""LatencyModel: a model's predicted LiteRT latency as a function of its groups' keep ratios.

The operators' sum is the sum over the costed operators (:mod:`dsa_tf.structure.operators`)
of their measured invoke time (:class:`dsa_tf.deploy.latency_table.LatencyTable`) at the
operator's kept input and output channels, read off the table's grid as described below.
Single-operator models do not see what the whole model adds (activations, additions, pooling,
the interpreter's per-invoke cost) nor what it saves (fused operators), so the prediction is
``fixed_ms + scale x sum``, with ``fixed_ms`` and ``scale`` fitted to whole-model
measurements of the same model stripped to a few widths (the table's calibration for the
model's :func:`fingerprint`, made by :func:`dsa_tf.deploy.profile.profile_latency`).

Two forms of the same table. :meth:`LatencyModel.predict`, what allocators, DSA's freeze
check and hard masks and the reports use, is the runtime's step function at integer counts:
an operator's output channels (a depthwise operator's channels) are rounded up to the next
point of the table's output grid (a multiple of its step), since CPU runtimes compute them
in tiles and a count between two multiples costs what the next one does (for ten
FLOPs-pruned ResNet-56s with arbitrary counts, XNNPACK float32, linear interpolation between
the grid points predicted 4-39% too little, rounding up 4-9% too little and once 9% too
much: BENCHMARKS.md, run 11); input channels, which enter about linearly, are
interpolated, and so are the output channels of the operators a table measured on a coarse
grid (those that cost next to nothing: ``coarse_below`` of
:func:`dsa_tf.deploy.latency_table.measure_table`). :meth:`LatencyModel.tf_predict`
interpolates linearly between the grid points along both axes: equal to ``predict`` at grid
points and never above it, piecewise linear in every channel count and hence differentiable
almost everywhere in the keep ratios, which is what DSA's ADMM needs
(:func:`dsa_tf.allocation.admm.admm_iteration` takes any differentiable resource function);
the counts latency budgets keep are grid points, where the two agree.

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
    >>> model.group_steps().tolist()   # time linear in the channels: the table's step
    [8, 8, 8, 8, 8, 8]
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import tensorflow as tf

from dsa_tf.deploy.latency_table import LatencyTable, signature_key
from dsa_tf.structure.graph import ChannelPlan
from dsa_tf.structure.operators import operators
from dsa_tf.structure.quadratic import Quadratic


class LatencyModel:
    """Predicted latency (ms) of ``plan``'s model from a latency table.

    Args:
        plan: the model's :class:`dsa_tf.ChannelPlan`.
        table: a table covering every costed operator of the model. Its calibration for the
            model, if it has one, sets ``fixed_ms`` and ``scale``; else they are 0 and 1 and
            ``calibrated`` is False.

    Times that fall as channels grow (a runtime's tile steps, or timing noise) are raised to
    the largest time at fewer channels, so that the prediction never falls as a group keeps
    more channels (allocators bisect on it, and the ADMM expects a non-decreasing resource).
    The measured times as they are decide :meth:`group_steps`.

    Raises:
        ValueError: an operator whose signature the table does not cover, or channel counts
            outside its grid.
    """

    def __init__(self, plan: ChannelPlan, table: LatencyTable):
        self.table = table
        self.fingerprint = fingerprint(plan)
        calibration = table.calibrations.get(self.fingerprint)
        self.calibrated = calibration is not None
        self.fixed_ms = float(calibration["fixed_ms"]) if calibration else 0.0
        self.scale = float(calibration["scale"]) if calibration else 1.0
        self.operators = operators(plan)
        self._channels = np.array([g.channels for g in plan.prunable])
        self._groups = len(plan.prunable)
        entries, missing = [], []
        for op in self.operators:
            entry = table.entries.get(signature_key(op.signature))
            if entry is None:
                missing.append(f"{op.name} ({op.signature['kind']} {op.signature})")
                continue
            grid_in, grid_out = entry["channels_in"], entry["channels_out"]
            depthwise = op.signature["kind"].startswith("Depthwise")
            if op.channels_in > grid_in[-1] or (
                    not depthwise and op.channels_out > grid_out[-1]):
                missing.append(f"{op.name} ({op.channels_in}->{op.channels_out} channels, the "
                               f"table's grid ends at {grid_in[-1]:.0f}->{grid_out[-1]:.0f})")
                continue
            ms = np.asarray(entry["ms"], np.float64)
            # a depthwise operator has one output column: its output follows its input
            out = Quadratic.linear(np.zeros(self._groups), grid_out[0]) if depthwise \
                else op.kept_out
            entries.append((op.kept_in, out, grid_in, grid_out, ms, depthwise))
        if missing:
            raise ValueError(f"The latency table ({table.device}, {table.precision}) does not "
                             f"cover {len(missing)} operator(s): {'; '.join(missing[:5])}. "
                             f"Measure a table for this model (dsa-tf profile).")
        # Every operator's kept input and output channels as rows [b, c] of affine forms of
        # (keep ratios, 1), its grids framed and padded to one width, its times padded alike.
        self._forms = [np.array([[*e[axis].b, e[axis].c] for e in entries]).reshape(
            len(entries), self._groups + 1) for axis in (0, 1)]
        # the axes computed in tiles: every operator's output, a depthwise one's input too
        # (its output follows its input; the input grid of the others is 1, half, full),
        # where the grid resolves the tiles (the coarse grids of cheap operators do not)
        step = table.step
        self._tiled = [np.array([e[5] and _resolves_tiles(e[2], step) for e in entries], bool),
                       np.array([_resolves_tiles(e[3], step) for e in entries], bool)]
        self._grids = [_framed_grids([e[2 + axis] for e in entries]) for axis in (0, 1)]
        self._ranges = [np.array([[e[2 + axis][0], e[2 + axis][-1]] for e in entries],
                                 np.float64).reshape(len(entries), 2) for axis in (0, 1)]
        self._raw_ms = np.zeros((len(entries), self._grids[0].shape[1] - 2,
                                 self._grids[1].shape[1] - 2))
        for p, entry in enumerate(entries):
            self._raw_ms[p, :entry[4].shape[0], :entry[4].shape[1]] = entry[4]
        # made non-decreasing along both axes (padding beyond a grid is never weighted)
        self._ms = np.maximum.accumulate(np.maximum.accumulate(self._raw_ms, axis=1), axis=2)
        self._tf = [[tf.constant(v, tf.float32) for v in values] for values in
                    (self._forms, self._grids, self._ranges, [self._ms])]

    def operator_times(self, keep_ratios: np.ndarray, measured: bool = False) -> np.ndarray:
        """Every covered operator's table time in ms at the given keep ratios (numpy), its
        tiled channels rounded up to the next grid point: the non-decreasing times the
        prediction uses, or with ``measured`` the table's own."""
        ratios = np.append(np.asarray(keep_ratios, np.float64), 1.0)
        weights = [_hat_weights(np.where(tiled, _next_grid_point(form @ ratios, grid, limits),
                                         form @ ratios), grid, limits, np)
                   for form, grid, limits, tiled in zip(self._forms, self._grids,
                                                         self._ranges, self._tiled)]
        return np.einsum("pi,pij,pj->p", weights[0], self._raw_ms if measured else self._ms,
                         weights[1])

    def group_steps(self) -> np.ndarray:
        """The channel step each group (plan order) keeps multiples of under a latency
        budget: the table's step s, or 2s where the measured times show the runtime computing
        that group's channels in tiles of 2s.

        For every odd multiple k of s with k + s within the group (the other groups whole),
        the share of the cost of going from k - s to k + s channels that the upper s channels
        add, (t(k+s) - t(k)) / (t(k+s) - t(k-s)), is about 1/2 when the time grows with every
        s channels and about 0 (or below) when k costs as much as k + s (XNNPACK's float32
        kernels on AVX2 tile wide layers by 16: BENCHMARKS.md, "Latency budgets"). A group
        whose median share over two or more odd multiples is below 1/4 steps by 2s: a count
        between two multiples of 2s would cost as much as the next multiple while keeping
        fewer channels. Groups narrower than 4s (one share at most) and groups whose shares
        are mixed step by s: a single share is the difference of two timings, which the load
        on a busy machine decides as much as the runtime (ResNet-8's 16-channel groups
        stepped by 16 in one of the test suite's runs beside the other suite, by 8 when
        measured quietly), and a group of 2s channels stepping by 2s could not be pruned.
        """
        step = self.table.step
        result = np.full(self._groups, step, dtype=np.int64)
        for g, channels in enumerate(self._channels):
            if channels < 4 * step:  # one odd multiple at most: too few shares to judge by
                continue
            times = []  # at 1 channel, then at every multiple of the step within the group
            for count in range(0, channels + 1, step):
                ratios = np.ones(self._groups)
                ratios[g] = max(count, 1) / channels
                times.append(float(self.operator_times(ratios, measured=True).sum()))
            shares = [(times[k + 1] - times[k]) / (times[k + 1] - times[k - 1])
                      if times[k + 1] > times[k - 1] else 0.0
                      for k in range(1, len(times) - 1, 2)]  # k: the odd multiples
            if np.median(shares) < 0.25:
                result[g] = 2 * step
        return result

    def operator_sum(self, keep_ratios: np.ndarray) -> float:
        """The operators' summed table times in ms at the given keep ratios (numpy)."""
        return float(self.operator_times(keep_ratios).sum())

    def shares(self) -> np.ndarray:
        """Predicted ms of the full model attributed to each group (plan order): every
        operator's calibrated time split half to its input and half to its output channels
        when both are pruned, each half among the groups in proportion to their channels."""
        times = self.scale * self.operator_times(np.ones(self._groups))
        result = np.zeros(self._groups)
        sides = [form[:, :-1] / form.sum(axis=1, keepdims=True) for form in self._forms]
        pruned = sum(side.any(axis=1).astype(float) for side in sides)
        for side in sides:
            result += (times / np.maximum(pruned, 1)) @ side
        return result

    def predict(self, keep_ratios: np.ndarray) -> float:
        """Predicted latency in ms at the given keep ratios (numpy): tiled channels at the
        next grid point, input channels interpolated (the module's docstring)."""
        return self.fixed_ms + self.scale * self.operator_sum(keep_ratios)

    def tf_predict(self, keep_ratios: tf.Tensor) -> tf.Tensor:
        """The prediction as a differentiable TensorFlow function of the keep ratios, linear
        between grid points: ``predict``'s value at grid points, at most it between them."""
        forms, grids, ranges, (ms,) = self._tf
        ratios = tf.concat([tf.cast(keep_ratios, tf.float32), [1.0]], 0)
        w_in, w_out = (_hat_weights(tf.linalg.matvec(form, ratios), grid, limits, tf)
                       for form, grid, limits in zip(forms, grids, ranges))
        total = tf.reduce_sum(tf.einsum("pi,pij,pj->p", w_in, ms, w_out))
        return self.fixed_ms + self.scale * total


def _resolves_tiles(grid: list, step: int) -> bool:
    """Whether a grid holds every multiple of ``step`` up to its last point: a grid measured
    to resolve the runtime's tiles, read as steps (not the coarse grid of
    :func:`dsa_tf.deploy.latency_table.measure_table`'s cheap operators, interpolated)."""
    return set(range(step, int(grid[-1]) + 1, step)) <= set(grid)


def _framed_grids(grids: list) -> np.ndarray:
    """The grids as rows of one array, each framed by sentinels (first - 1 before, last + 1,
    last + 2... after) so that the hat weights of :func:`_hat_weights` vanish outside it."""
    width = max((len(g) for g in grids), default=1) + 2
    rows = np.zeros((len(grids), width))
    for p, grid in enumerate(grids):
        grid = np.asarray(grid, np.float64)
        rows[p] = np.concatenate([[grid[0] - 1], grid,
                                  grid[-1] + np.arange(1, width - len(grid))])
    return rows


def _next_grid_point(x: np.ndarray, grid: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """The smallest point of each framed grid [P, G] at or above x [P] (clamped to the
    grid's measured range ``limits`` [P, 2]; a count within 1e-6 of a point is that point)."""
    x = np.minimum(np.maximum(x, limits[:, 0]), limits[:, 1])[:, None]
    interior = grid[:, 1:-1]
    return np.where(interior >= x - 1e-6, interior, np.inf).min(axis=1)


def _hat_weights(x, grid, limits, lib):
    """Weights of piecewise-linear interpolation at x [P] on the framed grids [P, G], for
    their interior points [P, G-2], with x clamped to each grid's measured range ``limits``
    [P, 2] (numpy arrays with ``lib`` numpy, tensors with ``lib`` tf)."""
    x = lib.minimum(lib.maximum(x, limits[:, 0]), limits[:, 1])[:, None]
    left = (x - grid[:, :-2]) / (grid[:, 1:-1] - grid[:, :-2])
    right = (grid[:, 2:] - x) / (grid[:, 2:] - grid[:, 1:-1])
    return lib.maximum(0.0, lib.minimum(left, right))


def fingerprint(plan: ChannelPlan) -> str:
    """What identifies a model's architecture for a table's calibration: a hash of its layer
    kinds and shapes in network order (ChannelGates left out, so a gated model and the model
    it was made from share it; weights and names do not enter)."""
    layers = [(type(fc.op).__name__, [list(s[1:]) for s in fc.info.out_shapes])
              for fc in plan.calls if type(fc.op).__name__ != "ChannelGate"]
    return hashlib.sha1(json.dumps(layers, default=int).encode()).hexdigest()[:16]
