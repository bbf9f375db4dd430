"""Per-layer channel rules: how each layer type treats channels, slices its weights and costs.

A rule answers, for one layer type:

* ``propagate``: the channel maps of the outputs, given those of the inputs (a convolution
  creates a new channel space, BatchNormalization passes its input's through, Add couples its
  inputs into one group, Concatenate joins, Flatten tiles);
* ``weight_axes``: for each of the layer's weights, which axes follow the input (``"in"``),
  the output (``"out"``) or a depthwise multiplier's intermediate (``"mid"``) channels;
* ``resized_config``: the layer's config for a new number of output channels (``resized``:
  for the kept channels of each of its outputs, which a channel split needs);
* ``flops``: 2 x multiply-accumulates, for integer channel counts or linear forms alike;
* ``preserves_zero``: whether an all-zero input channel stays zero in the output.

Adding support for a layer type means adding one entry to :data:`RULES` (or to the op tables
below for Keras 3 operations and tf_keras ``TFOpLambda`` symbols) and a test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from dsa_tf._keras import is_keras_tensor
from dsa_tf.structure.channels import ChannelMap


class Unsupported(ValueError):
    """A layer that dsa_tf cannot prune through; the graph walk adds the layer's name."""


class CallInfo:
    """What a rule sees of one call: shapes, channel maps and non-tensor arguments."""

    def __init__(self, op: Any, args: tuple, kwargs: dict, in_shapes: list, out_shapes: list,
                 in_maps: list[ChannelMap | None]):
        self.op = op
        self.args = args
        self.kwargs = kwargs
        self.in_shapes = in_shapes
        self.out_shapes = out_shapes
        self.in_maps = in_maps

    def argument(self, name: str, position: int, default: Any = None) -> Any:
        """A call argument by keyword or position."""
        if name in self.kwargs:
            return self.kwargs[name]
        return self.args[position] if len(self.args) > position else default

    def constants(self) -> list:
        """The numeric arguments that are not Keras tensors."""
        leaves = _flatten((self.args, self.kwargs))
        return [x for x in leaves if not is_keras_tensor(x) and _is_number_like(x)]


def _flatten(structure: Any) -> list:
    if isinstance(structure, dict):
        return [leaf for v in structure.values() for leaf in _flatten(v)]
    if isinstance(structure, (list, tuple)):
        return [leaf for v in structure for leaf in _flatten(v)]
    return [structure]


def _is_number_like(x: Any) -> bool:
    return not isinstance(x, (str, bool, type(None))) and (
        isinstance(x, (int, float, np.ndarray, np.number)) or hasattr(x, "dtype")
    )


def _spatial(shape: Sequence) -> int:
    """The product of the dimensions between batch and channels."""
    dims = shape[1:-1]
    if any(d is None for d in dims):
        raise Unsupported(f"needs a static input shape to count FLOPs; got {tuple(shape)}")
    return math.prod(dims)


def _require_channels_last(op: Any) -> None:
    if getattr(op, "data_format", "channels_last") not in ("channels_last", None):
        raise Unsupported("only data_format='channels_last' is supported")


def _is_last_axis(axis: Any, rank: int) -> bool:
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return len(axes) == 1 and axes[0] in (-1, rank - 1)


class Rule:
    """Base rule: a layer without weights that passes its first input's channels through."""

    zero_preserving = True

    def check(self, op: Any, info: CallInfo) -> None:
        """Raises :class:`Unsupported` when the layer's settings are not handled."""
        _require_channels_last(op)

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        return [info.in_maps[0]] * len(info.out_shapes)

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        """Weight attribute name -> axes of its trailing dimensions ("in", "out", "mid", None)."""
        return {}

    def resized_config(self, config: dict, out_channels: int) -> dict:
        """The layer's config when its first output keeps ``out_channels`` channels."""
        return config

    def resized(self, config: dict, kept: Sequence[int]) -> dict:
        """The layer's config when its outputs keep ``kept`` channels (one count each)."""
        return self.resized_config(config, kept[0])

    def flops(self, op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        return 0

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return self.zero_preserving


class Through(Rule):
    """Channel-wise layers with per-channel weights or none (BatchNormalization, pooling...)."""

    def __init__(self, zero_preserving: bool = True, axis_attr: str | None = None,
                 weights: Sequence[str] = (), size_key: str | None = None):
        self.zero_preserving = zero_preserving
        self.axis_attr = axis_attr
        self.weights = tuple(weights)
        self.size_key = size_key

    def resized_config(self, config: dict, out_channels: int) -> dict:
        """Sets ``size_key`` (a per-channel weight's length, e.g. LayerScale's projection_dim)."""
        return {**config, self.size_key: out_channels} if self.size_key else config

    def check(self, op: Any, info: CallInfo) -> None:
        super().check(op, info)
        axis = getattr(op, self.axis_attr) if self.axis_attr else -1
        if not _is_last_axis(axis, len(info.in_shapes[0])):
            raise Unsupported(f"{self.axis_attr}={axis} is not the channel axis")

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        return {name: ("in",) for name in self.weights}


class MixesChannels(Through):
    """Channel-wise in shape, but every output channel depends on all channels (LayerNorm,
    softmax): the channels pass through, and their group cannot be pruned."""

    def __init__(self, why: str, axis_attr: str | None = None, weights: Sequence[str] = ()):
        super().__init__(zero_preserving=False, axis_attr=axis_attr, weights=weights)
        self.why = why

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        ctx.fix(info.in_maps[0], f"{op.name}: {self.why}")
        return super().propagate(op, info, ctx)


class ChannelNorm(Through):
    """LayerNormalization and RMSNormalization over the channel axis: prunable, with masked
    statistics.

    Pruning a group that such a layer normalises means normalising over the kept channels
    only: the stripped layer (its per-channel weights sliced) computes its statistics (mean
    and variance; RMSNormalization: the mean square) over the channels it still has, and
    :meth:`masked_call` computes the same on the full tensor, with the dropped channels left
    out of the statistics and set to zero, which is the reference a strip must equal
    (:func:`dsa_tf.masked_call`) and what a gated model computes
    (:mod:`dsa_tf.allocation.masked_norm`).
    """

    def __init__(self, weights: Sequence[str]) -> None:
        super().__init__(zero_preserving=False, axis_attr="axis", weights=weights)

    @staticmethod
    def masked_call(op: Any, x: Any, keep: Any) -> Any:
        """``op`` (a LayerNormalization or RMSNormalization over the last axis, or its
        masked form) on ``x``, with statistics over the channels where ``keep`` (a 0/1 vector
        over the channels, or a tensor that broadcasts to ``x``) is 1, and 0 where it is 0."""
        dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
        x = tf.cast(x, dtype)
        keep = tf.cast(keep, dtype)
        count = tf.reduce_sum(keep * tf.ones_like(x), axis=-1, keepdims=True)
        if getattr(type(op), "unmasked_class", type(op).__name__) == "RMSNormalization":
            square = tf.reduce_sum(tf.square(x) * keep, axis=-1, keepdims=True) / count
            y = x * tf.math.rsqrt(square + op.epsilon) * tf.cast(op.scale, dtype)
            return tf.cast(y * keep, op.compute_dtype)
        mean = tf.reduce_sum(x * keep, axis=-1, keepdims=True) / count
        variance = tf.reduce_sum(tf.square(x - mean) * keep, axis=-1, keepdims=True) / count
        if getattr(op, "rms_scaling", False):  # Keras 3's (deprecated) variance scaling
            y = x * tf.math.rsqrt(variance + op.epsilon)
        else:
            y = (x - mean) * tf.math.rsqrt(variance + op.epsilon)
        if getattr(op, "scale", True) and getattr(op, "gamma", None) is not None:
            y = y * tf.cast(op.gamma, dtype)
        if getattr(op, "center", True) and getattr(op, "beta", None) is not None \
                and not getattr(op, "rms_scaling", False):
            y = y + tf.cast(op.beta, dtype)
        return tf.cast(y * keep, op.compute_dtype)


class Activation(Through):
    """Activation layers and element-wise activation ops."""

    ZERO_AT_ZERO = {"relu", "relu6", "linear", "swish", "silu", "tanh", "elu", "selu", "gelu",
                    "leaky_relu", "hard_swish", "hard_silu", "mish", "softsign"}

    def __init__(self, name_attr: str | None = "activation", fixed_name: str | None = None):
        super().__init__()
        self.name_attr = name_attr
        self.fixed_name = fixed_name

    def _name(self, op: Any) -> str:
        if self.fixed_name:
            return self.fixed_name
        act = getattr(op, self.name_attr)
        return act if isinstance(act, str) else getattr(act, "__name__", str(act))

    def check(self, op: Any, info: CallInfo) -> None:
        pass

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        if self._name(op) in ("softmax", "log_softmax"):
            ctx.fix(info.in_maps[0], f"{op.name}: softmax over the channels")
        return super().propagate(op, info, ctx)

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return self._name(op) in self.ZERO_AT_ZERO


class SpatialPad(Through):
    """Keras 3's ``keras.ops.pad`` over the spatial axes (keras-hub's ResNetV2 stem): the
    channels pass through. Padding the channel axis would add channels, and is refused. Not
    treated as zero-preserving (its constant is a call argument): the gated model masks its
    output."""

    def __init__(self) -> None:
        super().__init__(zero_preserving=False)

    def check(self, op: Any, info: CallInfo) -> None:
        widths = [tuple(int(v) for v in pair) for pair in op.pad_width]
        if len(widths) != len(info.in_shapes[0]) or widths[-1] != (0, 0):
            raise Unsupported(f"pad_width={widths} pads the channel axis")


class Rescaling(Through):
    """Rescaling by scalars; a per-channel scale keeps its channels whole."""

    def check(self, op: Any, info: CallInfo) -> None:
        if np.size(op.scale) != 1 or np.size(op.offset) != 1:
            raise Unsupported("per-channel Rescaling cannot be sliced")

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return float(np.ravel(op.offset)[0]) == 0.0


class Fixed(Through):
    """Per-channel statistics kept whole (Normalization): the channels cannot be pruned."""

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        ctx.fix(info.in_maps[0], f"{op.name}: per-channel {type(op).__name__} statistics")
        return super().propagate(op, info, ctx)

    def check(self, op: Any, info: CallInfo) -> None:
        axis = getattr(op, "axis", -1)
        if not _is_last_axis(axis, len(info.in_shapes[0])):
            raise Unsupported(f"axis={axis} is not the channel axis")

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return False


class Reduce(Through):
    """Reductions (``keras.ops.mean``, ``max``...) over axes other than the channel axis:
    the channels pass through (squeeze-and-excitation's spatial mean). A reduction over the
    channels, or over every axis, mixes them and is refused."""

    def check(self, op: Any, info: CallInfo) -> None:
        axis = getattr(op, "axis", None)
        if axis is None:
            axis = info.argument("axis", 1)
        rank = len(info.in_shapes[0])
        axes = [] if axis is None else (list(axis) if isinstance(axis, (list, tuple))
                                         else [axis])
        if not axes or any(int(a) % rank == rank - 1 for a in axes):
            raise Unsupported(f"it reduces over the channel axis (axis={axis})")


class Split(Rule):
    """``keras.ops.split`` (CSPNet's partial stages). On the channel axis every output holds
    a consecutive part of its input's channels (a slice of the channel map), and the input's
    group keeps the same number of channels in each of its blocks of gcd(part sizes)
    channels (:attr:`dsa_tf.structure.graph.Group.blocks`; two equal halves: two blocks), so
    that every part keeps a fixed share of the group and the resource model stays exact; the
    stripped split cuts at the kept counts. An input that is not one group's channels in
    order is kept whole. On another axis every output has all the channels."""

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        in_map = info.in_maps[0]
        rank = len(info.in_shapes[0])
        if int(op.axis) % rank != rank - 1:
            return [in_map] * len(info.out_shapes)
        sizes = [int(shape[-1]) for shape in info.out_shapes]
        ctx.require_blocks(in_map, len(in_map) // math.gcd(*sizes),
                           f"{op.name}: a channel split of channels of several groups; they "
                           f"are kept whole")
        ends = np.cumsum(sizes).tolist()
        return [ChannelMap(in_map.spaces[end - size:end], in_map.index[end - size:end])
                for end, size in zip(ends, sizes)]

    def resized(self, config: dict, kept: Sequence[int]) -> dict:
        if len(set(kept)) == 1 and isinstance(config["indices_or_sections"], int):
            return config  # still equal sections (also where the split is not on channels)
        return {**config, "indices_or_sections": np.cumsum(kept)[:-1].tolist()}


class Create(Rule):
    """Layers that create a new channel space: convolutions and Dense."""

    zero_preserving = False

    def __init__(self, count_key: str, kernel: tuple, flops: Callable, transpose: bool = False):
        self.count_key = count_key
        self.kernel = kernel
        self._flops = flops
        self.transpose = transpose

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        return [ctx.new_space(op, info.out_shapes[0][-1])]

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        return {"kernel": self.kernel, "bias": ("out",)}

    def resized_config(self, config: dict, out_channels: int) -> dict:
        return {**config, self.count_key: out_channels}

    def flops(self, op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        return self._flops(op, info, n_in, n_out)


def _conv_flops(op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
    return 2 * math.prod(op.kernel_size) * _spatial(info.out_shapes[0]) * n_in * n_out


def _transpose_flops(op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
    # Every input pixel scatters a kernel_size x C_out patch: MACs = k * H_in * W_in * C_in * C_out.
    return 2 * math.prod(op.kernel_size) * _spatial(info.in_shapes[0]) * n_in * n_out


def _dense_flops(op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
    positions = math.prod(info.in_shapes[0][1:-1]) if len(info.in_shapes[0]) > 2 else 1
    return 2 * positions * n_in * n_out


class Depthwise(Rule):
    """DepthwiseConv: per-channel filters; depth_multiplier m repeats every channel m times."""

    zero_preserving = False

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        return [info.in_maps[0].repeat(op.depth_multiplier)]

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        # Keras 3 calls the depthwise kernel ``kernel``, tf_keras ``depthwise_kernel``.
        return {"kernel": ("in", None), "depthwise_kernel": ("in", None), "bias": ("out",)}

    def flops(self, op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        return 2 * math.prod(op.kernel_size) * _spatial(info.out_shapes[0]) * n_out

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return not op.use_bias


class ChannelwiseConv(Depthwise):
    """Conv1D/2D/3D with ``groups`` equal to its input channels (ConvNeXt's depthwise conv).

    Every input channel has its own ``filters // groups`` filters, output channel j reading
    input channel j // (filters // groups): a DepthwiseConv with that depth multiplier, the
    kernel of shape (*kernel_size, 1, filters) sliced along its output axis. Pruning keeps
    ``groups`` equal to the kept input channels. A general grouped convolution (1 < groups <
    input channels) has the rule :class:`GroupedConv`.
    """

    def check(self, op: Any, info: CallInfo) -> None:
        _require_channels_last(op)
        in_channels = info.in_shapes[0][-1]
        if op.groups != in_channels:
            raise Unsupported(
                f"grouped convolution with groups={op.groups} over {in_channels} input channels "
                f"(only groups == input channels, a depthwise convolution, is supported)")

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        return [info.in_maps[0].repeat(op.filters // op.groups)]

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        return {"kernel": (None, "out"), "bias": ("out",)}

    def resized_config(self, config: dict, out_channels: int) -> dict:
        multiplier = config["filters"] // config["groups"]
        return {**config, "filters": out_channels, "groups": out_channels // multiplier}

    def flops(self, op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        per_group = info.in_shapes[0][-1] // op.groups
        return 2 * math.prod(op.kernel_size) * _spatial(info.out_shapes[0]) * per_group * n_out


class GroupedConv(Create):
    """Conv1D/2D/3D with 1 < ``groups`` < input channels (ResNeXt's and RegNet's grouped
    convolutions): pruned by the same number of channels in every group.

    Output channel j reads only the input channels of its group, j // (filters / groups), so
    a pruned grouped convolution stays a grouped convolution with the same ``groups`` only if
    every group keeps the same number of input channels and the same number of output
    channels. The rule states that as a constraint on both channel groups it touches (their
    :attr:`dsa_tf.structure.graph.Group.blocks`): a group read or written by a grouped
    convolution with G groups keeps a multiple of G channels, the same count in each of its G
    contiguous blocks, the most important ones of each block. The stripped layer keeps
    ``groups``; output channel j of the stripped kernel takes, from the original kernel, the
    kept input channels of its own group (:func:`grouped_kernel`). An input that is not one
    group's channels in order (a concatenation) is kept whole. FLOPs and params count the
    grouped kernel: 2 x kernel x output positions x (input channels / groups) x filters.
    """

    def __init__(self) -> None:
        super().__init__("filters", ("group_in", "out"), self._grouped_flops)

    def check(self, op: Any, info: CallInfo) -> None:
        _require_channels_last(op)

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        why = (f"{op.name}: grouped convolution (groups={op.groups}) reading channels of "
               f"several groups; they are kept whole")
        ctx.require_blocks(info.in_maps[0], op.groups, why)
        created = super().propagate(op, info, ctx)
        ctx.require_blocks(created[0], op.groups, why)
        return created

    @staticmethod
    def _grouped_flops(op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        return 2 * math.prod(op.kernel_size) * _spatial(info.out_shapes[0]) * n_out * (
            n_in * (1 / op.groups))


def grouped_kernel(kernel: np.ndarray, kept_in: np.ndarray, kept_out: np.ndarray,
                   groups: int) -> np.ndarray:
    """The kernel of a pruned grouped convolution.

    Args:
        kernel: the original kernel, shape (*kernel_size, input channels / groups, filters).
        kept_in: boolean keep mask over the input channels, the same count in every group.
        kept_out: boolean keep mask over the filters, the same count in every group.
        groups: the convolution's ``groups``.

    Returns:
        Shape (*kernel_size, kept inputs / groups, kept filters): for every kept filter, the
        weights of the kept input channels of its group.

    Example:
        >>> kernel = np.arange(8.0).reshape(1, 2, 4)   # 4 inputs, 4 filters, 2 groups
        >>> grouped_kernel(kernel, np.array([1, 0, 0, 1], bool), np.ones(4, bool), 2)
        array([[[0., 1., 6., 7.]]])
    """
    per_group = kept_in.reshape(groups, -1)
    local = np.stack([np.flatnonzero(row) for row in per_group])  # (groups, kept per group)
    filters = np.flatnonzero(kept_out)
    group_of_filter = filters // (len(kept_out) // groups)
    return kernel[..., local[group_of_filter].T, filters[None, :]]


class Separable(Create):
    """SeparableConv: a depthwise part on the input, then a pointwise conv creating channels."""

    def __init__(self):
        super().__init__("filters", ("mid", "out"), self._separable_flops)

    def weight_axes(self, op: Any) -> dict[str, tuple]:
        return {"depthwise_kernel": ("in", None), "pointwise_kernel": ("mid", "out"),
                "bias": ("out",)}

    @staticmethod
    def _separable_flops(op: Any, info: CallInfo, n_in: Any, n_out: Any) -> Any:
        pixels = _spatial(info.out_shapes[0])
        n_mid = op.depth_multiplier * n_in
        return 2 * pixels * n_mid * (math.prod(op.kernel_size) + n_out)


class Merge(Rule):
    """Element-wise merges (Add, Multiply...): all inputs become one group.

    An input whose channel axis is 1 wide is broadcast (a per-pixel scale) and is not coupled;
    a (N, 1, 1, C) input against (N, H, W, C) is the squeeze-and-excitation case and is.
    Numeric constants must be scalars.

    Args:
        scaling: the op multiplies or divides, so a scalar operand keeps zeros at zero (for
            add, subtract, maximum and minimum a non-zero scalar does not).
        divides: only ``tensor / constant`` is accepted (``x / y`` would divide by a dropped
            channel's zeros).
    """

    def __init__(self, scaling: bool = False, divides: bool = False):
        self.scaling = scaling
        self.divides = divides

    def check(self, op: Any, info: CallInfo) -> None:
        for constant in info.constants():
            if np.size(np.asarray(constant)) != 1:
                raise Unsupported("a per-channel constant operand cannot be sliced")
        if self.divides and not (len(info.in_maps) == 1 and is_keras_tensor(info.args[0])):
            raise Unsupported("only division of a tensor by a constant is supported")

    def preserves_zero(self, op: Any, info: CallInfo) -> bool:
        return self.scaling or not info.constants()

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        width = info.out_shapes[0][-1]
        maps = [m for m, s in zip(info.in_maps, info.in_shapes) if s[-1] == width]
        if len(maps) != len(info.in_maps) and width == 1:
            maps = list(info.in_maps)
        ctx.couple(maps, op)
        return [maps[0]]


class Concat(Rule):
    """Concatenate on the channel axis: the output map is the inputs' maps in order."""

    def check(self, op: Any, info: CallInfo) -> None:
        axis = getattr(op, "axis", None)
        if axis is None:
            axis = info.argument("axis", 1, -1)
        if not _is_last_axis(axis, len(info.out_shapes[0])):
            raise Unsupported(f"concatenation on axis {axis}, not the channel axis")

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        result = info.in_maps[0]
        for m in info.in_maps[1:]:
            result = result.concat(m)
        return [result]


class Flatten(Rule):
    """Flatten of a channels-last tensor: the channel map tiled over the flattened pixels."""

    def propagate(self, op: Any, info: CallInfo, ctx: Any) -> list[ChannelMap]:
        return [info.in_maps[0].tile(_spatial(info.in_shapes[0]))]


class Reshape(Rule):
    """Reshape or Permute that keeps the channel axis last and whole."""

    def resized_config(self, config: dict, out_channels: int) -> dict:
        if "target_shape" not in config:
            return config
        return {**config, "target_shape": (*tuple(config["target_shape"])[:-1], out_channels)}

    def check(self, op: Any, info: CallInfo) -> None:
        if info.in_shapes[0][-1] != info.out_shapes[0][-1]:
            raise Unsupported("it changes the channel axis, mixing channels")
        dims = getattr(op, "dims", None)
        if dims is not None and dims[-1] != len(info.in_shapes[0]) - 1:
            raise Unsupported("it moves the channel axis")


def _conv(transpose: bool = False) -> Create:
    kernel = ("out", "in") if transpose else ("in", "out")
    return Create("filters", kernel, _transpose_flops if transpose else _conv_flops, transpose)


PASS = Through()
NORM = Through(zero_preserving=False, axis_attr="axis",
               weights=("gamma", "beta", "moving_mean", "moving_variance"))

RULES: dict[str, Rule] = {
    **{name: _conv() for name in ("Conv1D", "Conv2D", "Conv3D")},
    **{name: _conv(True) for name in ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")},
    "Dense": Create("units", ("in", "out"), _dense_flops),
    **{name: Separable() for name in ("SeparableConv1D", "SeparableConv2D")},
    **{name: Depthwise() for name in ("DepthwiseConv1D", "DepthwiseConv2D")},
    "BatchNormalization": NORM,
    "LayerNormalization": ChannelNorm(weights=("gamma", "beta")),
    "RMSNormalization": ChannelNorm(weights=("scale",)),
    # x / ||x|| over the channels: dropped channels are zero and add nothing to the norm
    "UnitNormalization": Through(axis_attr="axis"),
    "Softmax": MixesChannels("softmax over the channels"),
    "Normalization": Fixed(),
    "Rescaling": Rescaling(),
    "Activation": Activation(),
    "ReLU": Activation(fixed_name="relu"),
    "LeakyReLU": Activation(fixed_name="leaky_relu"),
    "ELU": Activation(fixed_name="elu"),
    "PReLU": Through(weights=("alpha",)),
    # keras.applications' own layers (ConvNeXt, InceptionResNetV2).
    "LayerScale": Through(weights=("gamma",), size_key="projection_dim"),
    "StochasticDepth": PASS,
    "CustomScaleLayer": Merge(),
    **{name: PASS for name in (
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
        "GaussianDropout", "AlphaDropout", "Identity", "ActivityRegularization",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
        "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
        "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
        "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D")},
    **{name: Merge() for name in ("Add", "Subtract", "Average", "Maximum", "Minimum")},
    "Multiply": Merge(scaling=True),
    "Concatenate": Concat(),
    "Flatten": Flatten(),
    "Reshape": Reshape(),
    "Permute": Reshape(),
}

# Convolutions with groups > 1, by class name: one input channel per group (ChannelwiseConv)
# or several (GroupedConv).
GROUPED_RULES: dict[str, tuple[Rule, Rule]] = {
    name: (ChannelwiseConv(), GroupedConv()) for name in ("Conv1D", "Conv2D", "Conv3D")}

# Keras 3 bare operations (``x + y``, ``keras.ops.relu(x)``...), by class name.
KERAS3_OPS: dict[str, Rule] = {
    **{name: Merge() for name in ("Add", "Subtract", "Maximum", "Minimum")},
    "Multiply": Merge(scaling=True),
    "TrueDivide": Merge(scaling=True, divides=True),
    "Divide": Merge(scaling=True, divides=True),
    "Concatenate": Concat(),
    "Cast": PASS,
    "Pad": SpatialPad(),
    "Split": Split(),
    **{name: Reduce() for name in ("Mean", "Max", "Min", "Sum")},
    **{name: Activation(fixed_name=act) for name, act in {
        "Relu": "relu", "Relu6": "relu6", "Silu": "silu", "Swish": "swish", "Gelu": "gelu",
        "Tanh": "tanh", "Elu": "elu", "Selu": "selu", "LeakyRelu": "leaky_relu",
        "HardSilu": "hard_silu", "HardSwish": "hard_swish", "Sigmoid": "sigmoid",
        "HardSigmoid": "hard_sigmoid", "Softplus": "softplus"}.items()},
}

# tf_keras TFOpLambda layers, by TensorFlow symbol.
TF_OP_SYMBOLS: dict[str, Rule] = {
    **{symbol: Merge() for symbol in (
        "__operators__.add", "math.add", "math.subtract", "math.maximum", "math.minimum")},
    "math.multiply": Merge(scaling=True),
    **{symbol: Merge(scaling=True, divides=True) for symbol in ("math.truediv", "math.divide")},
    "concat": Concat(),
    "cast": PASS,
    **{symbol: Activation(fixed_name=act) for symbol, act in {
        "nn.relu": "relu", "nn.relu6": "relu6", "nn.silu": "silu", "nn.swish": "swish",
        "nn.gelu": "gelu", "math.tanh": "tanh", "nn.elu": "elu", "nn.selu": "selu",
        "nn.leaky_relu": "leaky_relu", "math.sigmoid": "sigmoid", "nn.sigmoid": "sigmoid",
        "math.softplus": "softplus"}.items()},
}


def is_masked_form(op: Any) -> bool:
    """Whether ``op`` is the masked form of a Keras layer (DSA's MaskedLayerNormalization): a
    layer whose class names the Keras class it stands for in ``unmasked_class``, called on
    ``[x, mask]`` where ``mask`` is 1 on the channels kept. The analysis gives it its plain
    class's rule (on ``x``), and strip rebuilds it as that class, called on ``x`` alone."""
    return bool(getattr(type(op), "unmasked_class", None))


def is_mask_layer(op: Any) -> bool:
    """Whether ``op`` is a channel mask layer: a layer whose class sets ``channel_mask = True``
    and that multiplies its input by a per-channel mask (DSA's ChannelGate).

    The structure treats such a layer as part of the channels it masks: the analysis passes
    its channels through, counting gives it no parameters or FLOPs, and strip leaves it out
    (removing the channels is what the mask stood for).
    """
    return getattr(type(op), "channel_mask", False) is True


def rule_for(op: Any) -> Rule | None:
    """The rule for a Keras layer or operation, or None when dsa_tf does not know it.

    Only Keras' own classes match: a user subclass of Conv2D may behave differently, so it is
    reported as unknown rather than guessed. A channel mask layer (:func:`is_mask_layer`)
    passes its channels through.
    """
    cls = type(op)
    if is_mask_layer(op):
        return PASS
    if getattr(cls, "unmasked_class", None):
        return RULES[cls.unmasked_class]
    if not cls.__module__.startswith(("keras.", "tf_keras.")):
        return None
    if cls.__name__ in ("TFOpLambda",):
        return TF_OP_SYMBOLS.get(getattr(op, "symbol", ""))
    if cls.__module__.startswith("keras.src.ops."):
        return KERAS3_OPS.get(cls.__name__)
    if getattr(op, "groups", 1) != 1 and cls.__name__ in GROUPED_RULES:
        channelwise, grouped = GROUPED_RULES[cls.__name__]
        kernel = getattr(op, "kernel", None)  # (*kernel_size, input channels / groups, filters)
        return channelwise if kernel is None or int(kernel.shape[-2]) == 1 else grouped
    return RULES.get(cls.__name__)
