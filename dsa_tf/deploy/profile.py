"""profile_latency: a model's latency table, measured and calibrated on the device it runs on.

The table (:mod:`dsa_tf.deploy.latency_table`) times every costed operator signature of the
model on a grid of channel counts; the calibration then times the whole model stripped to a
few uniform widths (from all to a quarter of every prunable group's channels, in multiples of
the grid step), timed side by side (:func:`dsa_tf.compare_tflite_latency`: interleaved rounds,
so that the machine's slow and fast phases hit every width alike; each width's fastest
round counts), and fits
``measured = fixed_ms + scale x operators' sum`` to them (least squares), so that the
prediction of :class:`dsa_tf.deploy.latency_model.LatencyModel` covers what single operators
do not. :func:`cached_table` keeps one table per model, device and setting in a cache
directory, so the same model is not measured twice.

Example:
    >>> import dsa_tf
    >>> from dsa_tf.deploy.profile import profile_latency
    >>> model = dsa_tf.models.cifar_resnet(8, input_shape=(8, 8, 3))
    >>> table = profile_latency(model, rounds=1, invokes=2, progress=None)
    >>> sorted(table.calibrations[next(iter(table.calibrations))])
    ['fixed_ms', 'points', 'scale']
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dsa_tf import _keras
from dsa_tf.deploy.export import convert
from dsa_tf.deploy.latency_model import LatencyModel, fingerprint
from dsa_tf.deploy.latency_table import (
    COARSE_BELOW,
    STEP,
    LatencyTable,
    converter_logs_silenced,
    measure_table,
    runtime_version,
    this_device,
)
from dsa_tf.deploy.timing import compare_tflite_latency
from dsa_tf.structure.graph import analyze
from dsa_tf.structure.operators import operators
from dsa_tf.structure.strip import strip

CALIBRATION_WIDTHS = (1.0, 0.75, 0.5, 0.375, 0.25)  # uniform keep ratios measured whole


def profile_latency(model: Any, table: LatencyTable | None = None, *,
                    precision: str = "float32", threads: int = 1, step: int = STEP,
                    rounds: int = 5, invokes: int = 20, coarse_below: float = COARSE_BELOW,
                    exclude: Iterable[str] = (),
                    progress: Callable[[str], None] | None = print) -> LatencyTable:
    """Measures ``model``'s latency table and its calibration on this device.

    Args:
        model: a functional or Sequential Keras model (plain or gated); not changed. Its
            weights do not matter (timing only).
        table: a table to extend (another model's, measured here with the same precision
            and threads): only the operator signatures it lacks are measured.
        precision: "float32" or "int8" (full-integer model, random calibration data).
        threads: LiteRT interpreter threads.
        step: output channel grid step (see :func:`dsa_tf.deploy.latency_table.channel_grid`);
            latency-budgeted groups keep multiples of it.
        rounds, invokes: each time is the fastest of ``rounds`` rounds of ``invokes``
            invokes (whole models, few and what the calibration rests on: of three times
            ``rounds``); see :func:`dsa_tf.deploy.latency_table.time_tflite`.
        coarse_below: signatures whose operators take less than this share of the
            operators' time are measured on a coarse grid (0: none; see
            :func:`dsa_tf.deploy.latency_table.measure_table`).
        exclude: layer names whose channels stay whole (see :func:`dsa_tf.analyze`).
        progress: called with a line per measured signature and calibration (None: quiet).

    Returns:
        A new table with the model's signatures and its calibration.

    Raises:
        ValueError: operators the table cannot measure, a model with inputs of unknown size,
            or a ``table`` of another precision or thread count.
    """
    plan = analyze(model, exclude)
    unknown = [_keras.input_name(t) for t in _keras.model_inputs(model)
               if None in _keras.shape_of(t)[1:]]
    if unknown:
        raise ValueError(f"Inputs {unknown} have dimensions of unknown size; latency is "
                         f"measured at the model's input size. Build it with a fixed size.")
    table = measure_table(((op.signature, op.channels_in, op.channels_out)
                           for op in operators(plan)), precision=precision, threads=threads,
                          step=step, rounds=rounds, invokes=invokes,
                          coarse_below=coarse_below, table=table,
                          progress=progress)
    uncalibrated = LatencyModel(plan, dataclasses.replace(table, calibrations={}))
    sums = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        paths = []
        for width in CALIBRATION_WIDTHS:
            keep = {g.name: range(min(g.channels, max(table.step, round(
                width * g.channels / table.step) * table.step))) for g in plan.prunable}
            paths.append(os.path.join(directory, f"width_{width}.tflite"))
            stripped = strip(model, keep, exclude=exclude)
            Path(paths[-1]).write_bytes(tflite_for_timing(stripped, precision))
            sums.append(uncalibrated.operator_sum(plan.keep_ratios(keep)))
            if progress:
                progress(f"latency calibration: whole model at {width:.0%} width exported "
                         f"({time.perf_counter() - started:.0f} s)")
        reports = compare_tflite_latency(paths, threads=threads, rounds=3 * rounds,
                                         invokes=invokes)
    points = [[total, report.min_ms] for total, report in zip(sums, reports)]
    if progress:
        progress("latency calibration: measured " + ", ".join(
            f"{measured:.3f} ms at {width:.0%}" for width, (_, measured) in
            zip(CALIBRATION_WIDTHS, points)) + f" ({time.perf_counter() - started:.0f} s)")
    table.calibrations[fingerprint(plan)] = {**_fit(points), "points": points}
    return table


def cached_table(model: Any, *, exclude: Iterable[str] = (), directory: str | None = None,
                 progress: Callable[[str], None] | None = print) -> str:
    """The path of a float32, 1-thread table of ``model`` measured on this device, measured
    (:func:`profile_latency`) only if the cache has none for the model's architecture.

    The cache is ``directory``, else :func:`cache_dir`; its files are named by the device,
    runtime and the model's :func:`dsa_tf.deploy.latency_model.fingerprint`.
    """
    plan = analyze(model, exclude)
    key = hashlib.sha1(f"{this_device()} {runtime_version()}".encode()).hexdigest()[:8]
    path = Path(directory or cache_dir()) / f"{key}_{fingerprint(plan)}_float32_t1.json"
    if path.exists():
        return str(path)
    if progress:
        progress(f"latency: measuring a table for {plan.model.name!r} on this device "
                 f"(cached in {path})")
    table = profile_latency(model, exclude=exclude, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    table.save(partial)
    partial.replace(path)
    return str(path)


def cache_dir() -> str:
    """Where measured tables are kept: ``$DSA_TF_CACHE/latency``, else
    ``~/.cache/dsa_tf/latency``."""
    root = os.environ.get("DSA_TF_CACHE", os.path.expanduser("~/.cache/dsa_tf"))
    return os.path.join(root, "latency")


def tflite_for_timing(model: Any, precision: str) -> bytes:
    """``model`` as a LiteRT flatbuffer in ``precision`` ("float32", or "int8": full-integer,
    calibrated on random inputs), to time, not to deploy."""
    rng = np.random.default_rng(0)
    inputs = _keras.model_inputs(model)
    batches = [{t.name: rng.normal(size=(1,) + tuple(_keras.shape_of(t)[1:])).astype("float32")
                for t in inputs} for _ in range(4)]
    with converter_logs_silenced():
        return convert(model, "int8" if precision == "int8" else None, batches)


def _fit(points: list[list[float]]) -> dict[str, float]:
    """fixed_ms and scale of measured = fixed_ms + scale x sum, by least squares; a
    scale that is not positive (noise on tiny models) falls back to scale 1."""
    sums, measured = np.array(points, dtype=np.float64).T
    if np.ptp(sums) > 0:
        scale, fixed = np.polyfit(sums, measured, 1)
        if scale > 0:
            return {"fixed_ms": float(fixed), "scale": float(scale)}
    return {"fixed_ms": float(np.mean(measured - sums)), "scale": 1.0}
