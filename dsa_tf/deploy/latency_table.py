"""LatencyTable: measured LiteRT invoke time of single operators over a grid of channel counts.

A table has one entry per operator signature (kind, kernel, strides, padding, spatial size:
:mod:`dsa_tf.structure.operators`), shared by every layer with that signature, holding the
invoke time in milliseconds on a grid of kept input and output channel counts. CPU runtimes
compute output channels in tiles (XNNPACK: 8 or 16 per vector register block), so the time
is a step function of the output channels, and a count just past a multiple of the tile costs
as much as the next multiple or more (measured in BENCHMARKS.md, "Latency budgets"); the
input channels enter about linearly. The output grid (and a depthwise operator's channel
grid) is therefore every multiple of ``step`` (8) up to the full width, plus 1 and the full
width; the input grid is 1, half and the full width (:func:`input_grid`), and so is the output
grid of operators that cost next to nothing (:func:`measure_table`). Latency-budgeted
groups keep multiples of ``step``, or of twice it where the measured times show tiles of 2 x
``step`` (:meth:`dsa_tf.deploy.latency_model.LatencyModel.group_steps`), so the counts a
pruned model keeps are measured points of its output grid, on the cheap side of the steps.
Each grid point is a single-operator ``.tflite`` model (the operator alone, batch 1, random
weights) timed by :func:`time_tflite` (the fastest of rounds of invokes).
The table records the device, runtime version, precision, threads and step it was measured
with, and saves as JSON, so it can be measured on the target device and used elsewhere.

Example:
    >>> from dsa_tf.deploy.latency_table import channel_grid, input_grid
    >>> channel_grid(16), channel_grid(20), input_grid(64)
    ([1, 8, 16], [1, 8, 16, 20], [1, 32, 64])
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf

from dsa_tf.deploy import litert

KINDS = ("Conv1D", "Conv2D", "Dense", "DepthwiseConv1D", "DepthwiseConv2D")
PRECISIONS = ("float32", "int8")
STEP = 8  # output channel grid: the tile of XNNPACK's float32 kernels on AVX2 and NEON
COARSE_BELOW = 0.05  # share of the operators' time the signatures on a coarse grid take at most


def channel_grid(channels: int, step: int = STEP, also: Iterable[int] = ()) -> list[int]:
    """The output channel counts measured for ``channels`` channels: 1, the multiples of
    ``step``, ``channels`` and the counts in ``also`` (the full widths of the other operators
    sharing the signature)."""
    return sorted({1, channels, *range(step, channels + 1, step), *also})


def input_grid(channels: int, step: int = STEP, also: Iterable[int] = ()) -> list[int]:
    """The input channel counts measured for ``channels`` channels (time is about linear in
    them): 1, half the width (a multiple of ``step``), ``channels`` and ``also``."""
    half = max(step, round(channels / 2 / step) * step)
    return sorted({1, channels, *([half] if half < channels else []), *also})


@dataclasses.dataclass
class LatencyTable:
    """Invoke times of operator signatures on a grid of channel counts.

    Attributes:
        device: where it was measured (``platform.platform()`` and processor).
        runtime: the LiteRT (or TensorFlow Lite) version.
        precision: "float32" or "int8".
        threads: interpreter threads.
        step: the output channel grid's step, which latency-budgeted groups keep multiples of.
        entries: per signature (a JSON string of the signature dict): ``channels_in`` and
            ``channels_out`` grids and ``ms``, the invoke times [len(in), len(out)].
        calibrations: per model (its :func:`dsa_tf.deploy.latency_model.fingerprint`): how
            the operators' sum maps to the whole model's measured latency, ``fixed_ms`` and
            ``scale`` (measured = fixed_ms + scale x sum), with the ``points`` they were
            fitted to (``[operators' sum, measured]`` in ms, the first at full width).
    """

    device: str
    runtime: str
    precision: str
    threads: int
    step: int = STEP
    entries: dict[str, dict] = dataclasses.field(default_factory=dict)
    calibrations: dict[str, dict] = dataclasses.field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the table as JSON."""
        with open(path, "w") as file:
            json.dump(dataclasses.asdict(self), file, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> LatencyTable:
        """Reads a table written by :meth:`save`.

        Raises:
            ValueError: the file is not a latency table (its error names what is missing or
                malformed).
        """
        with open(path) as file:
            values = json.load(file)
        missing = sorted({"device", "runtime", "precision", "threads", "entries"} - set(values))
        if missing:
            raise ValueError(f"{path} is not a latency table: it lacks {missing}.")
        for key, entry in values["entries"].items():
            ms = np.asarray(entry.get("ms"), dtype=float)
            shape = (len(entry.get("channels_in", [])), len(entry.get("channels_out", [])))
            if ms.shape != shape or not np.all(np.isfinite(ms)) or np.any(ms < 0):
                raise ValueError(f"{path}: the entry {key} has times of shape {ms.shape} for "
                                 f"a grid of {shape}, or times that are not finite and >= 0.")
        for key, calibration in values.get("calibrations", {}).items():
            if not all(isinstance(calibration.get(name), (int, float))
                       for name in ("fixed_ms", "scale")) or calibration["scale"] <= 0:
                raise ValueError(f"{path}: the calibration {key} needs numbers fixed_ms and "
                                 f"scale > 0, got {calibration}.")
        if not isinstance(values.get("step", STEP), int) or values.get("step", STEP) < 1:
            raise ValueError(f"{path}: step must be a positive integer, got {values['step']!r}.")
        if values["precision"] not in PRECISIONS:
            raise ValueError(f"{path}: precision must be one of {PRECISIONS}, got "
                             f"{values['precision']!r}.")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{path} is not a latency table: unknown fields {unknown}.")
        return cls(**values)


def signature_key(signature: dict) -> str:
    """The key of a signature in :attr:`LatencyTable.entries`."""
    return json.dumps(signature, sort_keys=True)


def operator_model(signature: dict, channels_in: int, channels_out: int) -> tf.function:
    """A traced function of one operator (random weights, batch 1) for the TFLite converter.

    Raises:
        ValueError: a kind outside ``KINDS`` or settings it cannot build.
    """
    kind = signature["kind"]
    if kind not in KINDS:
        raise ValueError(f"No latency measurement for {kind} operators (measured kinds: "
                         f"{KINDS}).")
    rng = np.random.default_rng(0)
    spatial = list(signature.get("input_shape", []))
    spec = tf.TensorSpec([1, *spatial, channels_in], tf.float32)
    padding = str(signature.get("padding", "valid")).upper()
    strides = signature.get("strides", [1] * len(spatial))
    dilations = signature.get("dilation_rate", [1] * len(spatial))
    bias = tf.constant(rng.normal(size=channels_out).astype("float32")) \
        if signature.get("use_bias", True) else None
    kernel_size = list(signature.get("kernel_size", []))
    if kind == "Dense":
        weights = tf.constant(rng.normal(size=(channels_in, channels_out)).astype("float32"))

        def apply(x: tf.Tensor) -> tf.Tensor:
            return tf.tensordot(x, weights, axes=1)
    elif kind.startswith("Depthwise"):
        multiplier = channels_out // channels_in
        shape = [*kernel_size, channels_in, multiplier]
        if kind == "DepthwiseConv1D":
            shape = [1, *shape]
        weights = tf.constant(rng.normal(size=shape).astype("float32"))

        def apply(x: tf.Tensor) -> tf.Tensor:
            if kind == "DepthwiseConv1D":
                return tf.squeeze(tf.nn.depthwise_conv2d(
                    tf.expand_dims(x, 1), weights, [1, 1, strides[0], 1], padding,
                    dilations=[1, dilations[0]]), 1)
            return tf.nn.depthwise_conv2d(x, weights, [1, *strides, 1], padding,
                                          dilations=dilations)
    else:
        weights = tf.constant(rng.normal(size=(*kernel_size, channels_in, channels_out))
                              .astype("float32"))

        def apply(x: tf.Tensor) -> tf.Tensor:
            return tf.nn.convolution(x, weights, strides, padding, dilations=dilations)

    @tf.function(input_signature=[spec])
    def operator(x: tf.Tensor) -> tf.Tensor:
        y = apply(x)
        return y if bias is None else tf.nn.bias_add(y, bias)

    return operator


def operator_tflite(signature: dict, channels_in: int, channels_out: int,
                    precision: str = "float32") -> bytes:
    """The ``.tflite`` content of one operator at the given channel counts."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    function = operator_model(signature, channels_in, channels_out)
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function)
    if precision == "int8":
        shape = function.input_signature[0].shape
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.normal(size=shape).astype("float32")] for _ in range(4))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with converter_logs_silenced():
        return converter.convert()


@contextlib.contextmanager
def converter_logs_silenced() -> Iterator[None]:
    """Keeps the TFLite converter's logs off the terminal: what it prints to stdout, and what
    native code writes to the process's stderr (several C++ log lines per model, which a
    table of hundreds of single-operator models, and the whole-model exports that calibrate
    and check it, would print). Its errors still arrive as Python exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def time_tflite(content: bytes, threads: int = 1, rounds: int = 5, invokes: int = 20) -> float:
    """The fastest of ``rounds`` rounds of ``invokes`` invokes, in milliseconds: the least
    disturbed invoke, which repeats within about 1.5% on a shared machine where the median
    of the rounds' minima varies by 15% (:mod:`dsa_tf.deploy.timing`)."""
    interpreter = litert.interpreter(content, threads)
    litert.set_random_inputs(interpreter, np.random.default_rng(0))
    for _ in range(3):
        interpreter.invoke()
    minima = []
    for _ in range(rounds):
        best = float("inf")
        for _ in range(invokes):
            start = time.perf_counter()
            interpreter.invoke()
            best = min(best, time.perf_counter() - start)
        minima.append(best * 1e3)
    return float(min(minima))


def this_device() -> str:
    """The device name a table measured here records."""
    return f"{platform.platform()} {platform.processor()}".strip()


def measure_table(signatures: Iterable[tuple[dict, int, int]], *, precision: str = "float32",
                  threads: int = 1, step: int = STEP, rounds: int = 5,
                  invokes: int = 20, coarse_below: float = COARSE_BELOW,
                  table: LatencyTable | None = None,
                  progress: Callable[[str], None] | None = print) -> LatencyTable:
    """Measures the table of the given ``(signature, channels_in, channels_out)`` operators.

    Signatures are measured once each, on :func:`input_grid` x :func:`channel_grid` of the
    widest full widths seen for the signature, with every full width seen added to the grid
    (a stem convolution's 3 input channels share the signature of the 16-channel
    convolutions after it). Depthwise operators keep their depth multiplier: their grid is
    :func:`channel_grid` over the input channels (``channels_out`` = multiplier x
    ``channels_in``). With ``table``, only the signatures it
    lacks (or whose grid is too narrow) are measured, into a copy of it.

    Every operator is first timed at its full width. The signatures whose full grids buy
    the least time per point (their operators' share of all the operators' summed time
    over the grid's points), together less than ``coarse_below`` of that time, are
    measured on the coarse grid of :func:`input_grid` along their output (or depthwise)
    channels too, which :class:`dsa_tf.deploy.latency_model.LatencyModel` interpolates
    instead of reading as tiles: operators that cost next to nothing do not need their
    tiles resolved, and the squeeze-excite convolutions of an EfficientNet (at 1x1 spatial
    size, 3% of the operators' time on 2,400 grid points) took a third of its table's time
    (BENCHMARKS.md, "Coarse grids where the points buy least"). ``coarse_below=0`` measures
    every signature on the full grid.

    Raises:
        ValueError: a ``table`` of another precision or thread count, or an unknown kind.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if not 0 <= coarse_below < 1:
        raise ValueError(f"coarse_below must be a share in [0, 1), got {coarse_below!r}.")
    if table is None:
        table = LatencyTable(device=this_device(), runtime=runtime_version(),
                             precision=precision, threads=threads, step=step)
    elif (table.precision, table.threads, table.step) != (precision, threads, step):
        raise ValueError(f"The table was measured in {table.precision} with {table.threads} "
                         f"thread(s) on a grid step of {table.step}; cannot extend it with "
                         f"{precision}, {threads} thread(s), step {step}.")
    else:
        table = dataclasses.replace(table, entries=dict(table.entries),
                                    calibrations=dict(table.calibrations))
    signatures = [(signature, int(n), int(m)) for signature, n, m in signatures]
    widths: dict[str, tuple[dict, set, set]] = {}
    for signature, channels_in, channels_out in signatures:
        _, ins, outs = widths.setdefault(signature_key(signature), (signature, set(), set()))
        ins.add(channels_in)
        outs.add(channels_out)
    widths = {key: value for key, value in widths.items()
              if not _covers(table.entries.get(key), max(value[1]), max(value[2]))}
    times: dict[tuple[str, int, int], float] = {}

    def timed(signature: dict, channels_in: int, channels_out: int) -> float:
        point = (signature_key(signature), channels_in, channels_out)
        if point not in times:
            times[point] = time_tflite(operator_tflite(signature, channels_in, channels_out,
                                                       precision), threads, rounds, invokes)
        return times[point]

    started = time.perf_counter()
    shares = {key: 0.0 for key in widths}  # ms of each signature's operators at full width
    coarse: set[str] = set()
    if widths and coarse_below > 0:
        for signature, channels_in, channels_out in signatures:
            key = signature_key(signature)
            # every operator of the model at its full width, the measured ones counted in
            ms = timed(signature, channels_in, channels_out)
            if key in shares:
                shares[key] += ms
        total = sum(times[(signature_key(s), n, m)] for s, n, m in signatures)
        cumulative = 0.0
        points = {key: np.prod([len(g) for g in _grids(*widths[key], coarse=False, step=step)])
                  for key in widths}
        # first the signatures whose full grid buys least time per point measured
        for key in sorted(shares, key=lambda key: shares[key] / points[key]):
            if cumulative + shares[key] / total < coarse_below:
                cumulative += shares[key] / total
                coarse.add(key)
        if progress:
            progress(f"latency table: {len(signatures)} operators timed at full width; "
                     f"{len(coarse)} of {len(widths)} signatures, "
                     f"{sum(shares[key] for key in coarse) / total:.1%} of the operators' "
                     f"time, on the coarse grid ({time.perf_counter() - started:.0f} s)")
    for number, (key, (signature, ins, outs)) in enumerate(widths.items(), 1):
        grid_in, grid_out = _grids(signature, ins, outs, coarse=key in coarse, step=step)
        if signature["kind"].startswith("Depthwise"):  # the output follows the input
            ms = [[timed(signature, n, n * grid_out[0])] for n in grid_in]
        else:
            ms = [[timed(signature, n, m) for m in grid_out] for n in grid_in]
        table.entries[key] = {"channels_in": grid_in, "channels_out": grid_out, "ms": ms}
        if progress:
            progress(f"latency table: {number}/{len(widths)} {signature['kind']} "
                     f"{signature.get('input_shape')} {max(ins)}->{max(outs)}, "
                     f"{len(grid_in) * len(grid_out)} points "
                     f"({time.perf_counter() - started:.0f} s)")
    return table


def _grids(signature: dict, ins: set, outs: set, coarse: bool, step: int
           ) -> tuple[list[int], list[int]]:
    """A signature's input and output grids for operators of the full widths ``ins`` and
    ``outs``: the tiled axis (a depthwise operator's channels, the others' output) on
    :func:`channel_grid`, or with ``coarse`` on :func:`input_grid`; a depthwise operator's
    output grid is its depth multiplier."""
    wide_in, wide_out = max(ins), max(outs)
    tiles = input_grid if coarse else channel_grid
    if signature["kind"].startswith("Depthwise"):
        return tiles(wide_in, step, ins), [max(1, wide_out // wide_in)]
    return input_grid(wide_in, step, ins), tiles(wide_out, step, outs)


def _covers(entry: dict | None, channels_in: int, channels_out: int) -> bool:
    return entry is not None and entry["channels_in"][-1] >= channels_in and (
        len(entry["channels_out"]) == 1 or entry["channels_out"][-1] >= channels_out)


def runtime_version() -> str:
    """The LiteRT (ai-edge-litert) or TensorFlow Lite version timings here are made with."""
    with contextlib.suppress(ImportError, AttributeError):
        import ai_edge_litert

        return f"ai-edge-litert {ai_edge_litert.__version__}"
    return f"tensorflow-lite {tf.__version__}"
