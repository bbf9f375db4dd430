"""Walk a functional Keras model into channel groups and their resource model.

The walk follows DSA's topological grouping (Ning et al., ECCV 2020, section 3): every layer that
creates channels starts a channel space, channel-wise layers pass spaces through, and
element-wise merges join the spaces they combine into one group (union-find), so that
convolutions tied by a residual add keep the same channels. Nested models are walked through
as if their layers stood in the outer model.

Example:
    >>> import dsa_tf
    >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
    >>> len(plan.prunable)
    12
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from dsa_tf import _keras
from dsa_tf.structure.channels import ChannelMap
from dsa_tf.structure.inline import TraceError, trace, traceable
from dsa_tf.structure.quadratic import Quadratic
from dsa_tf.structure.rules import (
    CallInfo,
    Depthwise,
    Rule,
    Unsupported,
    is_mask_layer,
    rule_for,
)


@dataclasses.dataclass(frozen=True)
class Group:
    """A set of channels that must be pruned together.

    Attributes:
        name: stable name: the (nested-path qualified) name of the first layer creating it,
            or ``input:<name>`` for a model input.
        channels: number of channels.
        producers: layers that create these channels (convolutions, Dense).
        layers: every layer whose output carries these channels (producers, BatchNorms,
            activations, adds...): the places a mask must reach.
        prunable: whether channels of this group may be removed.
        reason: why not, when it is not prunable.
        blocks: the channels fall into this many equal, contiguous blocks that must keep the
            same number of channels each (the groups of a grouped convolution reading or
            writing them, the parts of a channel split; 1 when there is none): a pruned group
            keeps a multiple of ``blocks`` channels, ``kept // blocks`` of every block.
    """

    name: str
    channels: int
    producers: tuple[str, ...]
    layers: tuple[str, ...]
    prunable: bool
    reason: str = ""
    blocks: int = 1


@dataclasses.dataclass
class FlatCall:
    """One call of the flattened graph, with its rule and channel maps."""

    call: _keras.Call
    name: str
    rule: Rule | None
    info: CallInfo
    out_maps: list[ChannelMap | None]
    opaque: bool = False

    @property
    def op(self) -> Any:
        return self.call.op


class _Walk:
    """The mutable state of one analysis: spaces, union-find, tensor maps."""

    def __init__(self, exclude: set[str]):
        self.exclude = exclude
        self.space_size: list[int] = []
        self.space_name: list[str] = []
        self.space_producer: list[str | None] = []
        self.parent: list[int] = []
        self.fixed: dict[int, str] = {}
        self.blocks: dict[int, int] = {}
        self.space_of_op: dict[int, int] = {}
        self.first_in_map: dict[int, ChannelMap] = {}
        self.current: str = ""

    def add_space(self, size: int, name: str, producer: str | None) -> ChannelMap:
        space = len(self.space_size)
        self.space_size.append(int(size))
        self.space_name.append(name)
        self.space_producer.append(producer)
        self.parent.append(space)
        return ChannelMap.whole(space, int(size))

    def new_space(self, op: Any, size: int) -> ChannelMap:
        """The space a creating layer makes (one per layer, even if the layer is shared)."""
        if id(op) not in self.space_of_op:
            created = self.add_space(size, self.current, self.current)
            self.space_of_op[id(op)] = int(created.spaces[0])
        return ChannelMap.whole(self.space_of_op[id(op)], size)

    def root(self, space: int) -> int:
        while self.parent[space] != space:
            self.parent[space] = self.parent[self.parent[space]]
            space = self.parent[space]
        return space

    def couple(self, maps: list[ChannelMap], op: Any) -> None:
        """Joins position by position the spaces of maps that must hold the same channels.

        Maps composed differently (a concatenation added to one layer's channels, as in
        InceptionResNetV2 and NASNet) cannot share a channel selection: their spaces are
        kept whole instead (not prunable, with the reason).
        """
        first = maps[0]
        for other in maps[1:]:
            if len(other) != len(first):
                raise Unsupported("its inputs have different channel counts")
            pairs = set(zip(first.spaces.tolist(), other.spaces.tolist()))
            if not np.array_equal(other.index, first.index) or any(
                    self.space_size[a] != self.space_size[b] for a, b in pairs):
                reason = f"{op.name}: merges differently composed channels (a concatenation)"
                self.fix(first, reason)
                self.fix(other, reason)
                continue
            for a, b in pairs:
                ra, rb = self.root(a), self.root(b)
                if ra != rb:
                    self.parent[max(ra, rb)] = min(ra, rb)

    def require_blocks(self, channel_map: ChannelMap, blocks: int, reason: str) -> None:
        """The map's channels must keep the same count in each of ``blocks`` equal,
        contiguous blocks of the map (a grouped convolution's groups, a split's parts). That
        is a constraint on a group's channels when the map is one space's channels in order;
        any other map (a concatenation feeding it) is kept whole, with ``reason``."""
        spaces = np.unique(channel_map.spaces).tolist()
        whole = len(spaces) == 1 and len(channel_map) == self.space_size[spaces[0]] \
            and np.array_equal(channel_map.index, np.arange(len(channel_map)))
        if not whole:
            self.fix(channel_map, reason)
            return
        self.blocks[spaces[0]] = math.lcm(self.blocks.get(spaces[0], 1), int(blocks))

    def fix(self, channel_map: ChannelMap | None, reason: str) -> None:
        """Marks every space in the map as not prunable."""
        if channel_map is not None:
            for space in np.unique(channel_map.spaces).tolist():
                self.fixed.setdefault(space, reason)


class ChannelPlan:
    """The result of :func:`analyze`: channel groups, flattened calls and resource models.

    Attributes:
        groups: every channel group, in network order.
        prunable: the prunable groups; keep-ratio vectors follow this order.
        flops: FLOPs (2 x MACs) as a :class:`Quadratic` in the prunable groups' keep ratios.
        params: parameter count as a :class:`Quadratic` in the same keep ratios.
        calls: the flattened graph, in topological order.
        alias: maps ``id`` of a nested model's input/output tensors to the outer tensors they
            stand for (see :func:`resolve`).
    """

    def __init__(self, model: Any, walk: _Walk, calls: list[FlatCall], alias: dict[int, Any]):
        self.model = model
        self.calls = calls
        self.alias = alias
        roots = sorted({walk.root(s) for s in range(len(walk.space_size))})
        group_of_root = {root: g for g, root in enumerate(roots)}
        self.group_of_space = np.array(
            [group_of_root[walk.root(s)] for s in range(len(walk.space_size))], dtype=np.int64)
        members = self._members(calls)
        self.groups = []
        for g, root in enumerate(roots):
            spaces = [s for s in range(len(walk.space_size)) if walk.root(s) == root]
            reasons = [walk.fixed[s] for s in spaces if s in walk.fixed]
            blocks = math.lcm(*(walk.blocks.get(s, 1) for s in spaces))
            self.groups.append(Group(
                name=walk.space_name[root],
                channels=walk.space_size[root],
                producers=tuple(walk.space_producer[s] for s in spaces if walk.space_producer[s]),
                layers=tuple(members.get(g, ())),
                prunable=not reasons,
                reason=reasons[0] if reasons else "",
                blocks=blocks,
            ))
        self.prunable = [g for g in self.groups if g.prunable]
        self._index = {g.name: i for i, g in enumerate(self.groups)}
        self._prunable_index = np.full(len(self.groups), -1, dtype=np.int64)
        for k, group in enumerate(self.prunable):
            self._prunable_index[self._index[group.name]] = k
        self.flops, self.params = self._resource_models()

    def __repr__(self) -> str:
        return (f"ChannelPlan({len(self.groups)} groups, {len(self.prunable)} prunable, "
                f"FLOPs={self.flops.c + self.flops.b.sum() + self.flops.A.sum():.6g})")

    def group(self, name: str) -> Group:
        """The group called ``name``; raises KeyError listing the names when unknown."""
        if name not in self._index:
            raise KeyError(f"No channel group {name!r}; groups are {sorted(self._index)}")
        return self.groups[self._index[name]]

    def _members(self, calls: list[FlatCall]) -> dict[int, list[str]]:
        members: dict[int, list[str]] = {}
        for fc in calls:
            for m in fc.out_maps:
                if m is None:
                    continue
                for g in np.unique(self.group_of_space[m.spaces]).tolist():
                    if fc.name not in members.setdefault(g, []):
                        members[g].append(fc.name)
        return members

    def count(self, channel_map: ChannelMap | None) -> Quadratic | int:
        """Kept positions of a map as an affine form in the prunable keep ratios."""
        if channel_map is None:
            return 0
        groups = self.group_of_space[channel_map.spaces]
        coefficients = np.zeros(len(self.prunable))
        constant = 0.0
        for g, n in zip(*np.unique(groups, return_counts=True)):
            k = self._prunable_index[g]
            if k >= 0:
                coefficients[k] += n
            else:
                constant += n
        return Quadratic.linear(coefficients, constant)

    def _resource_models(self) -> tuple[Quadratic, Quadratic]:
        flops = Quadratic.zero(len(self.prunable))
        params = Quadratic.zero(len(self.prunable))
        seen: set[int] = set()
        for fc in self.calls:
            in_count = self.count(fc.info.in_maps[0] if fc.info.in_maps else None)
            out_count = self.count(fc.out_maps[0] if fc.out_maps else None)
            if fc.rule is not None and not fc.opaque:
                flops = flops + fc.rule.flops(fc.op, fc.info, in_count, out_count)
            elif fc.opaque:
                flops = flops + _opaque_flops(fc)
            if id(fc.op) in seen or is_mask_layer(fc.op):
                continue
            seen.add(id(fc.op))
            counts = {"in": in_count, "out": out_count,
                      "mid": getattr(fc.op, "depth_multiplier", 1) * in_count,
                      "group_in": in_count * (1 / getattr(fc.op, "groups", 1))}
            for weight, axes in weight_axes(fc):
                params = params + _weight_size(weight.shape, axes, counts)
        return flops, params

    def keep_ratios(self, keep: dict[str, Iterable[int]]) -> np.ndarray:
        """The keep-ratio vector (over :attr:`prunable`) of an integer channel selection."""
        ratios = np.ones(len(self.prunable))
        for k, group in enumerate(self.prunable):
            if group.name in keep:
                ratios[k] = len(list(keep[group.name])) / group.channels
        return ratios


def full_flops(call: _keras.Call, name: str) -> int:
    """FLOPs of one call with all its channels (0 for a layer without a rule).

    Raises:
        ValueError: the rule cannot count it (a dynamic spatial shape), naming the layer.
    """
    rule = rule_for(call.op)
    if rule is None:
        return 0
    args, kwargs = _call_arguments(call)
    info = CallInfo(call.op, args, kwargs, [_keras.shape_of(t) for t in call.inputs],
                    [_keras.shape_of(t) for t in call.outputs], [])
    n_in = info.in_shapes[0][-1] if info.in_shapes else 0
    n_out = info.out_shapes[0][-1] if info.out_shapes else 0
    try:
        return int(rule.flops(call.op, info, n_in, n_out))
    except Unsupported as error:
        raise ValueError(f"Cannot count FLOPs of layer {name!r}: {error}") from None


def _opaque_flops(fc: FlatCall) -> int:
    """An excluded (opaque) layer's FLOPs, which pruning does not change: those of the
    standard layers its call runs when it can be traced (what :func:`dsa_tf.count_flops`
    counts for it), else 0."""
    if not traceable(fc.op):
        return 0
    try:
        inner = trace(fc.call)
    except TraceError:
        return 0
    return sum(full_flops(call, name) for call, name in _flat_calls(
        inner, (fc.name,), {}, set(), strict=False))


def _weight_size(shape: Any, axes: tuple, counts: dict) -> Any:
    size: Any = 1
    for dim, axis in zip(tuple(shape), axes):
        size = size * (int(dim) if axis is None else counts[axis])
    return size


def weight_axes(fc: FlatCall) -> list[tuple[Any, tuple]]:
    """Each weight of the call's layer with the channel role of every axis.

    Roles come from the rule (``"in"``, ``"out"``, ``"mid"``, and ``"group_in"``, a grouped
    convolution's input channels of one group, for the trailing axes); weights
    the rule does not name, and weights of opaque layers, have no channel axes.
    """
    op = fc.op
    named = {} if (fc.rule is None or fc.opaque) else fc.rule.weight_axes(op)
    by_id = {id(getattr(op, attr, None)): axes for attr, axes in named.items()}
    result = []
    for weight in getattr(op, "weights", []):
        axes = by_id.get(id(weight), ())
        rank = len(weight.shape)
        result.append((weight, (None,) * (rank - len(axes)) + tuple(axes)))
    return result


def _unsupported(name: str, op: Any, why: str) -> ValueError:
    return ValueError(
        f"dsa_tf cannot prune through layer {name!r} ({type(op).__name__}): {why}. "
        f"Pass exclude=[{name!r}] to keep its input and output channels whole "
        f"(its weights are then copied unchanged)."
    )


def _flat_calls(model: Any, prefix: tuple[str, ...], alias: dict[int, Any], seen: set,
                exclude: frozenset[str] | set[str] = frozenset(), strict: bool = True) -> list:
    """The calls of ``model`` with nested models and traceable subclassed layers
    (:mod:`dsa_tf.structure.inline`) expanded, plus input/output aliasing. A subclassed
    layer that cannot be traced raises, or with ``strict=False`` stays one call."""
    result = []
    for call in _keras.calls(model):
        name = "/".join(prefix + (call.op.name,))
        inner = _inner_graph(call, name, exclude, strict)
        if inner is None:
            result.append((call, name))
            continue
        if id(call.op) in seen:
            raise _unsupported(name, call.op, f"a {_kind(call.op)} called more than once")
        seen.add(id(call.op))
        for inner_in, outer_in in zip(_keras.model_inputs(inner), call.inputs):
            alias[id(inner_in)] = resolve(alias, outer_in)
        result.extend(_flat_calls(inner, prefix + (call.op.name,), alias, seen, exclude,
                                  strict))
        for outer_out, inner_out in zip(call.outputs, _keras.model_outputs(inner)):
            alias[id(outer_out)] = resolve(alias, inner_out)
    return result


def _kind(op: Any) -> str:
    return "nested model" if _keras.is_model(op) else "subclassed layer"


def _is_excluded(name: str, exclude: frozenset[str] | set[str]) -> bool:
    """Whether the call ``name`` (a path through nested layers) is excluded by its path or
    by its own layer name."""
    return name in exclude or name.split("/")[-1] in exclude


def _inner_graph(call: _keras.Call, name: str, exclude: frozenset[str] | set[str],
                 strict: bool) -> Any:
    """The functional graph to walk in place of ``call``: a nested model's, a traced
    subclassed layer's, or None for a call walked as it is."""
    op = call.op
    if _keras.is_model(op):
        if not _keras.is_functional(op):
            raise _unsupported(name, op, "it is a subclassed model")
        return op
    if _is_excluded(name, exclude) or rule_for(op) is not None or not traceable(op):
        return None
    try:
        return trace(call)
    except TraceError as error:
        if not strict:
            return None
        raise _unsupported(name, op, f"dsa_tf has no channel rule for this layer type, and "
                                     f"cannot trace it into standard layers: {error}") from None


def resolve(alias: dict[int, Any], tensor: Any) -> Any:
    """The canonical tensor a (possibly nested-model) Keras tensor stands for."""
    while id(tensor) in alias and alias[id(tensor)] is not tensor:
        tensor = alias[id(tensor)]
    return tensor


def analyze(model: Any, exclude: Iterable[str] = ()) -> ChannelPlan:
    """Finds the channel groups of a functional or Sequential Keras model.

    Args:
        model: a built functional or Sequential model (Keras 3 or tf_keras). Nested models
            used as layers (a keras.applications backbone) are walked through, and so are
            subclassed layers defined outside Keras, traced into the standard layers their
            ``call`` runs (:mod:`dsa_tf.structure.inline`; ``"block/conv1"`` names a layer
            inside the traced layer ``block``).
        exclude: layer names (``"conv1"``, or ``"backbone/conv1"`` for a nested layer) whose
            channels must stay whole. An excluded layer that dsa_tf does not understand (a
            custom layer; a subclassed layer is then not traced) is treated as opaque: its
            inputs and outputs are kept whole and its weights are copied unchanged.

    Returns:
        A :class:`ChannelPlan` with every group (prunable or not, and why) and the FLOPs and
        params models.

    Raises:
        ValueError: for a subclassed model, an unknown or unsupported layer (a
            channel-mixing Reshape, a custom layer that cannot be traced) not in ``exclude``,
            or an unknown name in ``exclude``. The message names the layer and its class.

    Example:
        >>> import dsa_tf
        >>> plan = dsa_tf.analyze(dsa_tf.models.cifar_resnet(20))
        >>> [(g.name, g.channels) for g in plan.prunable][:2]
        [('stem_conv', 16), ('stage1_block1_1_conv', 16)]
    """
    if not _keras.is_functional(model):
        raise ValueError(
            f"dsa_tf needs a functional or Sequential model with known input shapes; "
            f"{type(model).__name__} {model.name!r} is a subclassed or unbuilt model. Rebuild it "
            f"with the functional API (keras.Input(...) -> layers -> keras.Model)."
        )
    exclude = set(exclude)
    walk = _Walk(exclude)
    alias: dict[int, Any] = {}
    flat = _flat_calls(model, (), alias, set(), exclude)
    names = {name for _, name in flat} | {name.split("/")[-1] for _, name in flat}
    unknown = exclude - names
    if unknown:
        raise ValueError(f"exclude names unknown layers {sorted(unknown)}.")

    tensor_maps: dict[int, ChannelMap | None] = {}

    def map_of(tensor: Any) -> ChannelMap | None:
        return tensor_maps.get(id(resolve(alias, tensor)))

    for tensor in _keras.model_inputs(model):
        name = f"input:{_keras.input_name(tensor)}"
        shape = _keras.shape_of(tensor)
        if len(shape) >= 2 and shape[-1] is not None:
            tensor_maps[id(tensor)] = walk.add_space(shape[-1], name, None)
            walk.fix(tensor_maps[id(tensor)], "model input")

    calls = []
    for call, name in flat:
        calls.append(_walk_call(walk, call, name, map_of, tensor_maps, alias))

    for tensor in _keras.model_outputs(model):
        walk.fix(map_of(tensor), "reaches a model output")
    return ChannelPlan(model, walk, calls, alias)


def _walk_call(walk: _Walk, call: _keras.Call, name: str, map_of: Any,
               tensor_maps: dict, alias: dict) -> FlatCall:
    op = call.op
    excluded = _is_excluded(name, walk.exclude)
    walk.current = name
    args, kwargs = _call_arguments(call)
    info = CallInfo(op, args, kwargs, [_keras.shape_of(t) for t in call.inputs],
                    [_keras.shape_of(t) for t in call.outputs], [map_of(t) for t in call.inputs])
    rule = rule_for(op)
    why = "dsa_tf has no channel rule for this layer type" if rule is None else ""
    if rule is not None:
        try:
            if any(m is None for m in info.in_maps):
                raise Unsupported("an input without a channel axis")
            rule.check(op, info)
        except Unsupported as error:
            why = str(error)
    if why and not excluded:
        raise _unsupported(name, op, why)
    opaque = bool(why)
    if opaque:
        for m in info.in_maps:
            walk.fix(m, f"consumed by excluded layer {name!r}")
        out_maps = [walk.add_space(s[-1], name, None) if len(s) >= 2 else None
                    for s in info.out_shapes]
    else:
        try:
            _couple_shared_inputs(walk, op, rule, info)
            out_maps = rule.propagate(op, info, walk)
        except Unsupported as error:
            raise _unsupported(name, op, str(error)) from None
    for m in out_maps:
        if excluded:
            walk.fix(m, f"excluded layer {name!r}")
    for tensor, m in zip(call.outputs, out_maps):
        tensor_maps[id(resolve(alias, tensor))] = m
    return FlatCall(call, name, rule, info, list(out_maps), opaque)


def _couple_shared_inputs(walk: _Walk, op: Any, rule: Rule, info: CallInfo) -> None:
    """A layer called several times slices its weights once: its inputs must match."""
    roles = {role for axes in rule.weight_axes(op).values() for role in axes}
    if isinstance(rule, Depthwise):
        roles.add("in")  # its output channels are its input channels
    if not info.in_maps or not roles & {"in", "mid", "group_in"}:
        return
    first = walk.first_in_map.setdefault(id(op), info.in_maps[0])
    if first is not info.in_maps[0]:
        walk.couple([first, info.in_maps[0]], op)


def _call_arguments(call: _keras.Call) -> tuple[tuple, dict]:
    if _keras.is_keras3(call.op):
        return tuple(call.node.arguments.args), dict(call.node.arguments.kwargs)
    return tuple(call.node.call_args), dict(call.node.call_kwargs)
